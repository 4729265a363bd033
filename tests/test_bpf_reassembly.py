"""ClientHellos split across TCP segments and TLS records, in the real program.

Modern browsers' hellos take two segments, circumvention tools split them on
purpose, and segments overtake each other: sluice must see the name in every
case, and, with `inspection: {reassemble: false}`, reproduce on purpose the
blind spot of a middlebox that reads each segment alone.
"""

import random
import struct

import pytest

from helpers import needs_root
from sluice.testrun import run_xdp
from packets import client_hello, extension, tcp_frame, unknown_extensions

pytestmark = [pytest.mark.bpf, needs_root]

POLICY = "version: 1\n{inspection}rules:\n  - {{name: blocked, action: block, domains: [blocked.example]}}\n"
ISN = 1_000_000
EXT_KEY_SHARE, EXT_PADDING = 51, 21
X25519MLKEM768 = 0x11EC


def browser_hello(name: bytes, *, sni_last: bool = True, padding: int = 450) -> bytes:
    """A ClientHello the size of a post-quantum browser's (~1.8 KB): an
    X25519MLKEM768 key share (1216 bytes) and padding before the name, as Chrome's
    shuffled order has it about half the time."""
    share = struct.pack("!HH", X25519MLKEM768, 1216) + bytes(1216)
    before = [extension(EXT_KEY_SHARE, struct.pack("!H", len(share)) + share)]
    if padding:
        before.append(extension(EXT_PADDING, bytes(padding)))
    if sni_last:
        return client_hello(name, extensions_before=tuple(before))
    return client_hello(name, extensions_after=tuple(before))


def records(hello: bytes, size: int) -> bytes:
    """The handshake of `hello` re-cut into TLS records of `size` bytes."""
    handshake, header = hello[5:], hello[:3]
    return b"".join(header + struct.pack("!H", len(handshake[i:i + size])) + handshake[i:i + size]
                    for i in range(0, len(handshake), size))


def segments(stream: bytes, size: int) -> list[tuple[int, bytes]]:
    """(offset, bytes) of each segment of `size` bytes."""
    return [(i, stream[i:i + size]) for i in range(0, len(stream), size)]


class Flow:
    """One client connection, sent segment by segment."""
    ports = iter(range(33000, 34000))

    def __init__(self, dp, syn: bool = True):
        self.dp, self.port = dp, next(self.ports)
        if syn:
            assert self.send_raw(b"", seq=ISN, flags="S") == "pass"

    def send_raw(self, payload: bytes, seq: int, flags="PA") -> str:
        return run_xdp(self.dp.function.fd, tcp_frame(payload, sport=self.port, seq=seq, flags=flags)).verdict

    def send(self, offset: int, payload: bytes) -> str:
        return self.send_raw(payload, seq=ISN + 1 + offset)

    def send_all(self, parts) -> list[str]:
        return [self.send(offset, payload) for offset, payload in parts]


@pytest.fixture(scope="module")
def dp(make_datapath):
    return make_datapath(POLICY.format(inspection=""))


def test_a_browser_sized_hello_in_two_segments_is_blocked_at_the_second(dp):
    before = dp.counters()
    verdicts = Flow(dp).send_all(segments(browser_hello(b"blocked.example"), 1400))
    assert verdicts == ["pass", "drop"]
    after = dp.counters()
    assert after["tls_reassembled"] - before["tls_reassembled"] == 1
    assert after["tls_sni_found"] - before["tls_sni_found"] == 1


def test_name_in_the_first_segment_needs_no_reassembly(dp):
    verdicts = Flow(dp).send_all(segments(browser_hello(b"blocked.example", sni_last=False), 1400))
    assert verdicts[0] == "drop"


def test_an_unnamed_split_hello_passes_and_is_classified(dp):
    before = dp.counters()
    assert Flow(dp).send_all(segments(browser_hello(b"open.example"), 1400)) == ["pass", "pass"]
    assert dp.counters()["flows_tls"] - before["flows_tls"] == 1


@pytest.mark.parametrize("order", ["reversed", "shuffled", "retransmitted"])
def test_segments_out_of_order_or_twice(dp, order):
    parts = segments(browser_hello(b"blocked.example", padding=600), 700)
    assert len(parts) >= 3
    if order == "reversed":
        parts = parts[::-1]
    elif order == "shuffled":
        random.Random(5).shuffle(parts)
    else:
        parts = [parts[0], parts[0], parts[1], parts[0], *parts[1:]]
    verdicts = Flow(dp).send_all(parts)
    assert "drop" in verdicts and verdicts[-1] == "drop"


@pytest.mark.parametrize("record_size", [1, 2, 16, 37, 500])
def test_hello_cut_into_records_across_segments(dp, record_size):
    """A server reads a handshake cut into records of any size (RFC 8446
    5.1), down to one byte each: a 1.8 KB hello in 1-byte records is 1,833
    records, 11 KB of stream, walked in passes of TLS_RECORDS_PER_PASS."""
    stream = records(browser_hello(b"blocked.example"), record_size)
    before = dp.counters()
    verdicts = Flow(dp).send_all(segments(stream, 1400))
    assert verdicts[-1] == "drop", verdicts
    assert dp.counters()["stage_missed"] == before["stage_missed"]


def test_the_name_behind_a_thousand_extensions_across_segments(dp):
    """4 KB of empty extensions ahead of the name, put back together from three segments."""
    hello = client_hello(b"blocked.example",
                         extensions_before=unknown_extensions(1000))
    verdicts = Flow(dp).send_all(segments(hello, 1400))
    assert verdicts[-1] == "drop", verdicts


def test_a_hello_with_more_extensions_than_are_skipped_is_not_judged(dp):
    """The bound: 64 walked one by one and TLS_EXTENSIONS_SKIPPED_MAX skipped.
    Past it the hello waits, as one cut short does, and names nothing."""
    hello = client_hello(b"blocked.example",
                         extensions_before=unknown_extensions(64 + 1024))
    before = dp.counters()
    assert "drop" not in Flow(dp).send_all(segments(hello, 1400))
    assert dp.counters()["tls_reassembled"] == before["tls_reassembled"]


def test_the_most_records_the_stream_holds(dp):
    """A hello of 2.7 KB in 1-byte records fills the stream's 16 KB: 2,731 records, every pass within the
    tail-call limit."""
    hello = browser_hello(b"blocked.example", padding=1_360)
    stream = records(hello, 1)
    assert 16_000 < len(stream) <= 16_384
    before = dp.counters()
    verdicts = Flow(dp).send_all(segments(stream, 1400))
    assert verdicts[-1] == "drop", verdicts
    assert dp.counters()["stage_missed"] == before["stage_missed"]


def test_change_cipher_spec_and_junk_segments_before_the_hello(dp):
    ccs = b"\x14\x03\x03\x00\x01\x01"
    flow = Flow(dp)
    assert flow.send(0, ccs) == "pass"
    hello = browser_hello(b"blocked.example")
    assert flow.send_all([(len(ccs), hello[:1000]), (len(ccs) + 1000, hello[1000:])]) == ["pass", "drop"]
    flow = Flow(dp)
    junk = b"\x00junk before the hello\r\n"
    assert flow.send(0, junk) == "pass"
    assert flow.send_all([(len(junk), hello[:900]), (len(junk) + 900, hello[900:])]) == ["pass", "drop"]


def test_a_16_kb_hello_with_the_name_at_its_end(dp):
    hello = browser_hello(b"blocked.example", padding=14_000)
    assert 15_000 < len(hello) < 16_300
    verdicts = Flow(dp).send_all(segments(hello, 1400))
    assert verdicts[-1] == "drop" and set(verdicts[:-1]) == {"pass"}


def test_without_a_syn_the_first_segment_starts_the_stream(dp):
    hello = browser_hello(b"blocked.example")
    flow = Flow(dp, syn=False)
    assert flow.send_all([(0, hello[:1400]), (1400, hello[1400:])]) == ["pass", "drop"]


def test_reassemble_false_reproduces_a_one_segment_middlebox(make_datapath):
    blind = make_datapath(POLICY.format(inspection="inspection: {reassemble: false}\n"))
    hello = browser_hello(b"blocked.example")
    assert Flow(blind).send_all(segments(hello, 1400)) == ["pass", "pass"]
    assert Flow(blind).send_all([(0, hello)]) == ["drop"], "a whole hello is still read"


def test_a_hello_in_the_syn_itself_tcp_fast_open(dp):
    flow = Flow(dp, syn=False)
    assert flow.send_raw(client_hello(b"blocked.example"), seq=ISN, flags="S") == "drop"
    flow = Flow(dp, syn=False)
    hello = browser_hello(b"blocked.example")
    assert flow.send_raw(hello[:1000], seq=ISN, flags="S") == "pass"
    assert flow.send(1000, hello[1000:]) == "drop"
