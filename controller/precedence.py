# SPDX-License-Identifier: GPL-2.0-only
"""Which rule applies to a flow: precedence, compiled into rule sets.

Precedence, in order (docs/policy.md, "Precedence"):
  1. exemptions: an `allow` rule that applies always wins;
  2. the most specific domain: an exact name, then the longest suffix, then
     a rule with no name condition (it may apply to any name, or none);
  3. the most specific client class: a rule for the client's class before
     a rule for every client;
  4. rule order in the file.

The data plane finds only the most specific domain entry naming a flow's
name (bpf/domain_match.h), so each entry's rule set already holds the rules
of the less specific entries above it, sorted by the order above, one list
per client class; rules without a name condition are in every set, and in
the set of flows no entry names (SLUICE_RULE_SET_UNNAMED). The kernel then
takes the first rule of the client's list whose conditions (schedule, SYN
seen, protocol, destination, ECH, ALPN, ports, rollout share) hold
(bpf/client_match.h). decide() walks the same lists in Python, which is
what `sluice explain` prints and what tests/test_bpf_clients.py and
tests/test_bpf_playbook.py hold the kernel to.

A rule that applies to any flow (no name, protocol, ECH or ALPN condition)
is checked before any name is read: at a new flow's opening packet (the
client's SYN, a UDP flow's first datagram) the set of flows without a name
is walked as for a flow of unknown protocol (bpf/sluice_xdp.c,
sluice_stage_opening); a QUIC flow's first Initial as for a flow of
protocol quic, where no rule that may apply to QUIC looks at its hello
(judges_quic_at_opening). A rule found there that acts at once settles the
flow by its address (a dropped SYN carries no name). One that waits for
its trigger, or allows, holds while the flow is read on: a name read (a
ClientHello, a request, a QUIC Initial) judges it again by the name's set,
where named rules come first, unless its trigger has fired meanwhile.
"""

from dataclasses import dataclass, field

from .abi import ABI
from .names import normalise
from .rollout import in_rollout, rollout_value, threshold

SUFFIX, EXACT = ABI.SLUICE_MATCH_SUFFIX, ABI.SLUICE_MATCH_EXACT
NO_CLASS = 0
UNNAMED = ABI.SLUICE_RULE_SET_UNNAMED
UNNAMED_SPECIFICITY = (0, 0)           # below any suffix: depth 0


class RuleSetOverflow(Exception):
    """More rules could apply to one name for one class than a set holds."""

    def __init__(self, name: bytes, rules: list):
        self.name, self.rules = name, rules
        what = repr(name.decode()) if name else "flows no domain entry names"
        super().__init__(f"{len(rules)} rules could apply to {what} for one client "
                         f"({', '.join(r.name for r in rules)}); at most {ABI.SLUICE_RULE_SET_MAX}")


@dataclass
class RuleSets:
    """The compiled form: domain entries -> set ids -> per-class rule lists."""
    names: list[bytes] = field(default_factory=list)          # parallel lists, one per domain entry
    kinds: list[int] = field(default_factory=list)
    set_ids: list[int] = field(default_factory=list)
    entries: dict = field(default_factory=dict)               # (name, kind) -> set id
    sets: dict = field(default_factory=dict)                  # (set id, class id) -> tuple of rules


def is_unnamed(rule) -> bool:
    """A rule without a name condition applies to every name its other conditions allow."""
    return not rule.suffixes and not rule.exact


def applies_to_any_flow(rule) -> bool:
    """A rule without a name, protocol, ECH or ALPN condition: one that judges flows at their opening packet."""
    return is_unnamed(rule) and not rule.protocols and not rule.ech and not rule.alpn


def may_apply_to_quic(rule) -> bool:
    return not rule.protocols or "quic" in rule.protocols


def judges_quic_at_opening(rules) -> bool:
    """Is a QUIC flow judged at its first Initial, as one of protocol quic?
    So it is where some rule names the protocol and no rule that may apply
    to a QUIC flow looks at its hello: no name, ECH or ALPN condition, and
    no `quic: block` that would block where the rule's action does not.
    Whatever the hello says, the controller would then choose the rule the
    opening datagram's facts choose, but a round trip later (bpf/quic.h
    quic_judged_at_opening())."""
    quic_rules = [rule for rule in rules if may_apply_to_quic(rule)]
    return (any(rule.protocols for rule in quic_rules) and
            all(is_unnamed(rule) and not rule.ech and not rule.alpn and
                (rule.quic != "block" or rule.action == "block") for rule in quic_rules))


def settles_at_opening(rule) -> bool:
    """Does rule, chosen at a flow's opening packet, settle it there (bpf/verdict.h verdict_judge_opening)?"""
    return rule.action != "allow" and not rule.trigger


def candidates(name: bytes, kind: int, suffix_rules: dict, exact_rules: dict,
               unnamed_rules: list) -> list[tuple]:
    """(rule, specificity) of every rule that names this entry or a suffix
    above it, and of every rule without a name condition."""
    found, seen = [], set()
    depth = name.count(b".") + 1
    if kind == EXACT:
        found += [(rule, (depth, 1)) for rule in exact_rules.get(name, ())]
    while True:
        found += [(rule, (depth, 0)) for rule in suffix_rules.get(name, ())]
        dot = name.find(b".")
        if dot < 0:
            break
        name, depth = name[dot + 1:], depth - 1
    found += [(rule, UNNAMED_SPECIFICITY) for rule in unnamed_rules]
    unique = []
    for rule, specificity in found:          # most specific first: keep a rule's best mention
        if rule.name not in seen:
            seen.add(rule.name)
            unique.append((rule, specificity))
    return unique


def rank(name: bytes, found: list[tuple], order: dict, class_ids: dict[str, int]) -> dict[int, tuple]:
    """Class id -> the rules of found ((rule, specificity) of an entry's
    candidates) that may apply for that class, in precedence order; raises
    RuleSetOverflow past a set's size."""
    found.sort(key=lambda c: (c[0].action != "allow", tuple(-x for x in c[1]),
                              c[0].client_class is None, order[c[0].name]))
    ranked = [rule for rule, _ in found]
    per_class = {NO_CLASS: tuple(r for r in ranked if r.client_class is None)}
    for class_name in {r.client_class for r in ranked if r.client_class}:
        per_class[class_ids[class_name]] = tuple(r for r in ranked if r.client_class in (class_name, None))
    per_class = {c: rs for c, rs in per_class.items() if rs}
    for rs in per_class.values():
        if len(rs) > ABI.SLUICE_RULE_SET_MAX:
            raise RuleSetOverflow(name, list(rs))
    return per_class


def compile_rule_sets(rules: list, class_ids: dict[str, int]) -> RuleSets:
    """Rule sets for rules (each with the action in force), in file order."""
    suffix_rules: dict[bytes, list] = {}
    exact_rules: dict[bytes, list] = {}
    unnamed_rules = [rule for rule in rules if is_unnamed(rule)]
    for rule in rules:
        for name in rule.suffixes:
            suffix_rules.setdefault(name, []).append(rule)
        for name in rule.exact:
            exact_rules.setdefault(name, []).append(rule)
    order = {rule.name: position for position, rule in enumerate(rules)}
    compiled = RuleSets()
    signatures: dict[tuple, int] = {}
    alone: dict[tuple, int] = {}        # (class id, rule name) -> the set of that rule alone

    def set_id_of(per_class: dict) -> int:
        signature = tuple(sorted((c, tuple(r.name for r in rs)) for c, rs in per_class.items()))
        set_id = signatures.get(signature)
        if set_id is None:
            set_id = signatures[signature] = len(signatures) + 1
            for class_id, rs in per_class.items():
                compiled.sets[(set_id, class_id)] = rs
        return set_id

    def under_another_suffix(name: bytes) -> bool:
        dot = name.find(b".")
        while dot >= 0:
            name = name[dot + 1:]
            if name in suffix_rules:
                return True
            dot = name.find(b".")
        return False

    for kind, table in ((SUFFIX, suffix_rules), (EXACT, exact_rules)):
        for name, own in table.items():
            if kind == SUFFIX and len(own) == 1 and not unnamed_rules and not under_another_suffix(name):
                # The common case, a million times over in a feed: one rule, nothing above it.
                rule = own[0]
                class_id = class_ids[rule.client_class] if rule.client_class else NO_CLASS
                set_id = alone.get((class_id, rule.name))
                if set_id is None:
                    set_id = alone[(class_id, rule.name)] = set_id_of({class_id: (rule,)})
            else:
                found = candidates(name, kind, suffix_rules, exact_rules, unnamed_rules)
                set_id = set_id_of(rank(name, found, order, class_ids))
            compiled.names.append(name)
            compiled.kinds.append(kind)
            compiled.set_ids.append(set_id)
            compiled.entries[(name, kind)] = set_id
    if unnamed_rules:
        found = [(rule, UNNAMED_SPECIFICITY) for rule in unnamed_rules]
        for class_id, members in rank(b"", found, order, class_ids).items():
            compiled.sets[(UNNAMED, class_id)] = members
    return compiled


@dataclass(frozen=True)
class FlowFacts:
    """What the data plane knows of a flow beside its name and client when it picks the rule."""
    server: str | None = None            # the server's address; None: unknown (in no destination set)
    server_port: int = 443
    opened_by_client: bool = True
    protocol: str = "tls"                # tls, http, quic, or other: one sluice reads no name from
    ech: bool = False                    # its ClientHello offers Encrypted Client Hello
    alpn: tuple[str, ...] = ()           # the protocol ids its ClientHello offers


@dataclass
class Decision:
    rule: object | None          # the rule that applies, or None: the flow passes untouched
    client_class: object | None  # the client's class, or None
    class_prefix: str | None     # the prefix that put the client in it
    domain: str | None           # the domain entry the name matched, e.g. "suffix twimg.com"
    steps: list[str]             # why, one line per rule considered


def most_specific_entry(name: bytes, entries: dict) -> tuple[int, str] | tuple[None, None]:
    """The set id of the most specific entry naming name (as domain_match.h finds it)."""
    if not name:
        return None, None
    if (name, EXACT) in entries:
        return entries[(name, EXACT)], f"exact {name.decode()}"
    suffix = name
    while True:
        if (suffix, SUFFIX) in entries:
            return entries[(suffix, SUFFIX)], f"suffix {suffix.decode()}"
        dot = suffix.find(b".")
        if dot < 0:
            return None, None
        suffix = suffix[dot + 1:]


def decide(policy, name: bytes, client: str, facts: FlowFacts = FlowFacts()) -> Decision:
    """The rule the data plane chooses for a flow, with the reasons.

    policy must be resolved to one moment (Policy.at): inactive rules are
    marked, escalated rules carry the action of their current step."""
    name = normalise(name) if name else b""
    client_class, prefix = policy.classes.classify(client)
    class_id = client_class.id if client_class else NO_CLASS
    compiled = policy.rule_sets()
    steps = []
    quic_at_opening = facts.protocol == "quic" and judges_quic_at_opening(policy.rules)
    if facts.opened_by_client and (quic_at_opening or any(applies_to_any_flow(rule) for rule in policy.rules)):
        opening = FlowFacts(facts.server, facts.server_port, True, "quic" if quic_at_opening else "other")
        rule, steps = walk(policy, compiled.sets, UNNAMED, class_id, client, opening)
        at = "its first Initial, as QUIC" if quic_at_opening else "its opening packet"
        steps = [f"at {at}, before any name: {step}" for step in steps]
        if rule is not None and settles_at_opening(rule):
            return Decision(rule, client_class, prefix, None, steps + [f"rule {rule.name} settles it there"])
        if facts.protocol == "other":
            return Decision(rule, client_class, prefix, None, steps + ["sluice reads no name from it"])
        if rule is not None:
            steps.append(f"rule {rule.name} holds until a name is read, which judges it again")
    elif facts.protocol == "other":
        return Decision(None, client_class, prefix, None,
                        ["sluice reads no name from it, and judges no flow at its opening packet: it passes"])
    set_id, domain = most_specific_entry(name, compiled.entries)
    if set_id is None:
        if not any(key[0] == UNNAMED for key in compiled.sets):
            return Decision(None, client_class, prefix, None, steps + ["no rule names this domain"])
        set_id = UNNAMED
    rule, named_steps = walk(policy, compiled.sets, set_id, class_id, client, facts)
    return Decision(rule, client_class, prefix, domain, steps + named_steps)


def walk(policy, sets: dict, set_id: int, class_id: int, client: str, facts: FlowFacts) -> tuple:
    """(the first rule of the client's list of set_id that applies to the flow, or None; why, one
    line per rule considered), as select_rule() in bpf/client_match.h walks it."""
    rules = sets.get((set_id, class_id)) or sets.get((set_id, NO_CLASS), ())
    steps = []
    for rule in rules:
        held = []
        reason = why_not(policy, rule, client, facts, held)
        if reason is None:
            steps.append(f"rule {rule.name}: applies" + (f" ({'; '.join(held)})" if held else ""))
            return rule, steps
        steps.append(f"rule {rule.name}: skipped, {reason}")
    steps.append("no rule applies to this flow")
    return None, steps


def why_not(policy, rule, client: str, facts: FlowFacts, held: list[str]) -> str | None:
    """Why rule does not apply to this flow, or None when it does (client_match.h's
    checks, in order); each condition checked that held is appended to held."""
    if rule.inactive:
        return "outside its active windows"
    if rule.opened_by_client:
        if not facts.opened_by_client:
            return "only for flows whose opening SYN sluice saw from the client"
        held.append("opened by the client")
    if rule.protocols:
        if facts.protocol not in rule.protocols:
            return f"protocol {facts.protocol} is not {' or '.join(rule.protocols)}"
        held.append(f"protocol {facts.protocol}")
    if rule.destination:
        found, where = policy.destinations.classify(facts.server) if facts.server else (None, None)
        if found is None or found.name != rule.destination:
            what = f"in destinations {found.name} ({where})" if found else "in no destination set"
            return f"server {facts.server or '(unknown)'} is {what}, not in {rule.destination}"
        held.append(f"server {facts.server} in destinations {rule.destination} ({where})")
    hello = facts.protocol in ("tls", "quic")
    if rule.ech:
        if not hello:
            return f"ECH {rule.ech}: a {facts.protocol} flow has no ClientHello"
        if facts.ech != (rule.ech == "present"):
            return f"ECH is {'present' if facts.ech else 'absent'}, not {rule.ech}"
        held.append(f"ECH {rule.ech}")
    if rule.alpn:
        offered = [a for a in facts.alpn if a in rule.alpn]
        if not hello or not offered:
            return f"ALPN offered ({', '.join(facts.alpn) or 'none'}) has none of {', '.join(rule.alpn)}"
        held.append(f"ALPN offers {', '.join(offered)}")
    if rule.ports:
        if not any(first <= facts.server_port <= last for first, last in rule.ports):
            return f"server port {facts.server_port} is not in its ports"
        held.append(f"server port {facts.server_port} in its ports")
    if threshold(rule.percent) < (1 << 32):
        if not in_rollout(policy.rollout_key, client, rule.percent):
            value = rollout_value(policy.rollout_key, client)
            return f"client outside its {rule.percent}% share (rollout value {value / (1 << 32):.4%})"
        held.append(f"client in its {rule.percent}% share")
    return None
