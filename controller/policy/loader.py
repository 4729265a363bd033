# SPDX-License-Identifier: GPL-2.0-only
"""The policy file and its rules, read into a Policy: load_policy."""

import gc
import os

import yaml

from .. import precedence
from ..abi import ABI
from ..clients import ClientClasses
from ..rollout import DEFAULT_ROLLOUT_KEY, rollout_key
from .input_files import InputFileError, read_text_file
from .model import (ACTIONS, DEFAULT_FLOW_IDLE_NS, DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_PACKETS, FLOW_IDLE_MAX_NS,
                    MODES, TUNNEL_NAMES, WINDOW_PACKETS_MAX, Policy, PolicyError, Problem, Rule)
from .units import RULE_NAME, check_domain, parse_duration, parse_size
from .what import FlowReader
from .when import ScheduleReader
from .who import AudienceReader

TOP_KEYS = ("version", "flow_idle_timeout", "inspection", "reclassify", "rollout_key", "classes", "destinations",
            "rules")
FRAGMENT_HANDLING = ("reassemble", "drop")
EVASION_HANDLING = ("judge", "block", "ignore")
INSPECTION_KEYS = ("window_packets", "window_bytes", "reassemble", "fragments", "tunnels", "proxy_protocol",
                   "on_evasion", "ttl_margin")
TTL_MARGIN_MAX = 255
RULE_KEYS = ("name", "description", "action", "mode", "domains", "exact", "domains_file",
             "class", "percent", "ports", "opened_by_client", "active", "escalate", "quic",
             "rate", "burst", "direction", "up", "down", "scope", "horizon",
             "latency", "jitter", "fallback", "method", "page", "protocol", "tls", "destination", "after")


class _Loader(AudienceReader, FlowReader, ScheduleReader):
    """One policy file being read; problems accumulate in self.problems."""

    def __init__(self, path: str):
        super().__init__(path)
        # (normalised name, kind) -> (file, line, column) of its first mention in the rule being read;
        # several rules may name one domain (for different classes, say), one rule only once
        self.seen_names: dict[tuple[bytes, int], tuple] = {}
        self.class_names: set[str] = set()
        self.destination_names: set[str] = set()

    # --- the file ---------------------------------------------------------
    def load(self) -> Policy | None:
        try:
            text = read_text_file(self.path)
        except InputFileError as error:
            self.problems.append(Problem(self.path, error.line or 1, error.column or 1,
                                         f"cannot read the policy: {error}"))
            return None
        try:
            root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            self.problems.append(Problem(self.path, mark.line + 1, mark.column + 1,
                                         f"not valid YAML: {error.problem or error.context}"))
            return None
        except (yaml.YAMLError, RecursionError) as error:   # a ReaderError has no mark; nesting too deep
            self.problems.append(Problem(self.path, 1, 1, f"not valid YAML: {str(error).splitlines()[0]}"))
            return None
        if root is None:
            self.problems.append(Problem(self.path, 1, 1, "the policy is empty; it needs version: 1 and rules"))
            return None
        top = self.mapping(root, "the policy", TOP_KEYS)
        version = None
        if "version" not in top:
            self.problem(root, "missing key 'version' (this format is version: 1)")
        else:
            version = self.integer(top["version"][1], "version", 1, 1)
        flow_idle_ns = DEFAULT_FLOW_IDLE_NS
        if "flow_idle_timeout" in top:
            flow_idle_ns = self.quantity(top["flow_idle_timeout"][1], "flow_idle_timeout", parse_duration,
                                         1, FLOW_IDLE_MAX_NS, "ns")
        window_packets = DEFAULT_WINDOW_PACKETS
        window_bytes = DEFAULT_WINDOW_BYTES
        reassemble = True
        fragments = "reassemble"
        tunnels = TUNNEL_NAMES
        proxy_protocol = False
        on_evasion = "judge"
        ttl_margin = ABI.SLUICE_TTL_MARGIN_DEFAULT
        if "inspection" in top:
            inspection = self.mapping(top["inspection"][1], "inspection", INSPECTION_KEYS)
            if "window_packets" in inspection:
                window_packets = self.integer(inspection["window_packets"][1], "window_packets",
                                              1, WINDOW_PACKETS_MAX)
            if "window_bytes" in inspection:
                window_bytes = self.quantity(inspection["window_bytes"][1], "window_bytes", parse_size,
                                             1, ABI.SLUICE_WINDOW_BYTES_MAX, "bytes")
            if "reassemble" in inspection:
                reassemble = self.boolean(inspection["reassemble"][1], "reassemble")
            if "fragments" in inspection:
                fragments = self.scalar(inspection["fragments"][1], "fragments")
                if fragments not in FRAGMENT_HANDLING:
                    self.problem(inspection["fragments"][1], "fragments must be reassemble (gather IP fragments "
                                 "and judge the datagram) or drop (drop the fragments of flows still inspected)")
            if "tunnels" in inspection:
                tunnels = self.tunnels(inspection["tunnels"][1])
            if "proxy_protocol" in inspection:
                proxy_protocol = self.boolean(inspection["proxy_protocol"][1], "proxy_protocol")
            if "on_evasion" in inspection:
                on_evasion = self.scalar(inspection["on_evasion"][1], "on_evasion")
                if on_evasion not in EVASION_HANDLING:
                    self.problem(inspection["on_evasion"][1], "on_evasion must be judge (judge the bytes the server "
                                 "keeps), block (block a flow caught sending what the server drops) or ignore "
                                 "(every segment counts, the first copy wins)")
            if "ttl_margin" in inspection:
                ttl_margin = self.integer(inspection["ttl_margin"][1], "ttl_margin", 0, TTL_MARGIN_MAX)
        reclassify = self.boolean(top["reclassify"][1], "reclassify") if "reclassify" in top else False
        key_text = DEFAULT_ROLLOUT_KEY
        if "rollout_key" in top:
            key_text = self.scalar(top["rollout_key"][1], "rollout_key") or DEFAULT_ROLLOUT_KEY
        classes = self.classes(top["classes"][1]) if "classes" in top else ClientClasses.empty()
        self.class_names = {c.name for c in classes.classes}
        destinations = (self.classes(top["destinations"][1], "destination set") if "destinations" in top
                        else ClientClasses.empty())
        self.destination_names = {d.name for d in destinations.classes}
        rules = []
        if "rules" not in top:
            self.problem(root, "missing key 'rules' (a list of rules)")
        elif not isinstance(top["rules"][1], yaml.SequenceNode):
            self.problem(top["rules"][1], "rules must be a list")
        else:
            rule_nodes = top["rules"][1].value
            if len(rule_nodes) > ABI.SLUICE_MAX_RULES - 1:
                self.problem(top["rules"][1], f"{len(rule_nodes)} rules; at most {ABI.SLUICE_MAX_RULES - 1}")
            names: dict[str, int] = {}
            for index, node in enumerate(rule_nodes, start=1):
                rule = self.rule(node, index, names)
                if rule:
                    rules.append(rule)
            alpn_ids = {protocol_id for rule in rules for protocol_id in rule.alpn}
            if len(alpn_ids) > ABI.SLUICE_ALPN_IDS_MAX:
                self.problem(top["rules"][1], f"the rules name {len(alpn_ids)} ALPN protocol ids; "
                                              f"at most {ABI.SLUICE_ALPN_IDS_MAX}")
        if self.problems:
            return None
        policy = Policy(self.path, version, flow_idle_ns, window_packets, rules, reclassify, window_bytes,
                        classes, destinations, rollout_key(key_text), reassemble, fragments=fragments,
                        tunnels=tunnels, proxy_protocol=proxy_protocol,
                        on_evasion=on_evasion, ttl_margin=ttl_margin)
        try:
            policy.rule_sets()
        except precedence.RuleSetOverflow as overflow:
            last = overflow.rules[ABI.SLUICE_RULE_SET_MAX]
            self.problems.append(Problem(self.path, last.line, 1, str(overflow)))
            return None
        return policy

    # --- one rule ---------------------------------------------------------
    def tunnels(self, node) -> tuple[str, ...]:
        """inspection.tunnels: the encapsulations to open, a list of TUNNEL_NAMES (empty: none)."""
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"tunnels must be a list of encapsulations to open: {', '.join(TUNNEL_NAMES)}")
            return TUNNEL_NAMES
        names = []
        for item in node.value:
            name = self.scalar(item, "a tunnel")
            if name is not None and name not in TUNNEL_NAMES:
                self.problem(item, f"unknown tunnel {name!r}: tunnels are {', '.join(TUNNEL_NAMES)}")
            elif name is not None:
                names.append(name)
        return tuple(names)

    def rule(self, node, rule_id: int, names: dict[str, int]) -> Rule | None:
        before = len(self.problems)
        self.seen_names = {}
        keys = self.mapping(node, f"rule {rule_id}", RULE_KEYS)
        if not keys and isinstance(node, yaml.MappingNode):
            self.problem(node, f"rule {rule_id} is empty")
        name = None
        if "name" not in keys:
            self.problem(node, f"rule {rule_id} has no name")
        else:
            name = self.scalar(keys["name"][1], "name")
            if name is not None and not RULE_NAME.match(name):
                self.problem(keys["name"][1], f"rule name {name!r}: use lower-case letters, digits, "
                                              "'-', '_' and '.', at most 63 characters")
            elif name in names:
                self.problem(keys["name"][1], f"rule name {name!r} is already used by rule {names[name]}")
            elif name is not None:
                names[name] = rule_id
        action = None
        if "action" not in keys:
            self.problem(node, f"rule {name or rule_id} has no action ({', '.join(ACTIONS)})")
        else:
            action = self.scalar(keys["action"][1], "action")
            if action is not None and action not in ACTIONS:
                self.problem(keys["action"][1], f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
                action = None
        mode = "enforce"
        if "mode" in keys:
            mode = self.scalar(keys["mode"][1], "mode")
            if mode is not None and mode not in MODES:
                self.problem(keys["mode"][1], f"unknown mode {mode!r}; one of: {', '.join(MODES)}")
        description = self.scalar(keys["description"][1], "description") if "description" in keys else ""

        kinds = ABI.SLUICE_MATCH_SUFFIX, ABI.SLUICE_MATCH_EXACT
        suffixes = self.domain_list(keys.get("domains"), kinds[0]) if "domains" in keys else []
        exact = self.domain_list(keys.get("exact"), kinds[1]) if "exact" in keys else []
        if "domains_file" in keys:
            suffixes += self.domains_file(keys["domains_file"][1])
        conditions = self.flow_conditions(keys)
        if not suffixes and not exact and not conditions and len(self.problems) == before:
            self.problem(node, f"rule {name or rule_id} names no domains and no other condition (give domains, "
                               "exact or domains_file; or, for every name, protocol, tls or destination)")

        details = self.action_details(node, keys, action) if action else {}
        details.update(self.audience(keys))
        details.update(conditions)
        if "after" in keys:
            details["trigger"] = self.trigger(keys["after"][1])
        if "active" in keys:
            details["active"] = self.windows(keys["active"][1])
        if "escalate" in keys:
            details["escalate"] = self.steps(keys["escalate"][1])
        if len(self.problems) > before:
            return None
        return Rule(id=rule_id, name=name, action=action, monitor=mode == "monitor",
                    description=description or "", suffixes=suffixes, exact=exact,
                    line=node.start_mark.line + 1, **details)

    def domain_list(self, key_and_value, kind: int) -> list[bytes]:
        key_node, node = key_and_value
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"{key_node.value} must be a list of domain names")
            return []
        names = []
        for item in node.value:
            raw = self.scalar(item, "a domain name")
            if raw is None:
                continue
            name = self.add_name(raw, kind, item, self.path, item.start_mark.line + 1, item.start_mark.column + 1)
            if name:
                names.append(name)
        return names

    def add_name(self, raw, kind, node, file, line, column) -> bytes | None:
        name, error = check_domain(raw)
        if error:
            self.problems.append(Problem(file, line, column, error))
            return None
        first = self.seen_names.setdefault((name, kind), (file, line, column))
        if first != (file, line, column):
            kind_name = "suffix" if kind == ABI.SLUICE_MATCH_SUFFIX else "exact name"
            self.problems.append(Problem(file, line, column, f"duplicate {kind_name} {name.decode()!r}: "
                                                             f"already given at {':'.join(map(str, first))}"))
            return None
        return name

    def domains_file(self, node) -> list[bytes]:
        names = []
        for text, file, line, column in self.listed_file(node, "domains_file"):
            name = self.add_name(text, ABI.SLUICE_MATCH_SUFFIX, None, file, line, column)
            if name:
                names.append(name)
        return names


def load_policy(path: str | os.PathLike) -> Policy:
    """Read and check a policy file; raises PolicyError listing every problem."""
    # A policy of a million names is millions of small objects that live as
    # long as it does: the cyclic collector's passes over them while they are
    # made free nothing (and took a fifth of a million-name load).
    collecting = gc.isenabled()
    gc.disable()
    try:
        loader = _Loader(str(path))
        policy = loader.load()
    finally:
        if collecting:
            gc.enable()
    if loader.problems:
        raise PolicyError(sorted(loader.problems, key=lambda p: (p.file != loader.path, p.file,
                                                                  p.line, p.column)))
    return policy
