"""Policy files: YAML in, checked rules out, every problem with file:line:column.

The loader walks yaml's node graph rather than plain Python objects, because
only nodes remember where they came from. It collects every problem it finds
before giving up, so that one run of `sluice validate` shows them all.
Domain lists can be long (a malware feed of a million names), so
`domains_file` is read with plain line splitting, not YAML.

The format is documented in docs/policy.md and published as JSON Schema in
controller/policy.schema.json; tests/test_policy.py keeps the two in step.
"""

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy
import yaml

from . import block_methods, precedence, schedule
from .abi import ABI
from .clients import PREFIX_DTYPE, ClientClass, ClientClasses, parse_prefix
from .names import normalise
from .rollout import DEFAULT_ROLLOUT_KEY, rollout_key

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

TOP_KEYS = ("version", "flow_idle_timeout", "inspection", "reclassify", "rollout_key", "classes", "rules")
FRAGMENT_HANDLING = ("reassemble", "drop")
INSPECTION_KEYS = ("window_packets", "window_bytes", "reassemble", "fragments")
CLASS_KEYS = ("description", "prefixes", "prefixes_file")
RULE_KEYS = ("name", "description", "action", "mode", "domains", "exact", "domains_file",
             "class", "percent", "ports", "opened_by_client", "active", "escalate", "quic",
             "rate", "burst", "direction", "up", "down", "scope", "horizon",
             "latency", "jitter", "fallback", "method", "page")
ACTION_DETAIL_KEYS = ("rate", "burst", "direction", "up", "down", "scope", "horizon", "latency", "jitter",
                      "fallback", "method", "page")
STEP_KEYS = ("at", "action") + ACTION_DETAIL_KEYS
WINDOW_KEYS = ("from", "until", "daily", "timezone")
DIRECTION_KEYS = ("rate", "burst")
BLOCK_METHODS = {"drop": ABI.SLUICE_BLOCK_DROP, "reset": ABI.SLUICE_BLOCK_RESET, "page": ABI.SLUICE_BLOCK_PAGE}
PAGE_KEYS = ("body", "link")
PERCENT = re.compile(r"^\d{1,3}(\.\d{1,2})?$")      # shares in steps of 0.01%
PORT_RANGE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")

RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
CLASS_NAME = RULE_NAME
LABEL = re.compile(r"^[a-z0-9_-]{1,63}$")
# A whole well-formed name at once: the common case of a million-name feed;
# only a name that fails it is taken apart label by label to say why.
WELL_FORMED_NAME = re.compile(rb"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")
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
    rollout_key: bytes = rollout_key(DEFAULT_ROLLOUT_KEY)
    reassemble: bool = True                      # False: read each segment alone, as simpler middleboxes
    fragments: str = "reassemble"                # or "drop": IP fragments of flows still inspected

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
               opened_by_client: bool = True) -> precedence.Decision:
        """The rule the data plane chooses for a flow (see controller/precedence.py)."""
        return precedence.decide(self, name, client, server_port, opened_by_client)

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
    # Only digits and dots, or a colon, can make an IP address.
    if ":" in text or text.replace(".", "").isdigit():
        try:
            ipaddress.ip_address(text.strip("[]"))
            return None, f"{raw!r} is an IP address: sluice matches names, not addresses"
        except ValueError:
            pass
    if len(name) <= NAME_MAX and WELL_FORMED_NAME.fullmatch(name):
        return name, None
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


# Input files (policies, domains_file, prefixes_file) are read whole: a bound
# keeps `validate /dev/zero` or a runaway feed from eating the machine's memory.
# SLUICE_MAX_INPUT_BYTES (or `sluice --max-input-size`) raises it.
MAX_INPUT_BYTES = int(os.environ.get("SLUICE_MAX_INPUT_BYTES", 64 * 1024 * 1024))


class InputFileError(Exception):
    """An input file that cannot be read as text; line and column say where (None: the whole file)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.line, self.column = line, column


def read_text_file(path: str | os.PathLike, limit: int | None = None) -> str:
    """A regular file of at most `limit` bytes of UTF-8 text without NUL bytes;
    raises InputFileError saying what is wrong (and where) otherwise."""
    limit = MAX_INPUT_BYTES if limit is None else limit
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer before we refuse it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise InputFileError(error.strerror) from None
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise InputFileError("not a regular file")
        if status.st_size > limit:
            raise InputFileError(f"{status.st_size} bytes; input files may have at most {limit} "
                                 f"(raise with SLUICE_MAX_INPUT_BYTES or --max-input-size)")
        try:
            data = file.read(limit + 1)
        except OSError as error:
            raise InputFileError(error.strerror) from None
    if len(data) > limit:
        raise InputFileError(f"more than {limit} bytes; input files may have at most {limit} "
                             f"(raise with SLUICE_MAX_INPUT_BYTES or --max-input-size)")

    def where(offset: int) -> tuple[int, int]:
        return data.count(b"\n", 0, offset) + 1, offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    nul = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        if nul < 0 or nul > error.start:
            raise InputFileError(f"not UTF-8 text (byte 0x{data[error.start]:02x})",
                                 *where(error.start)) from None
    if nul >= 0:
        raise InputFileError("contains a NUL byte: not a text file", *where(nul))
    return text


class _Loader:
    """One policy file being read; problems accumulate in self.problems."""

    def __init__(self, path: str):
        self.path = path
        self.problems: list[Problem] = []
        # (normalised name, kind) -> "file:line:column" of its first mention in the rule being read;
        # several rules may name one domain (for different classes, say), one rule only once
        self.seen_names: dict[tuple[bytes, int], str] = {}
        self.class_names: set[str] = set()

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
        reclassify = self.boolean(top["reclassify"][1], "reclassify") if "reclassify" in top else False
        key_text = DEFAULT_ROLLOUT_KEY
        if "rollout_key" in top:
            key_text = self.scalar(top["rollout_key"][1], "rollout_key") or DEFAULT_ROLLOUT_KEY
        classes = self.classes(top["classes"][1]) if "classes" in top else ClientClasses.empty()
        self.class_names = {c.name for c in classes.classes}
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
        policy = Policy(self.path, version, flow_idle_ns, window_packets, rules, reclassify, window_bytes,
                        classes, rollout_key(key_text), reassemble, fragments=fragments)
        try:
            policy.rule_sets()
        except precedence.RuleSetOverflow as overflow:
            last = overflow.rules[ABI.SLUICE_RULE_SET_MAX]
            self.problems.append(Problem(self.path, last.line, 1, str(overflow)))
            return None
        return policy

    def boolean(self, node, what: str) -> bool:
        value = self.scalar(node, what)
        if value not in ("true", "false"):
            self.problem(node, f"{what} must be true or false")
        return value == "true"

    # --- client classes -----------------------------------------------------
    def classes(self, node) -> ClientClasses:
        """Every class's prefixes; a prefix may belong to one class only."""
        found, prefixes, class_ids = [], [], []
        where: dict[tuple[int, bytes], str] = {}       # prefix -> "class at file:line"
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, "classes must map class names to their prefixes")
            node = yaml.MappingNode("tag:yaml.org,2002:map", [])
        for key_node, value_node in node.value:
            name = key_node.value
            if not CLASS_NAME.match(str(name)) or any(c.name == name for c in found):
                self.problem(key_node, f"class name {name!r}: use lower-case letters, digits, '-', '_' "
                                       "and '.', each name once")
                continue
            client_class = ClientClass(len(found) + 1, name, key_node.start_mark.line + 1)
            found.append(client_class)
            keys = self.mapping(value_node, f"class {name}", CLASS_KEYS)
            listed = []                                 # (text, file, line, column)
            if "prefixes" in keys:
                items = keys["prefixes"][1]
                if not isinstance(items, yaml.SequenceNode):
                    self.problem(items, "prefixes must be a list of CIDR prefixes")
                else:
                    listed += [(self.scalar(item, "a prefix"), self.path, item.start_mark.line + 1,
                                item.start_mark.column + 1) for item in items.value]
            if "prefixes_file" in keys:
                listed += self.listed_file(keys["prefixes_file"][1], "prefixes_file")
            if not listed and "prefixes" not in keys and "prefixes_file" not in keys:
                self.problem(value_node, f"class {name} has no prefixes (give prefixes or prefixes_file)")
            for text, file, line, column in listed:
                if text is None:
                    continue
                try:
                    prefix = parse_prefix(text.strip())
                except ValueError as error:
                    self.problems.append(Problem(file, line, column, str(error)))
                    continue
                first = where.get(prefix)
                if first:
                    self.problems.append(Problem(file, line, column, f"{text.strip()} is already in {first}: "
                                                 "a prefix can belong to one class only"))
                    continue
                where[prefix] = f"class {name} ({file}:{line})"
                prefixes.append(prefix)
                class_ids.append(client_class.id)
        table = numpy.empty(len(prefixes), PREFIX_DTYPE)
        if prefixes:
            table["prefixlen"] = [length for length, _ in prefixes]
            table["addr"] = numpy.frombuffer(b"".join(addr for _, addr in prefixes),
                                             dtype=numpy.uint8).reshape(-1, 16)
        return ClientClasses(found, table, numpy.asarray(class_ids, dtype=numpy.uint32))

    def listed_file(self, node, key: str) -> list[tuple[str, str, int, int]]:
        """(entry, file, line, column) of each entry of a file of one entry a
        line, relative to the policy; '#' starts a comment."""
        relative = self.scalar(node, key)
        if relative is None:
            return []
        path = Path(self.path).parent / relative
        try:
            lines = read_text_file(path).splitlines()
        except InputFileError as error:
            if error.line is None:
                self.problem(node, f"cannot read {key} {str(path)!r}: {error}")
            else:
                self.problems.append(Problem(str(path), error.line, error.column, f"cannot read {key}: {error}"))
            return []
        listed = []
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if text:
                listed.append((text, str(path), number, line.index(text) + 1))
        return listed

    # --- one rule ---------------------------------------------------------
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
        if not suffixes and not exact and len(self.problems) == before:
            self.problem(node, f"rule {name or rule_id} names no domains (give domains, exact or domains_file)")

        details = self.action_details(node, keys, action) if action else {}
        details.update(self.audience(keys))
        if "active" in keys:
            details["active"] = self.windows(keys["active"][1])
        if "escalate" in keys:
            details["escalate"] = self.steps(keys["escalate"][1])
        if len(self.problems) > before:
            return None
        return Rule(id=rule_id, name=name, action=action, monitor=mode == "monitor",
                    description=description or "", suffixes=suffixes, exact=exact,
                    line=node.start_mark.line + 1, **details)

    # --- who: class, percent, ports, opened_by_client ------------------------
    def audience(self, keys) -> dict:
        details = {}
        if "class" in keys:
            name = self.scalar(keys["class"][1], "class")
            if name not in self.class_names:
                known = ", ".join(sorted(self.class_names)) or "none are defined under classes:"
                self.problem(keys["class"][1], f"unknown client class {name!r}; known: {known}")
            details["client_class"] = name
        if "percent" in keys:
            text = self.scalar(keys["percent"][1], "percent") or ""
            try:
                percent = Decimal(text) if PERCENT.match(text) else None
            except InvalidOperation:
                percent = None
            if percent is None or not 0 <= percent <= 100:
                self.problem(keys["percent"][1], f"percent must be 0 to 100 in steps of 0.01, not {text!r}")
            else:
                details["percent"] = percent
        if "ports" in keys:
            details["ports"] = self.ports(keys["ports"][1])
        if "opened_by_client" in keys:
            details["opened_by_client"] = self.boolean(keys["opened_by_client"][1], "opened_by_client")
        if "quic" in keys:
            details["quic"] = self.scalar(keys["quic"][1], "quic")
            if details["quic"] not in ("same", "block"):
                self.problem(keys["quic"][1], "quic must be same (the rule's action) or block (so that "
                                              "clients fall back to TCP)")
        return details

    def ports(self, node) -> tuple[tuple[int, int], ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.problem(node, "ports must be a list of ports or ranges, e.g. [443, 8000-8999]")
            return ()
        ranges = []
        for item in node.value:
            text = self.scalar(item, "a port") or ""
            match = PORT_RANGE.match(text)
            first, last = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
            if not match or not 1 <= first <= last <= 65535:
                self.problem(item, f"not a port or range of ports 1-65535: {text!r}")
                continue
            ranges.append((first, last))
        if len(ranges) > ABI.SLUICE_PORT_RANGES_MAX:
            self.problem(node, f"{len(ranges)} port ranges; at most {ABI.SLUICE_PORT_RANGES_MAX} (merge them)")
        return tuple(ranges)

    # --- when: active windows and escalation --------------------------------
    def windows(self, node) -> tuple:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.problem(node, "active must be a list of windows, e.g. [{from: 2021-03-10T10:00:00+03:00}]")
            return ()
        windows = []
        for item in node.value:
            keys = self.mapping(item, "an active window", WINDOW_KEYS)
            if "daily" in keys:
                if "from" in keys or "until" in keys:
                    self.problem(item, "a window is either daily hours or from/until, not both")
                    continue
                try:
                    start, end = schedule.parse_daily(self.scalar(keys["daily"][1], "daily") or "")
                except ValueError as error:
                    self.problem(keys["daily"][1], str(error))
                    continue
                zone = self.scalar(keys["timezone"][1], "timezone") if "timezone" in keys else "UTC"
                try:
                    ZoneInfo(zone)
                except (ZoneInfoNotFoundError, ValueError):
                    self.problem(keys["timezone"][1], f"unknown time zone {zone!r} (e.g. Europe/Moscow, UTC)")
                    continue
                windows.append(schedule.Daily(start, end, zone))
            elif "from" in keys or "until" in keys:
                if "timezone" in keys:
                    self.problem(keys["timezone"][0], "timezone applies to daily windows; timestamps carry "
                                                      "their own offset")
                ends = [self.timestamp(keys[k][1], k) if k in keys else None for k in ("from", "until")]
                if all(ends) and ends[0] >= ends[1]:
                    self.problem(item, "the window ends before it starts")
                windows.append(schedule.Span(*ends))
            else:
                self.problem(item, "a window needs from and/or until, or daily")
        return tuple(windows)

    def timestamp(self, node, what: str) -> datetime | None:
        try:
            return schedule.parse_timestamp(self.scalar(node, what) or "")
        except ValueError as error:
            self.problem(node, f"{what}: {error}")
            return None

    def steps(self, node) -> tuple[Step, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.problem(node, "escalate must be a list of steps, e.g. [{at: 2021-04-01T00:00:00Z, action: block}]")
            return ()
        steps = []
        for item in node.value:
            keys = self.mapping(item, "an escalation step", STEP_KEYS)
            if "at" not in keys or "action" not in keys:
                self.problem(item, "an escalation step needs at (a timestamp) and action")
                continue
            at = self.timestamp(keys["at"][1], "at")
            action = self.scalar(keys["action"][1], "action")
            if action not in ACTIONS:
                self.problem(keys["action"][1], f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
                continue
            if at and steps and at <= steps[-1].at:
                self.problem(keys["at"][1], "escalation steps must be in time order")
            steps.append(Step(at, action, self.action_details(item, keys, action), item.start_mark.line + 1))
        return tuple(steps)

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
        names = []
        for text, file, line, column in self.listed_file(node, "domains_file"):
            name = self.add_name(text, ABI.SLUICE_MATCH_SUFFIX, None, file, line, column)
            if name:
                names.append(name)
        return names

    # --- throttle, shape, delay -------------------------------------------
    def action_details(self, node, keys, action) -> dict:
        """The fields of Rule that only some actions use; refuses the rest."""
        uses = {"throttle": {"rate", "burst", "direction", "up", "down", "scope"},
                "shape": {"rate", "burst", "direction", "up", "down", "scope", "horizon", "fallback"},
                "delay": {"latency", "jitter", "horizon"},
                "block": {"method", "page"}}.get(action, set())
        for key in ACTION_DETAIL_KEYS:
            if key in keys and key not in uses:
                self.problem(keys[key][0], f"{key!r} does not apply to action {action}")
        details = {}
        if "scope" in keys and "scope" in uses:
            scope = self.scalar(keys["scope"][1], "scope")
            if scope not in SCOPES:
                self.problem(keys["scope"][1], f"unknown scope {scope!r}; one of: {', '.join(SCOPES)}")
            details["scope"] = scope
        if action == "block":
            details.update(self.block_method(keys))
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

    def block_method(self, keys) -> dict:
        """method (drop, reset, page) and, for page, the page's body and link."""
        method = self.scalar(keys["method"][1], "method") if "method" in keys else "drop"
        if method is None:
            return {}
        if method not in BLOCK_METHODS:
            self.problem(keys["method"][1], f"unknown block method {method!r}; one of: {', '.join(BLOCK_METHODS)}")
            return {}
        details = {"block_method": method}
        if method != "page":
            if "page" in keys:
                self.problem(keys["page"][0], "'page' applies to method: page only")
            return details
        texts = {}
        if "page" in keys:
            page_keys = self.mapping(keys["page"][1], "page", PAGE_KEYS)
            texts = {key: self.scalar(value, f"page {key}") for key, (_, value) in page_keys.items()}
            if None in texts.values():
                return details
        try:
            details["page"] = block_methods.BlockPage(texts.get("body", block_methods.DEFAULT_PAGE_BODY),
                                                      texts.get("link"))
        except ValueError as error:
            self.problem(keys["page"][1], f"page: {error}")
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
    classes = "".join(f"\n  class {c.name}: {sum(policy.classes.class_ids == c.id)} prefixes"
                      for c in policy.classes.classes)
    lines = [f"{policy.path}: valid, {len(policy.rules)} rules naming {names} domains; "
             f"flows idle for {policy.flow_idle_ns / 1e9:g} s are forgotten; "
             f"{policy.window_packets} payload packets inspected per flow{classes}"]
    for rule in policy.rules:
        what = rule.action + (" (monitor: counted, not enforced)" if rule.monitor else "")
        if rule.action == "block" and rule.block_method != "drop":
            what += f", by {rule.block_method}"
        if rule.limits:
            what += ", " + ", ".join(f"{d} {limit.rate_bps / 1000:g} kbit/s burst {limit.burst_bytes} B"
                                     for d, limit in sorted(rule.limits.items())) + f", per {rule.scope}"
        if rule.latency_ns:
            what += f", {rule.latency_ns / 1e6:g} ms" + (f" +0..{rule.jitter_ns / 1e6:g} ms" if rule.jitter_ns else "")
        who = [f"class {rule.client_class}" if rule.client_class else "",
               f"{rule.percent}% of clients" if rule.percent != 100 else "",
               "ports " + ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in rule.ports) if rule.ports else "",
               "client-opened flows" if rule.opened_by_client else "",
               "active " + "; ".join(w.describe() for w in rule.active) if rule.active else "",
               "; ".join(f"{step.action} from {step.at.isoformat()}" for step in rule.escalate)]
        who = [part for part in who if part]
        what += f" [{', '.join(who)}]" if who else ""
        lines.append(f"  {rule.id:>3} {rule.name}: {what}; {len(rule.suffixes)} suffixes, {len(rule.exact)} exact")
    return "\n".join(lines)
