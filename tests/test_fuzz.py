"""Fuzz the real XDP program against the plain Python reference parser.

Each example is one client payload: a ClientHello, an HTTP request or random
bytes, built by hypothesis and then mutated byte by byte. The payload goes
through the loaded data plane by BPF_PROG_TEST_RUN (as helpers.judge) on a
fresh flow, and three things must agree with tests/reference_parser.py: the
parser counter that moved, the name the flow was classified under (from its
classification event), and the verdict (drop iff a block rule is the most
specific rule naming that name).

The normal suite runs a bounded, derandomised set of examples. For a longer
run, set the number of examples per test:

    SLUICE_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz.py

The long run is randomised (a new seed each time; hypothesis prints the seed
and the shrunk input of any failure, and keeps it in .hypothesis/ to replay).
"""

import ctypes
import itertools
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import BOOKKEEPING, needs_root
from sluice.testrun import run_xdp
from packets import client_hello, extension, http_request, split_into_records, tcp_frame
from reference_parser import (HTTP_HOST_FOUND, HTTP_NO_HOST, TLS_NO_SNI, TLS_SNI_FOUND,
                              Outcome, classify, normalise)

pytestmark = [pytest.mark.bpf, needs_root]

BOUNDED_EXAMPLES = 600
EXAMPLES = int(os.environ.get("SLUICE_FUZZ_EXAMPLES", BOUNDED_EXAMPLES))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES == BOUNDED_EXAMPLES,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

# 253 bytes: the longest DNS name, so rules reach sluice's name limit.
LONGEST_NAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
BLOCKED_SUFFIXES = ["blocked.example", "xn--bcher-kva.example", LONGEST_NAME]
BLOCKED_EXACT = ["exact.example"]
ALLOWED_SUFFIXES = ["open.blocked.example"]        # more specific than a block rule
POLICY = f"""\
version: 1
rules:
  - name: blocked
    action: block
    domains: [{", ".join(BLOCKED_SUFFIXES)}]
    exact: [{", ".join(BLOCKED_EXACT)}]
  - name: allowed
    action: allow
    domains: [{", ".join(ALLOWED_SUFFIXES)}]
"""
# Names near the rules: below them, above them, and sharing bytes but no label boundary.
KNOWN_NAMES = [*BLOCKED_SUFFIXES, *BLOCKED_EXACT, *ALLOWED_SUFFIXES, "sub.exact.example", "example",
               "notblocked.example", "blocked.example.net", "blocked-example", "xn--bcher-kva.example.org"]

CLIENT_PORTS = itertools.cycle(range(1024, 65536))
# BPF_PROG_TEST_RUN keeps an XDP frame in one page: 4096 bytes less 256 of
# headroom and 320 of tailroom, of which 54 are headers. Longer payloads
# would be cut by the test harness, not by anything on a wire.
TEST_RUN_PAYLOAD_MAX = 4096 - 256 - 320 - 54
# Counters a classification moves besides the parser's own.
FLOW_COUNTERS = {TLS_SNI_FOUND: "flows_tls", TLS_NO_SNI: "flows_tls",
                 HTTP_HOST_FOUND: "flows_http", HTTP_NO_HOST: "flows_http"}


@pytest.fixture(scope="module")
def dp(make_datapath):
    return make_datapath(POLICY, events=True)


@pytest.fixture(scope="module")
def event_names(dp) -> list[bytes]:
    """The names of classification events, appended as the ring buffer is consumed."""
    received = []
    event_type = dp.table("event_buffers").sLeaf
    name_offset = event_type.name.offset

    def remember(_ctx, data, _size) -> None:
        # Copied here, while the ring buffer holds the event, and with
        # string_at: the field itself reads as a C string, cut at a NUL.
        event = ctypes.cast(data, ctypes.POINTER(event_type)).contents
        received.append(ctypes.string_at(ctypes.addressof(event) + name_offset, event.name_len))
    dp.table("events").open_ring_buffer(remember)
    return received


def is_blocked(name: bytes) -> bool:
    """Does the most specific rule naming name block it? An exact rule, else
    the longest suffix rule at a label boundary."""
    name = normalise(name).decode("latin-1")
    if name in BLOCKED_EXACT:
        return True
    labels = name.split(".")
    for start in range(len(labels)):
        suffix = ".".join(labels[start:])
        if suffix in ALLOWED_SUFFIXES:
            return False
        if suffix in BLOCKED_SUFFIXES:
            return True
    return False


def expected_result(payload: bytes) -> tuple[Outcome, dict[str, int], list[bytes], str]:
    """The reference's outcome, and the counters, event names and verdict it implies."""
    outcome = classify(payload)
    counters = {outcome.counter: 1, **{counter: 1 for counter in outcome.also}}
    names = []
    if outcome.counter in FLOW_COUNTERS:
        counters[FLOW_COUNTERS[outcome.counter]] = 1
        names = [normalise(outcome.name or b"")]
    verdict = "drop" if outcome.name and is_blocked(outcome.name) else "pass"
    return outcome, counters, names, verdict


def run(dp, event_names: list[bytes], payload: bytes) -> tuple[dict[str, int], list[bytes], str]:
    """The counters, event names and verdict of the real data plane, as
    helpers.judge() finds them: a SYN, then the payload, on a fresh flow.
    A long run sends more flows than there are ports; the SYN restarts a
    flow whose port comes round again."""
    port = next(CLIENT_PORTS)
    dp.consume_rings()
    event_names.clear()
    before = dp.counters()
    assert run_xdp(dp.function.fd, tcp_frame(sport=port, flags="S")).verdict == "pass"
    verdict = run_xdp(dp.function.fd, tcp_frame(payload, sport=port)).verdict
    after = dp.counters()
    dp.consume_rings()
    moved = {name: after[name] - before[name] for name in after
             if after[name] != before[name] and name not in BOOKKEEPING}
    return moved, list(event_names), verdict


def check(dp, event_names: list[bytes], payload: bytes) -> None:
    """Run payload through the data plane and compare with the reference."""
    payload = payload[:TEST_RUN_PAYLOAD_MAX]
    outcome, *wanted = expected_result(payload)
    event(outcome.counter)
    actual = run(dp, event_names, payload)
    assert actual == tuple(wanted), f"payload {payload.hex()} reference {outcome}"


# --- names ------------------------------------------------------------------

DNS_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
PUNYCODE_LABEL = st.builds("xn--{}".format, st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1,
                                                   max_size=20))


@st.composite
def server_names(draw) -> bytes:
    """Names near and far from the rules, in any case, perhaps with the root dot."""
    base = draw(st.one_of(st.sampled_from(KNOWN_NAMES),
                          st.lists(st.one_of(DNS_LABEL, PUNYCODE_LABEL), min_size=1, max_size=4).map(".".join)))
    labels = draw(st.lists(st.one_of(DNS_LABEL, PUNYCODE_LABEL), max_size=3))
    name = ".".join([*labels, base])
    if draw(st.integers(0, 9)) == 0:
        # Near sluice's 255-byte limit, and just past it: 63-byte labels in front.
        length = draw(st.sampled_from([253, 254, 255, 256]))
        name = (("x" * 63 + ".") * 4 + name)[-length:]
    if draw(st.booleans()):
        mask = draw(st.integers(0, 2 ** len(name) - 1))
        name = "".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(name))
    if draw(st.integers(0, 4)) == 0:
        name += "."
    return name.encode()


# --- byte-level mutations ------------------------------------------------------

@st.composite
def mutated(draw, payload: bytes, max_mutations: int = 3) -> bytes:
    """payload with up to max_mutations byte flips, cuts, insertions and deletions;
    as often as not none, so that the deep branches of valid inputs stay in reach."""
    data = bytearray(payload)
    for _ in range(draw(st.integers(0, 1)) * draw(st.integers(1, max_mutations))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif at == len(data):
            continue
        elif kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.integers(0, 255))
        else:
            del data[at:at + draw(st.integers(1, 8))]
    return bytes(data) or payload[:1]      # a payload packet has payload


# --- ClientHellos ----------------------------------------------------------------

class Writer:
    """Bytes with nested length-prefixed vectors, remembering where each
    length field is so that a mutation can make it lie."""

    def __init__(self):
        self.data = bytearray()
        self.length_fields: list[tuple[int, int]] = []     # (offset, width)

    def raw(self, data: bytes) -> None:
        self.data += data

    @contextmanager
    def vector(self, width: int) -> Iterator[None]:
        start = len(self.data)
        self.data += bytes(width)
        self.length_fields.append((start, width))
        yield
        self.data[start:start + width] = (len(self.data) - start - width).to_bytes(width, "big")


EXT_SERVER_NAME = 0
GREASE_TYPES = [0x0A0A + 0x1010 * i for i in range(16)]
TLS_EXTENSION_TYPES = [10, 11, 13, 16, 21, 23, 35, 43, 45, 51, 0xFE0D, *GREASE_TYPES]
PADDING_SIZES = [0, 1, 100, 512, 1600, 2100]       # the last ones push the name past the copy limit
CHANGE_CIPHER_SPEC = b"\x14\x03\x03\x00\x01\x01"


@st.composite
def extensions(draw) -> list[tuple[int, bytes]]:
    """Some extensions in any order, and seldom very many (sluice walks 64)."""
    count = draw(st.one_of(st.integers(0, 12), st.integers(60, 70)))
    types = draw(st.lists(st.one_of(st.sampled_from(TLS_EXTENSION_TYPES), st.integers(1, 0xFFFF)),
                          min_size=count, max_size=count))
    sizes = draw(st.lists(st.sampled_from(PADDING_SIZES[:4]) | st.integers(0, 40), min_size=count, max_size=count))
    return [(ext_type, bytes(size)) for ext_type, size in zip(types, sizes)]


@st.composite
def client_hellos(draw) -> bytes:
    names = draw(st.lists(server_names(), min_size=1, max_size=2))
    exts = draw(extensions())
    sni_count = draw(st.sampled_from([0, 1, 1, 1, 1, 2]))
    for _ in range(sni_count):
        exts.insert(draw(st.integers(0, len(exts))), (EXT_SERVER_NAME, b""))
    if draw(st.integers(0, 5)) == 0:
        exts.insert(draw(st.integers(0, len(exts))), (21, bytes(draw(st.sampled_from(PADDING_SIZES)))))

    hello = Writer()
    hello.raw(bytes([22, 3, draw(st.sampled_from([1, 3, 0, 4]))]))
    with hello.vector(2):                                     # record
        hello.raw(b"\x01")
        with hello.vector(3):                                 # handshake
            hello.raw(b"\x03\x03" + bytes(32))
            with hello.vector(1):
                hello.raw(bytes(draw(st.sampled_from([0, 32, 8]))))
            with hello.vector(2):
                hello.raw(b"".join(struct.pack("!H", s) for s in draw(st.lists(st.integers(0, 0xFFFF),
                                                                                 min_size=1, max_size=20))))
            with hello.vector(1):
                hello.raw(bytes(draw(st.integers(1, 3))))
            if draw(st.integers(0, 9)) > 0:                  # TLS 1.2 allows no extensions at all
                with hello.vector(2):
                    for ext_type, body in exts:
                        hello.raw(struct.pack("!H", ext_type))
                        with hello.vector(2):
                            if ext_type != EXT_SERVER_NAME:
                                hello.raw(body)
                                continue
                            with hello.vector(2):            # server_name_list
                                for name in names:
                                    hello.raw(b"\x00")
                                    with hello.vector(2):
                                        hello.raw(name)
    data = hello.data
    if draw(st.integers(0, 4)) == 0:                         # a length field that lies
        offset, width = draw(st.sampled_from(hello.length_fields))
        value = int.from_bytes(data[offset:offset + width], "big")
        value = draw(st.one_of(st.integers(value - 4, value + 4), st.integers(0, 2 ** (8 * width) - 1)))
        data[offset:offset + width] = (value % 2 ** (8 * width)).to_bytes(width, "big")
    data = bytes(data)
    if draw(st.integers(0, 9)) == 0:                         # the handshake in two records
        at = draw(st.integers(0, len(data) - 5))
        first, second = data[5:5 + at], data[5 + at:]
        data = data[:3] + struct.pack("!H", len(first)) + first + data[:3] + struct.pack("!H", len(second)) + second
    if draw(st.integers(0, 9)) == 0:
        data = CHANGE_CIPHER_SPEC * draw(st.integers(1, 5)) + data
    return draw(mutated(data))


# --- HTTP requests -----------------------------------------------------------------

METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND", "M-SEARCH", "CONNECT"]
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FIELD_NAMES = ["User-Agent", "Accept", "Accept-Encoding", "Connection", "Cookie", "X-Host", "Ghost", "Hostname",
               "X-Forwarded-Host", "Referer"]
FIELD_VALUES = DNS_LABEL | st.just("")
OWS = st.text(" \t", max_size=3) | st.text(" \t", min_size=15, max_size=18)   # sluice steps over 16


@st.composite
def host_values(draw) -> bytes:
    """A Host value or absolute-form authority: a name or an IPv6 literal, perhaps a port."""
    host = draw(server_names() | st.sampled_from([b"[2001:db8::1]", b"[::1]", b"192.0.2.7"]))
    if draw(st.booleans()):
        host += b":" + str(draw(st.integers(0, 65535))).encode()
    return host


@st.composite
def http_requests(draw) -> bytes:
    method = draw(st.sampled_from(METHODS) | st.text(TOKEN_CHARS, min_size=1, max_size=26)).encode()
    target = draw(st.sampled_from([b"/", b"*", b"/index.html?q=1"]) | st.binary(max_size=60).map(lambda b: b"/" + b.replace(b"\n", b"")))
    if draw(st.integers(0, 5)) == 0:
        userinfo = draw(st.sampled_from([b"", b"user@", b"user:pw@"]))
        target = draw(st.sampled_from([b"http://", b"https://", b"HTTP://"])) + userinfo + draw(host_values()) + b"/"
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.9", b"HTTP/2.0"]))
    newline = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    # Up to 40 fields: sluice looks for Host in the first 32 lines.
    fields = [f"{name}:{value}".encode()
              for name, value in draw(st.lists(st.tuples(st.sampled_from(FIELD_NAMES) | st.just("X"), FIELD_VALUES),
                                               max_size=draw(st.sampled_from([4, 40]))))]
    if draw(st.integers(0, 9)) > 0:
        field_name = "".join(c.upper() if draw(st.booleans()) else c for c in "host").encode()
        value = draw(host_values()) + draw(OWS).encode()
        fields.insert(draw(st.integers(0, len(fields))), field_name + b":" + draw(OWS).encode() + value)
    body = draw(st.sampled_from([b"", b"a=1", b"x" * 3000]))
    request = newline.join([method + b" " + target + b" " + version, *fields, b"", body])
    return draw(mutated(request))


# --- random bytes --------------------------------------------------------------------

PREFIXES = [b"", b"\x16\x03\x01", b"\x16\x03\x03\x00\x40\x01", CHANGE_CIPHER_SPEC, b"GET ", b"GET / HTTP/1.1\r\n"]


@st.composite
def random_payloads(draw) -> bytes:
    prefix = draw(st.sampled_from(PREFIXES))
    return prefix + draw(st.binary(min_size=0 if prefix else 1, max_size=2200))


# --- the tests -------------------------------------------------------------------------

@FUZZ
@given(payload=client_hellos())
def test_client_hellos_agree_with_the_reference(dp, event_names, payload):
    check(dp, event_names, payload)


@FUZZ
@given(payload=http_requests())
def test_http_requests_agree_with_the_reference(dp, event_names, payload):
    check(dp, event_names, payload)


@FUZZ
@given(payload=random_payloads())
def test_random_payloads_agree_with_the_reference(dp, event_names, payload):
    check(dp, event_names, payload)


# --- regression tests for the data-plane bugs the fuzzer found ----------------------

def test_absolute_form_target_names_the_request(dp, event_names):
    check_strictly(dp, event_names, b"GET http://blocked.example/ HTTP/1.1\r\nHost: open.example\r\n\r\n")


# Once known bugs, now fixed; the fuzzer found them.

@pytest.mark.parametrize("split_at", [0, 3])
def test_hello_whose_first_record_is_under_4_bytes_is_truncated(dp, event_names, split_at):
    check_strictly(dp, event_names, split_into_records(client_hello(b"blocked.example"), split_at))


def test_short_record_of_another_handshake_type_is_not_tls(dp, event_names):
    check_strictly(dp, event_names, b"\x16\x03\x01\x00\x40\x02")       # a ServerHello's first bytes


def test_change_cipher_spec_then_http_is_not_a_request(dp, event_names):
    check_strictly(dp, event_names, CHANGE_CIPHER_SPEC + http_request("blocked.example"))


def test_exactly_64_extensions_without_server_name(dp, event_names):
    check_strictly(dp, event_names, client_hello(None, grease=False,
                                            extensions_after=tuple(extension(100 + i, b"") for i in range(63))))


@pytest.mark.parametrize("count", [64, 65, 300])
@pytest.mark.parametrize("tail", ["name", "ech-and-name", "no-name", "past-the-end", "cut-header"])
def test_extensions_past_those_walked_one_by_one_agree_with_the_reference(dp, event_names, count, tail):
    """Past the 64 extensions walked one by one, the rest are skipped over
    (bpf/tls_sni.h tls_skip_extensions()): the outcomes, ECH included, as the
    reference reads them."""
    ahead = tuple(extension(100 + i, b"") for i in range(count))
    if tail == "name":
        hello = client_hello(b"blocked.example", grease=False, extensions_before=ahead)
    elif tail == "ech-and-name":
        hello = client_hello(b"blocked.example", grease=False, extensions_before=ahead + (extension(0xFE0D, b"x"),))
    elif tail == "no-name":
        hello = client_hello(None, grease=False, extensions_after=ahead)
    elif tail == "past-the-end":
        hello = client_hello(b"blocked.example", grease=False, extensions_before=ahead, extensions_len_delta=-2)
    else:
        hello = client_hello(None, grease=False, extensions_after=ahead + (b"\x00\x01",))
    check_strictly(dp, event_names, hello)


def test_24_character_method_awaits_its_space(dp, event_names):
    check_strictly(dp, event_names, b"M" * 24)


def test_short_last_field_line_then_blank_line_is_no_host(dp, event_names):
    check_strictly(dp, event_names, b"GET / HTTP/1.1\r\nX:\n\n")


def test_unterminated_host_over_255_bytes_is_no_host(dp, event_names):
    check_strictly(dp, event_names, b"GET / HTTP/1.1\r\nHost: " + b"a" * 256)


def check_strictly(dp, event_names: list[bytes], payload: bytes) -> None:
    """check() of one payload, in a test of its own (not hypothesis's: no event())."""
    outcome, *wanted = expected_result(payload)
    assert run(dp, event_names, payload) == tuple(wanted), f"reference {outcome}"
