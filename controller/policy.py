"""Policy files: YAML in, checked rules out, every problem with file:line:column.

The loader walks yaml's node graph rather than plain Python objects, because
only nodes remember where they came from. It collects every problem it finds
before giving up, so that one run of `sluice validate` shows them all.
Domain lists can be long (a malware feed of a million names), so
`domains_file` is read with plain line splitting, not YAML.

The format is documented in README.md and published as JSON Schema in
controller/policy.schema.json; tests/test_policy.py keeps the two in step.
"""

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .abi import ABI
from .names import normalise

DEFAULT_FLOW_IDLE_NS = 10 * 60 * 10**9     # as in the documented throttlers
DEFAULT_WINDOW_PACKETS = 20               # a ClientHello may follow junk or take several segments
DEFAULT_WINDOW_BYTES = 16 * 1024
WINDOW_PACKETS_MAX = 255                   # flow_state counts them in a byte
FLOW_IDLE_MAX_NS = 7 * 24 * 3600 * 10**9
RATE_MAX_BPS = 400 * 10**9                 # bits per second
FULL_FRAME_BYTES = 1514                    # an Ethernet frame carrying a 1500-byte packet
DEFAULT_BURST_SECONDS = 0.5                # default burst: 500 ms at the rate, which TCP needs to keep the rate (bench/throttle.py)...
DEFAULT_BURST_MIN_BYTES = 2 * FULL_FRAME_BYTES   # ...but never less than two full frames
DEFAULT_SHAPE_HORIZON_NS = 2 * 10**9
HORIZON_MAX_NS = 10 * 10**9                # fq drops packets due later than its own 10 s horizon
NAME_MAX = 253
LABEL_MAX = 63

ACTIONS = {"allow": ABI.SLUICE_ACTION_ALLOW, "block": ABI.SLUICE_ACTION_BLOCK,
           "throttle": ABI.SLUICE_ACTION_THROTTLE, "shape": ABI.SLUICE_ACTION_SHAPE,
           "delay": ABI.SLUICE_ACTION_DELAY}
RATE_ACTIONS = ("throttle", "shape")
SCOPES = {"flow": ABI.SLUICE_SCOPE_FLOW, "client": ABI.SLUICE_SCOPE_CLIENT, "rule": ABI.SLUICE_SCOPE_RULE}
DIRECTIONS = ("up", "down")
MODES = ("enforce", "monitor")

TOP_KEYS = ("version", "flow_idle_timeout", "inspection", "reclassify", "rules")
INSPECTION_KEYS = ("window_packets", "window_bytes")
RULE_KEYS = ("name", "description", "action", "mode", "domains", "exact", "domains_file",
             "rate", "burst", "direction", "up", "down", "scope", "horizon",
             "latency", "jitter", "fallback")
DIRECTION_KEYS = ("rate", "burst")

RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
LABEL = re.compile(r"^[a-z0-9_-]{1,63}$")
RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)$", re.IGNORECASE)
SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)$")
DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)$")
RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
DURATION_UNITS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
                  "h": 3600 * 10**9, "d": 86400 * 10**9}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    column: int
    message: str

    def __str__(self):
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class RateLimit:
    rate_bps: int           # bits per second
    burst_bytes: int


@dataclass(frozen=True)
class Rule:
    id: int                 # 1-based, in file order; 0 means "no rule" in the data plane
    name: str
    action: str             # a key of ACTIONS
    monitor: bool
    description: str
    suffixes: list[bytes]
    exact: list[bytes]
    line: int
    scope: str = "flow"
    limits: dict[str, RateLimit] = field(default_factory=dict)   # "up"/"down" -> limit
    latency_ns: int = 0
    jitter_ns: int = 0
    horizon_ns: int = 0
    fallback: str | None = None


@dataclass(frozen=True)
class Policy:
    path: str
    version: int
    flow_idle_ns: int
    window_packets: int
    rules: list[Rule]
    reclassify: bool = False
    window_bytes: int = DEFAULT_WINDOW_BYTES     # on reload, judge existing flows by the new rules

    def match(self, name: bytes) -> Rule | None:
        """The rule the data plane picks for name: an exact rule, else the
        longest suffix at a label boundary (bpf/domain_match.h, in Python)."""
        name = normalise(name)
        exact, suffixes = self._indexes()
        if name in exact:
            return exact[name]
        labels = name.split(b".")
        for start in range(len(labels)):
            rule = suffixes.get(b".".join(labels[start:]))
            if rule:
                return rule
        return None

    def _indexes(self):
        if "_index" not in self.__dict__:
            exact = {n: r for r in self.rules for n in r.exact}
            suffixes = {n: r for r in self.rules for n in r.suffixes}
            object.__setattr__(self, "_index", (exact, suffixes))
        return self.__dict__["_index"]

    def rule_by_id(self, rule_id: int) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)

    def rule_by_name(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.name == name), None)


def parse_rate(text: str) -> int:
    """'128kbit' -> 128000 bits per second."""
    match = RATE.match(text.strip())
    if not match:
        raise ValueError(f"not a rate: {text!r} (use a number and bit, kbit, mbit or gbit, e.g. 128kbit)")
    return round(float(match[1]) * RATE_UNITS[match[2].lower()])


def parse_size(text: str) -> int:
    """'64KiB' -> 65536 bytes."""
    match = SIZE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (use a number and B, KB, MB, GB, KiB, MiB or GiB, e.g. 64KiB)")
    return round(float(match[1]) * SIZE_UNITS[match[2]])


def parse_duration(text: str) -> int:
    """'250ms' -> 250000000 nanoseconds."""
    match = DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use a number and ns, us, ms, s, m, h or d, e.g. 250ms)")
    return round(float(match[1]) * DURATION_UNITS[match[2]])


def check_domain(raw: str) -> tuple[bytes | None, str | None]:
    """(normalised name, None) or (None, what is wrong with it)."""
    if raw.startswith("*."):
        return None, (f"wildcard {raw!r}: write domains: [{raw[2:]}] instead; "
                      "suffix rules already cover every name below a domain")
    try:
        encoded = raw.encode("ascii")
    except UnicodeEncodeError:
        return None, f"{raw!r} is not ASCII: use its IDNA form (xn--...)"
    name = normalise(encoded)
    text = name.decode()
    try:
        ipaddress.ip_address(text.strip("[]"))
        return None, f"{raw!r} is an IP address: sluice matches names, not addresses"
    except ValueError:
        pass
    if not name:
        return None, "empty domain name"
    if len(name) > NAME_MAX:
        return None, f"{raw[:40]}... is {len(name)} bytes long; a domain name has at most {NAME_MAX}"
    for label in text.split("."):
        if not label:
            return None, f"{raw!r} has an empty label"
        if len(label) > LABEL_MAX:
            return None, f"{raw!r} has a label of {len(label)} characters; at most {LABEL_MAX}"
        if not LABEL.match(label):
            return None, f"{raw!r}: label {label!r} may only use letters, digits, '-' and '_'"
    return name, None


class _Loader:
    """One policy file being read; problems accumulate in self.problems."""

    def __init__(self, path: str):
        self.path = path
        self.problems: list[Problem] = []
        # (normalised name, kind) -> "file:line:column" of its first mention
        self.seen_names: dict[tuple[bytes, int], str] = {}

    def problem(self, node, message: str, file: str | None = None) -> None:
        mark = node.start_mark
        self.problems.append(Problem(file or self.path, mark.line + 1, mark.column + 1, message))

    def scalar(self, node, what: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, f"{what} must be a single value")
            return None
        return node.value

    def integer(self, node, what: str, low: int, high: int) -> int | None:
        value = self.scalar(node, what)
        if value is None:
            return None
        if not re.fullmatch(r"\d+", value):
            self.problem(node, f"{what} must be a whole number, not {value!r}")
            return None
        if not low <= int(value) <= high:
            self.problem(node, f"{what} must be between {low} and {high}, not {value}")
            return None
        return int(value)

    def quantity(self, node, what: str, parse, low: int, high: int, unit_name: str) -> int | None:
        value = self.scalar(node, what)
        if value is None:
            return None
        try:
            amount = parse(value)
        except ValueError as error:
            self.problem(node, f"{what}: {error}")
            return None
        if amount <= 0:
            self.problem(node, f"{what} must be more than zero, not {value!r}")
            return None
        if not low <= amount <= high:
            self.problem(node, f"{what} {value!r} is out of range ({low} to {high} {unit_name})")
            return None
        return amount

    def mapping(self, node, what: str, allowed: tuple[str, ...]) -> dict[str, tuple]:
        """key -> (key node, value node), refusing unknown and repeated keys."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping of keys to values")
            return {}
        result = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in allowed:
                self.problem(key_node, f"unknown key {key!r} in {what}; allowed: {', '.join(allowed)}")
            elif key in result:
                self.problem(key_node, f"{key!r} appears twice in {what}")
            else:
                result[key] = (key_node, value_node)
        return result

    # --- the file ---------------------------------------------------------
    def load(self) -> Policy | None:
        try:
            text = Path(self.path).read_text()
        except OSError as error:
            self.problems.append(Problem(self.path, 1, 1, f"cannot read the policy: {error.strerror}"))
            return None
        try:
            root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            self.problems.append(Problem(self.path, mark.line + 1, mark.column + 1,
                                         f"not valid YAML: {error.problem or error.context}"))
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
        if "inspection" in top:
            inspection = self.mapping(top["inspection"][1], "inspection", INSPECTION_KEYS)
            if "window_packets" in inspection:
                window_packets = self.integer(inspection["window_packets"][1], "window_packets",
                                              1, WINDOW_PACKETS_MAX)
            if "window_bytes" in inspection:
                window_bytes = self.quantity(inspection["window_bytes"][1], "window_bytes", parse_size,
                                             1, ABI.SLUICE_WINDOW_BYTES_MAX, "bytes")
        reclassify = False
        if "reclassify" in top:
            value = self.scalar(top["reclassify"][1], "reclassify")
            if value not in ("true", "false"):
                self.problem(top["reclassify"][1], "reclassify must be true or false")
            reclassify = value == "true"
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
        if self.problems:
            return None
        return Policy(self.path, version, flow_idle_ns, window_packets, rules, reclassify, window_bytes)

    # --- one rule ---------------------------------------------------------
    def rule(self, node, rule_id: int, names: dict[str, int]) -> Rule | None:
        before = len(self.problems)
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
        if not suffixes and not exact and len(self.problems) == before:
            self.problem(node, f"rule {name or rule_id} names no domains (give domains, exact or domains_file)")

        details = self.action_details(node, keys, action) if action else {}
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
        where = f"{file}:{line}:{column}"
        if error:
            self.problems.append(Problem(file, line, column, error))
            return None
        first = self.seen_names.get((name, kind))
        if first:
            kind_name = "suffix" if kind == ABI.SLUICE_MATCH_SUFFIX else "exact name"
            self.problems.append(Problem(file, line, column,
                                         f"duplicate {kind_name} {name.decode()!r}: already given at {first}"))
            return None
        self.seen_names[(name, kind)] = where
        return name

    def domains_file(self, node) -> list[bytes]:
        relative = self.scalar(node, "domains_file")
        if relative is None:
            return []
        path = Path(self.path).parent / relative
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            self.problem(node, f"cannot read domains_file {str(path)!r}: {error.strerror}")
            return []
        names = []
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if text:
                name = self.add_name(text, ABI.SLUICE_MATCH_SUFFIX, None, str(path), number,
                                     line.index(text) + 1)
                if name:
                    names.append(name)
        return names

    # --- throttle, shape, delay -------------------------------------------
    def action_details(self, node, keys, action) -> dict:
        """The fields of Rule that only some actions use; refuses the rest."""
        uses = {"throttle": {"rate", "burst", "direction", "up", "down", "scope"},
                "shape": {"rate", "burst", "direction", "up", "down", "scope", "horizon", "fallback"},
                "delay": {"latency", "jitter", "horizon"}}.get(action, set())
        for key in ("rate", "burst", "direction", "up", "down", "scope", "horizon", "latency", "jitter",
                    "fallback"):
            if key in keys and key not in uses:
                self.problem(keys[key][0], f"{key!r} does not apply to action {action}")
        details = {}
        if "scope" in keys and "scope" in uses:
            scope = self.scalar(keys["scope"][1], "scope")
            if scope not in SCOPES:
                self.problem(keys["scope"][1], f"unknown scope {scope!r}; one of: {', '.join(SCOPES)}")
            details["scope"] = scope
        if action in RATE_ACTIONS:
            details["limits"] = self.limits(node, keys, action)
            if action == "shape":
                details["horizon_ns"] = self.horizon(keys, DEFAULT_SHAPE_HORIZON_NS)
                if "fallback" in keys:
                    fallback = self.scalar(keys["fallback"][1], "fallback")
                    if fallback != "throttle":
                        self.problem(keys["fallback"][1], "fallback can only be throttle: police to the "
                                                          "same rate where the fq qdisc is missing")
                    details["fallback"] = fallback
        elif action == "delay":
            if "latency" not in keys:
                self.problem(node, "a delay rule needs latency (e.g. latency: 250ms)")
                return details
            latency = self.quantity(keys["latency"][1], "latency", parse_duration, 1, HORIZON_MAX_NS, "ns")
            jitter = (self.quantity(keys["jitter"][1], "jitter", parse_duration, 1, HORIZON_MAX_NS, "ns")
                      if "jitter" in keys else 0)
            if latency is None or jitter is None:
                return details
            details.update(latency_ns=latency, jitter_ns=jitter)
            details["horizon_ns"] = self.horizon(keys, min(HORIZON_MAX_NS, 2 * (latency + jitter)))
            if details["horizon_ns"] and details["horizon_ns"] <= latency + jitter:
                self.problem(keys.get("horizon", (node, node))[1],
                             "horizon must be longer than latency plus jitter, or every packet is dropped")
        return details

    def horizon(self, keys, default: int) -> int:
        if "horizon" not in keys:
            return default
        return self.quantity(keys["horizon"][1], "horizon", parse_duration, 1, HORIZON_MAX_NS, "ns") or 0

    def limits(self, node, keys, action) -> dict[str, RateLimit]:
        limits = {}
        direction = "both"
        if "direction" in keys:
            direction = self.scalar(keys["direction"][1], "direction")
            if direction not in ("both",) + DIRECTIONS:
                self.problem(keys["direction"][1], "direction must be up, down or both")
                return limits
        if "rate" in keys:
            limit = self.rate_limit(keys["rate"][1], keys.get("burst", (None, None))[1])
            if limit:
                for d in DIRECTIONS if direction == "both" else (direction,):
                    limits[d] = limit
        elif "burst" in keys:
            self.problem(keys["burst"][0], "burst needs a rate beside it")
        for d in DIRECTIONS:
            if d in keys:
                sub = self.mapping(keys[d][1], f"{d}", DIRECTION_KEYS)
                if "rate" not in sub:
                    self.problem(keys[d][1], f"{d} needs a rate")
                    continue
                limit = self.rate_limit(sub["rate"][1], sub.get("burst", (None, None))[1])
                if limit:
                    limits[d] = limit
        if not limits and "rate" not in keys and not any(d in keys for d in DIRECTIONS):
            self.problem(node, f"a {action} rule needs a rate (e.g. rate: 128kbit), or up/down rates")
        return limits

    def rate_limit(self, rate_node, burst_node) -> RateLimit | None:
        rate = self.quantity(rate_node, "rate", parse_rate, 1, RATE_MAX_BPS, "bit/s")
        if rate is None:
            return None
        if burst_node is None:
            burst = max(round(rate / 8 * DEFAULT_BURST_SECONDS), DEFAULT_BURST_MIN_BYTES)
        else:
            burst = self.quantity(burst_node, "burst", parse_size, 1, 2**40, "bytes")
            if burst is None:
                return None
            if burst < FULL_FRAME_BYTES:
                self.problem(burst_node, f"burst of {burst} bytes is smaller than one full-size frame "
                                         f"({FULL_FRAME_BYTES} bytes): such packets could never pass")
                return None
        return RateLimit(rate, burst)


def load_policy(path: str | os.PathLike) -> Policy:
    """Read and check a policy file; raises PolicyError listing every problem."""
    loader = _Loader(str(path))
    policy = loader.load()
    if loader.problems:
        raise PolicyError(sorted(loader.problems, key=lambda p: (p.file != loader.path, p.file,
                                                                  p.line, p.column)))
    return policy


def with_stable_ids(policy: Policy, known_ids: dict[str, int]) -> tuple[Policy, dict[str, int]]:
    """The policy with each rule's id kept from earlier policies, by rule name.

    Flows and counters in the data plane refer to rules by id, and outlive a
    reload: a rule that keeps its name keeps its id, so its flows keep their
    meaning and its counters keep counting. New names take ids never used
    before; ids of removed rules stay retired. Returns the policy and the
    updated name -> id map."""
    ids = dict(known_ids)
    free = (i for i in range(max(ids.values(), default=0) + 1, ABI.SLUICE_MAX_RULES))
    if len(set(ids) | {r.name for r in policy.rules}) >= ABI.SLUICE_MAX_RULES:
        # Every id has been used once: start afresh from this policy's order.
        ids, free = {}, iter(range(1, ABI.SLUICE_MAX_RULES))
    rules = []
    for rule in policy.rules:
        if rule.name not in ids:
            ids[rule.name] = next(free)
        rules.append(replace(rule, id=ids[rule.name]))
    return replace(policy, rules=rules), ids


def policy_summary(policy: Policy) -> str:
    """What a valid policy does, in a few lines, for `sluice validate`."""
    names = sum(len(r.suffixes) + len(r.exact) for r in policy.rules)
    lines = [f"{policy.path}: valid, {len(policy.rules)} rules naming {names} domains; "
             f"flows idle for {policy.flow_idle_ns / 1e9:g} s are forgotten; "
             f"{policy.window_packets} payload packets inspected per flow"]
    for rule in policy.rules:
        what = rule.action + (" (monitor: counted, not enforced)" if rule.monitor else "")
        if rule.limits:
            what += ", " + ", ".join(f"{d} {limit.rate_bps / 1000:g} kbit/s burst {limit.burst_bytes} B"
                                     for d, limit in sorted(rule.limits.items())) + f", per {rule.scope}"
        if rule.latency_ns:
            what += f", {rule.latency_ns / 1e6:g} ms" + (f" +0..{rule.jitter_ns / 1e6:g} ms" if rule.jitter_ns else "")
        lines.append(f"  {rule.id:>3} {rule.name}: {what}; {len(rule.suffixes)} suffixes, {len(rule.exact)} exact")
    return "\n".join(lines)
