"""Circumvention tools' cuts of the client's first bytes, in the real program.

zapret, GoodbyeDPI, ByeDPI and SpoofDPI split the ClientHello or the HTTP
request where a middlebox that reads segments one by one, or holds one gap
only, loses the name: after byte 1 or 2 (shorter than a TLS record header),
into many pieces, later pieces first, pieces that overlap or begin before the
stream. The server's TCP puts them together; so must sluice.
"""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import needs_root
from controller.testrun import run_xdp
from packets import client_hello, http_request, tcp_frame
from test_bpf_reassembly import ISN, browser_hello

pytestmark = [pytest.mark.bpf, needs_root]

POLICY = "version: 1\nrules:\n  - {name: blocked, action: block, domains: [blocked.example]}\n"
HELLOS = {"0.5KB": client_hello(b"blocked.example", extensions_after=(b"\x00\x15\x01\x90" + bytes(400),)),
          "1.8KB": browser_hello(b"blocked.example")}


class Flow:
    """One client connection over IPv4 or IPv6, sent piece by piece."""
    ports = iter(range(41000, 42000))

    def __init__(self, dp, v6: bool, dport: int = 443):
        self.dp, self.v6, self.dport, self.port = dp, v6, dport, next(self.ports)
        assert self.send_raw(b"", seq=ISN, flags="S") == "pass"

    def send_raw(self, payload: bytes, seq: int, flags="PA") -> str:
        frame = tcp_frame(payload, sport=self.port, dport=self.dport, seq=seq, flags=flags, v6=self.v6)
        return run_xdp(self.dp.function.fd, frame).verdict

    def send(self, pieces) -> list[str]:
        """pieces: (offset from the stream's start, bytes), in sending order."""
        return [self.send_raw(payload, seq=(ISN + 1 + offset) % 2**32) for offset, payload in pieces]


def cut(stream: bytes, *at: int) -> list[tuple[int, bytes]]:
    edges = [0, *at, len(stream)]
    return [(a, stream[a:b]) for a, b in zip(edges, edges[1:])]


@pytest.fixture(scope="module")
def dp(make_datapath):
    return make_datapath(POLICY)


FAMILIES = pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
SIZES = pytest.mark.parametrize("hello", list(HELLOS.values()), ids=list(HELLOS))


@FAMILIES
@SIZES
@pytest.mark.parametrize("split_at", [1, 2, 3, 4])
def test_a_first_piece_shorter_than_the_record_header(dp, v6, hello, split_at):
    assert Flow(dp, v6).send(cut(hello, split_at))[-1] == "drop"


@FAMILIES
@SIZES
@pytest.mark.parametrize("pieces", [3, 6])
@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled"])
def test_multisplit_in_any_order(dp, v6, hello, pieces, order):
    at = sorted(random.Random(pieces).sample(range(1, len(hello)), pieces - 1))
    parts = cut(hello, *at)
    if order == "reversed":
        parts = parts[::-1]
    elif order == "shuffled":
        random.Random(7).shuffle(parts)
    verdicts = Flow(dp, v6).send(parts)
    assert verdicts[-1] == "drop", verdicts


@FAMILIES
def test_single_byte_pieces_shuffled(dp, v6):
    """Within the window (20 packets): the first 9 bytes one by one, the rest in 8 pieces."""
    hello = HELLOS["0.5KB"]
    parts = cut(hello, *range(1, 10), *range(60, len(hello), 60))
    assert len(parts) < 20
    random.Random(3).shuffle(parts)
    assert Flow(dp, v6).send(parts)[-1] == "drop"


@FAMILIES
def test_seqovl_a_first_piece_that_begins_before_the_stream(dp, v6):
    """ByeDPI's seqovl: junk bytes at sequence numbers before the stream's
    start; the server trims them."""
    hello = HELLOS["1.8KB"]
    junk = b"\x16\x03\x01\x00\x10" + bytes(11)
    verdicts = Flow(dp, v6).send([(-len(junk), junk + hello[:2]), (2, hello[2:])])
    assert verdicts[-1] == "drop"


@FAMILIES
def test_overlapping_pieces_the_delivered_copy_stands(dp, v6):
    """Bytes the server already took in order are not replaced by a later,
    overlapping segment that says otherwise."""
    hello = HELLOS["1.8KB"]
    fake = hello[:100] + hello[100:300].replace(b"blocked", b"allowed")
    verdicts = Flow(dp, v6).send([(0, hello[:300]), (100, fake[100:300] + hello[300:900]), (900, hello[900:])])
    assert verdicts[-1] == "drop"


REQUEST = http_request("blocked.example", before=("User-Agent: curl/8", "Accept: */*"))


@FAMILIES
@pytest.mark.parametrize("where", ["in-host-field", "in-host-value", "before-host", "after-host-line",
                                   "in-request-line"])
@pytest.mark.parametrize("order", ["in-order", "reversed"])
def test_http_request_cut_around_the_host_line(dp, v6, where, order):
    host = REQUEST.index(b"Host")
    at = {"in-host-field": host + 2, "in-host-value": host + 9, "before-host": host - 1,
          "after-host-line": REQUEST.index(b"\r\n", host) + 2, "in-request-line": 5}[where]
    parts = cut(REQUEST, at)
    if order == "reversed":
        parts = parts[::-1]
    assert "drop" in Flow(dp, v6, dport=80).send(parts)


@FAMILIES
def test_http_request_in_five_pieces_shuffled(dp, v6):
    parts = cut(REQUEST, 3, 20, 40, REQUEST.index(b"Host") + 7)
    random.Random(1).shuffle(parts)
    assert "drop" in Flow(dp, v6, dport=80).send(parts)


@FAMILIES
def test_host_after_2_kb_of_headers(dp, v6):
    request = http_request("blocked.example", before=tuple(f"X-Pad-{i}: {'a' * 60}" for i in range(34)))
    assert request.index(b"Host") > 2048
    assert "drop" in Flow(dp, v6, dport=80).send(cut(request, 1400))


@FAMILIES
def test_empty_lines_before_the_request_line(dp, v6):
    assert Flow(dp, v6, dport=80).send([(0, b"\r\n\r\n" + REQUEST)]) == ["drop"]
    assert "drop" in Flow(dp, v6, dport=80).send(cut(b"\r\n" + REQUEST, 1))


def test_without_reassembly_the_2021_middlebox_is_fooled(make_datapath):
    blind = make_datapath(POLICY.replace("rules:", "inspection: {reassemble: false}\nrules:"))
    assert Flow(blind, False).send(cut(HELLOS["0.5KB"], 1)) == ["pass", "pass"]


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_partition_in_any_order_is_named(dp, data):
    """Any cut of a hello into up to 12 pieces (within the 20-packet window),
    sent in any order, over either family, names the flow."""
    hello = data.draw(st.sampled_from(list(HELLOS.values())))
    at = data.draw(st.lists(st.integers(1, len(hello) - 1), max_size=11, unique=True))
    parts = data.draw(st.permutations(cut(hello, *sorted(at))))
    verdicts = Flow(dp, data.draw(st.booleans())).send(parts)
    assert "drop" in verdicts, verdicts
