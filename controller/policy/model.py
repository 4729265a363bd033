# SPDX-License-Identifier: GPL-2.0-only
"""What a checked policy is: Policy and Rule (with their steps and rate limits),
the problems a file is refused with, the actions, and the limits every value is held to."""

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from .. import block_methods, precedence
from ..abi import ABI
from ..clients import ClientClasses
from ..rollout import DEFAULT_ROLLOUT_KEY, rollout_key

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
TRIGGER_MAX = 2**32 - 1                    # rule_info.trigger_at is 32 bits

ACTIONS = {"allow": ABI.SLUICE_ACTION_ALLOW, "block": ABI.SLUICE_ACTION_BLOCK,
           "throttle": ABI.SLUICE_ACTION_THROTTLE, "shape": ABI.SLUICE_ACTION_SHAPE,
           "delay": ABI.SLUICE_ACTION_DELAY, "freeze": ABI.SLUICE_ACTION_FREEZE}
RATE_ACTIONS = ("throttle", "shape")
SCOPES = {"flow": ABI.SLUICE_SCOPE_FLOW, "client": ABI.SLUICE_SCOPE_CLIENT, "rule": ABI.SLUICE_SCOPE_RULE}
DIRECTIONS = ("up", "down")
MODES = ("enforce", "monitor")
BLOCK_METHODS = {"drop": ABI.SLUICE_BLOCK_DROP, "reset": ABI.SLUICE_BLOCK_RESET, "page": ABI.SLUICE_BLOCK_PAGE}


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
class Trigger:
    """The action applies once `count` of `unit` have passed in `direction`."""
    unit: str               # "bytes" (TCP or UDP payload: what the application reads) or "packets"
    count: int
    direction: str          # "up" or "down"

    def describe(self) -> str:
        return f"after {self.count} {self.unit} {self.direction}"


@dataclass(frozen=True)
class Step:
    """From `at` on, the rule acts as `action` with these details."""
    at: datetime
    action: str
    details: dict
    line: int


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
    # Who and when (see controller/precedence.py):
    client_class: str | None = None              # None: every client
    percent: Decimal = Decimal(100)              # share of those clients, by rollout hash
    ports: tuple[tuple[int, int], ...] = ()      # server port ranges; (): any
    opened_by_client: bool = False               # only flows sluice saw the client open
    active: tuple = ()                           # schedule.Span/Daily windows; (): always
    escalate: tuple[Step, ...] = ()
    inactive: bool = False                       # set by at(): outside every window now
    quic: str = "same"                           # "block": block matched QUIC flows, so clients fall back to TCP
    block_method: str = "drop"                   # block: a key of BLOCK_METHODS
    page: block_methods.BlockPage | None = None  # block, method page: the 451 response
    # What the flow is (see controller/precedence.py):
    protocols: tuple[str, ...] = ()              # "tls", "http", "quic"; (): any
    ech: str | None = None                       # "present", "absent"; None: either
    alpn: tuple[str, ...] = ()                   # the ClientHello offers one of these; (): any
    destination: str | None = None               # the server is in this destination set; None: any
    trigger: Trigger | None = None               # None: the action applies from the start

    def at(self, when: datetime) -> "Rule":
        """This rule as it stands at `when`: its current step, or marked inactive."""
        rule = self
        if self.active and not any(window.contains(when) for window in self.active):
            rule = replace(rule, inactive=True)
        step = next((s for s in reversed(self.escalate) if s.at <= when), None)
        if step:
            # The step's details replace the rule's: nothing of the earlier action carries over.
            cleared = dict(limits={}, latency_ns=0, jitter_ns=0, horizon_ns=0, fallback=None, scope="flow",
                           block_method="drop", page=None)
            rule = replace(rule, action=step.action, **{**cleared, **step.details})
        return rule

    def boundaries(self, after: datetime) -> list[datetime]:
        """Times after `after` at which at() may change."""
        times = [t for window in self.active for t in window.boundaries(after)]
        return times + [step.at for step in self.escalate if step.at > after]


# inspection.tunnels: the encapsulations the data plane can open (enum sluice_tunnel).
TUNNEL_NAMES = ("ipip", "gre", "gtpu", "vxlan", "qinq")


@dataclass(frozen=True)
class Policy:
    path: str
    version: int
    flow_idle_ns: int
    window_packets: int
    rules: list[Rule]
    reclassify: bool = False                     # on reload, judge existing flows by the new rules
    window_bytes: int = DEFAULT_WINDOW_BYTES
    classes: ClientClasses = field(default_factory=ClientClasses.empty)
    destinations: ClientClasses = field(default_factory=ClientClasses.empty)   # sets of server prefixes
    rollout_key: bytes = rollout_key(DEFAULT_ROLLOUT_KEY)
    reassemble: bool = True                      # False: read each segment alone, as simpler middleboxes
    fragments: str = "reassemble"                # or "drop": IP fragments of flows still inspected
    tunnels: tuple[str, ...] = TUNNEL_NAMES      # encapsulations opened to judge the flow inside
    proxy_protocol: bool = False                 # step over a PROXY protocol header before the hello
    on_evasion: str = "judge"                    # or "block", "ignore": segments the server would drop (receiver.h)
    ttl_margin: int = ABI.SLUICE_TTL_MARGIN_DEFAULT  # this far below the SYN's TTL: read once acknowledged

    def at(self, when: datetime) -> "Policy":
        """The policy as it stands at `when` (what the data plane is given)."""
        if not any(rule.active or rule.escalate for rule in self.rules):
            return self          # and its rule sets, computed once, for a million names too
        return replace(self, rules=[rule.at(when) for rule in self.rules])

    def next_switch(self, after: datetime) -> datetime | None:
        """The next time at which at() changes, if ever."""
        return min((t for rule in self.rules for t in rule.boundaries(after)), default=None)

    def rule_sets(self) -> precedence.RuleSets:
        if "_rule_sets" not in self.__dict__:
            class_ids = {c.name: c.id for c in self.classes.classes}
            object.__setattr__(self, "_rule_sets", precedence.compile_rule_sets(self.rules, class_ids))
        return self.__dict__["_rule_sets"]

    def decide(self, name: bytes, client: str, server_port: int = 443,
               opened_by_client: bool = True, **facts) -> precedence.Decision:
        """The rule the data plane chooses for a flow (see controller/precedence.py);
        facts: the other fields of precedence.FlowFacts (server, protocol, ech, alpn)."""
        return precedence.decide(self, name, client, precedence.FlowFacts(
            server_port=server_port, opened_by_client=opened_by_client, **facts))

    def rule_by_id(self, rule_id: int) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)

    def rule_by_name(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.name == name), None)


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
    stable = replace(policy, rules=rules)
    if "_rule_sets" in policy.__dict__:
        # Rule sets follow from the rules' names, domains, actions and
        # classes, never their ids: the checked policy's carry over, each rule
        # exchanged for its renumbered self, instead of being computed again
        # (which was a third of a million-name reload).
        renumbered = {id(old): new for old, new in zip(policy.rules, rules)}
        sets = policy.rule_sets()
        object.__setattr__(stable, "_rule_sets", replace(sets, sets={
            key: tuple(renumbered[id(rule)] for rule in members) for key, members in sets.sets.items()}))
    return stable, ids
