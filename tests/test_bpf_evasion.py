"""Circumvention tools' cuts and decoys of the client's first bytes, in the real program.

zapret, GoodbyeDPI, ByeDPI and SpoofDPI split the ClientHello or the HTTP
request where a middlebox that reads segments one by one, or holds one gap
only, loses the name: after byte 1 or 2 (shorter than a TLS record header),
into many pieces, later pieces first, pieces that overlap or begin before the
stream. The server's TCP puts them together; so must sluice.

They also send decoys: a fake hello at the same sequence numbers, made so
that the server drops it (a wrong checksum, an MD5 or TCP-AO option, no ACK,
an old timestamp, sequence numbers outside the window, an ACK number for
bytes the server never sent or before its first, a misplaced IPv6
Hop-by-Hop header, a TTL that expires on the way), or put in the SYN, whose
data a server without a Fast Open cookie drops. Only the bytes the server
keeps name the flow (inspection.on_evasion: judge), a flow caught at it can
be blocked (block), or every copy read, as the 2021 throttler did (ignore).
"""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import HBHOptUnknown, Pad1, PadN, RouterAlert

from helpers import needs_root
from sluice.testrun import run_xdp
from packets import (IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, client_hello,
                     http_request, tcp_frame)
from test_bpf_reassembly import ISN, browser_hello

pytestmark = [pytest.mark.bpf, needs_root]

POLICY = "version: 1\nrules:\n  - {name: blocked, action: block, domains: [blocked.example]}\n"


def padded_hello(name: bytes) -> bytes:
    return client_hello(name, extensions_after=(b"\x00\x15\x01\x90" + bytes(400),))


HELLOS = {"0.5KB": padded_hello(b"blocked.example"), "1.8KB": browser_hello(b"blocked.example")}
# What the client sends (to port 443 or 80), and its decoy, of the same length.
STREAMS = {"0.5KB": (HELLOS["0.5KB"], padded_hello(b"allowed.example"), 443),
           "1.8KB": (HELLOS["1.8KB"], browser_hello(b"allowed.example"), 443),
           "http": (http_request("blocked.example"), http_request("allowed.example"), 80)}
SYN_TSVAL = 1000
SERVER_ISN = 3_000_000_000      # its SYN-ACK's: the client's ACK numbers start past it
# How each decoy is made so that the server drops it (tcp_frame's options),
# by the kind of sluice_evasion_detected_total that counts it.
DECOYS = {"bad_checksum": dict(chksum=0xBEEF),
          "bad_ip_checksum": dict(ip_chksum=0xBEEF),                         # Geneva's tamper{IP:chksum:corrupt}
          "truncated": dict(ip_len_extra=100),                   # an IP length past the frame (IPBadTotalLength)
          "tcp_auth_option": dict(tcp_options=[(19, bytes(16))]),          # MD5 signature, RFC 2385
          "tcp_ao": dict(tcp_options=[(29, bytes(14))]),                     # TCP-AO, RFC 5925
          "no_ack": dict(flags="P"),
          "rst": dict(flags="RPA"),                                          # RST with data: reset or dropped
          "paws": dict(tcp_options=[("Timestamp", (SYN_TSVAL - 500, 0))]),
          "out_of_window": dict(seq_shift=-10000),                           # zapret's badseq
          "bad_ack": dict(ack_shift=-66000),             # zapret's badseq, increment 0: ACK before the server's ISN
          "future_ack": dict(ack_shift=2**30),           # Geneva's tamper{TCP:ack:corrupt}: bytes never sent
          "hop_by_hop": dict(ext_headers=(IPv6ExtHdrDestOpt(), IPv6ExtHdrHopByHop())),
          # An option the server does not know, whose type says: discard the packet (RFC 8200 4.2).
          "ipv6_option": dict(ext_headers=(IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x9E, optdata=bytes(4))]),)),
          "ipv6_padding": dict(ext_headers=(IPv6ExtHdrDestOpt(options=[PadN(optdata=bytes(6))]),)),  # 14 bytes of it
          "ipv6_routing": dict(ext_headers=(IPv6ExtHdrRouting(type=0, segleft=1, addresses=["2001:db8::9"]),)),
          "ip_version": dict(ip_version=5),                         # INTANG's wrong IP version
          "source_route": dict(ip_options=b"\x83\x07\x04\xc0\x00\x02\x63"),        # hosts refuse it (LSRR)
          "ip_option_malformed": dict(ip_options=b"\x07\x07\x02" + bytes(4)),      # record route, pointer 2
          "low_ttl": dict(ttl=3)}
COUNTED_AS = {"tcp_ao": "tcp_auth_option", "future_ack": "bad_ack", "bad_ip_checksum": "bad_checksum",
              "ipv6_option": "ipv6_extension", "ipv6_padding": "ipv6_extension", "ipv6_routing": "ipv6_extension",
              "ip_version": "ip_header", "source_route": "ip_header", "ip_option_malformed": "ip_header"}
IPV6_ONLY = {"hop_by_hop", "ipv6_option", "ipv6_padding", "ipv6_routing"}
IPV4_ONLY = {"bad_ip_checksum", "source_route", "ip_option_malformed"}
DECOY_CASES = [(kind, v6) for kind in DECOYS for v6 in (False, True)
               if kind not in (IPV4_ONLY if v6 else IPV6_ONLY)]
DECOY_IDS = [f"{kind}-{'ipv6' if v6 else 'ipv4'}" for kind, v6 in DECOY_CASES]


class Flow:
    """One client connection over IPv4 or IPv6, sent piece by piece, its
    segments carrying timestamps as Linux's do. The server answers its SYN
    (syn_ack=False: its answers take another path, unseen), and the
    client's segments acknowledge what the server sent."""
    ports = iter(range(41000, 43000))

    def __init__(self, dp, v6: bool, dport: int = 443, syn_payload: bytes | None = None, syn_ack: bool = True,
                 syn_options: dict | None = None):
        self.dp, self.v6, self.dport, self.port = dp, v6, dport, next(self.ports)
        self.server_next = (SERVER_ISN + 1) % 2**32
        self.syn_verdict = self.send_raw(syn_payload or b"", seq=ISN, flags="S", **(syn_options or {}))
        assert syn_payload is not None or self.syn_verdict == "pass"
        if syn_ack and self.syn_verdict == "pass":      # a SYN dropped gets no answer
            assert self.reply(b"", seq=SERVER_ISN, flags="SA") == "pass"

    def send_raw(self, payload: bytes, seq: int, flags="PA", **options) -> str:
        options.setdefault("tcp_options", [("Timestamp", (SYN_TSVAL + (0 if "S" in flags else 1), 0))])
        options.setdefault("ack", self.server_next if "A" in flags else 0)
        frame = tcp_frame(payload, sport=self.port, dport=self.dport, seq=seq, flags=flags, v6=self.v6, **options)
        return self.run(frame, from_server=False)

    def reply(self, payload: bytes, seq: int | None = None, flags="PA", **options) -> str:
        """A segment of the server's (by default its next bytes, which the client then acknowledges)."""
        if seq is None:
            seq, self.server_next = self.server_next, (self.server_next + len(payload)) % 2**32
        frame = tcp_frame(payload, sport=self.port, dport=self.dport, seq=seq, flags=flags, v6=self.v6, reply=True,
                          **{"ack": (ISN + 1) % 2**32, **options})
        return self.run(frame, from_server=True)

    def run(self, frame: bytes, from_server: bool) -> str:
        """The verdict on one of the flow's frames: at XDP, all on one
        interface here; where each comes in is a subclass's to say."""
        return run_xdp(self.dp.function.fd, frame).verdict

    def send(self, pieces) -> list[str]:
        """pieces: (offset from the stream's start, bytes), in sending order."""
        return [self.send_raw(payload, seq=(ISN + 1 + offset) % 2**32) for offset, payload in pieces]

    def send_decoy(self, kind: str, offset: int, payload: bytes) -> str:
        options = dict(DECOYS[kind])
        offset += options.pop("seq_shift", 0)
        if "ack_shift" in options:
            options["ack"] = (self.server_next + options.pop("ack_shift")) % 2**32
        return self.send_raw(payload, seq=(ISN + 1 + offset) % 2**32, **options)


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


# Extension headers a server keeps a segment behind: options it may skip
# (their type's two high bits 00), padding of up to 7 bytes, a Router Alert,
# a routing header with no segments left, an atomic fragment (RFC 6946).
KEPT_EXTENSIONS = {
    "skippable_option": (IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1E, optdata=bytes(60))]),),
    "most_padding": (IPv6ExtHdrHopByHop(options=[PadN(optdata=bytes(5)), HBHOptUnknown(otype=0x1E, optdata=bytes(6)),
                                                 PadN(optdata=bytes(5))]),),
    "eight_options": (IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1E, optdata=b"")] * 8),),
    "router_alert": (IPv6ExtHdrHopByHop(options=[RouterAlert()]),),
    "spent_routing": (IPv6ExtHdrRouting(type=0, segleft=0, addresses=["2001:db8::9"]), IPv6ExtHdrDestOpt()),
    "atomic_fragment": (IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(offset=0, m=0)),
}
# ...and each a receiver drops (Linux: ip6_parse_tlv(), ipv6_rthdr_rcv()).
REFUSED_EXTENSIONS = {
    "nine_options": (IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1E, optdata=b"")] * 9),),
    "eight_pad1": (IPv6ExtHdrDestOpt(options=[PadN(optdata=bytes(2)), HBHOptUnknown(otype=0x1E, optdata=b""),
                                              Pad1()] + [Pad1()] * 7 + [HBHOptUnknown(otype=0x1E, optdata=b"")]),),
    "padding_not_zeros": (IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x01\x00\x00")]),),
    "discard_option_last": (IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1E, optdata=bytes(60)),
                                                       HBHOptUnknown(otype=0xDE, optdata=bytes(2))]),),
    "option_past_the_header": (IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1E, optlen=12, optdata=bytes(4))],
                                                 autopad=0),),
    "router_alert_of_another_length": (IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=5, optdata=bytes(4))]),),
    "segment_routing": (IPv6ExtHdrRouting(type=4, segleft=0, addresses=["2001:db8::9"]),),
    "in_a_second_options_header": (IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(type=0, segleft=0, addresses=[]),
                                   IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x9E, optdata=bytes(4))])),
}


# IPv4 options (as sent) a host keeps a segment with (Linux:
# ip_options_compile()), and options it drops the segment for.
KEPT_IPV4_OPTIONS = {
    "router_alert": b"\x01\x94\x04\x00\x00",
    "record_route_with_room": b"\x07\x0b\x04" + bytes(8),
    "record_route_full": b"\x07\x0b\x0c" + bytes(8),
    "timestamp": b"\x44\x0c\x05\x00" + bytes(8),
    "timestamp_full": b"\x44\x0c\x0d\x10" + bytes(8),
    "security": b"\x82\x0b" + bytes(9),
    "after_the_end": b"\x00\x89\x01",                     # past End of Options: not read
}
REFUSED_IPV4_OPTIONS = {
    "loose_route": b"\x83\x07\x04\xc0\x00\x02\x63",
    "strict_route": b"\x89\x07\x04\xc0\x00\x02\x63",
    "cipso": b"\x86\x0a\x00\x00\x00\x03\x01\x04\x00\x00",
    "length_one": b"\x07\x01",
    "past_the_header": b"\x44\x20\x05\x00",
    "record_route_pointer_before_its_data": b"\x07\x07\x02" + bytes(4),
    "record_route_twice": b"\x07\x07\x04" + bytes(4) + b"\x07\x07\x04" + bytes(4),
    "timestamp_overflowed": b"\x44\x04\x05\xf0",
    "timestamp_without_room": b"\x44\x06\x05\x01\x00\x00",
    "router_alert_short": b"\x94\x02",
}


@pytest.mark.parametrize("options,refused",
                         [(options, False) for options in KEPT_IPV4_OPTIONS.values()] +
                         [(options, True) for options in REFUSED_IPV4_OPTIONS.values()],
                         ids=[f"kept-{name}" for name in KEPT_IPV4_OPTIONS] +
                             [f"refused-{name}" for name in REFUSED_IPV4_OPTIONS])
def test_ipv4_options_are_read_as_the_server_reads_them(dp, options, refused):
    """A decoy with IPv4 options the server refuses names nothing; the real
    hello with options it keeps is read."""
    real, fake, _port = STREAMS["0.5KB"]
    flow = Flow(dp, v6=False)
    before = evasions(dp)
    assert flow.send_raw(fake if refused else real, seq=ISN + 1, ip_options=options) == ("pass" if refused else "drop")
    if refused:
        assert moved(before, evasions(dp)) == {"ip_header": 1}
        assert flow.send([(0, real)]) == ["drop"]
    else:
        assert moved(before, evasions(dp)) == {}


@pytest.mark.parametrize("headers,refused",
                         [(headers, False) for headers in KEPT_EXTENSIONS.values()] +
                         [(headers, True) for headers in REFUSED_EXTENSIONS.values()],
                         ids=[f"kept-{name}" for name in KEPT_EXTENSIONS] +
                             [f"refused-{name}" for name in REFUSED_EXTENSIONS])
@pytest.mark.parametrize("vlans", [(), ("ad", "q")], ids=["untagged", "qinq"])
def test_ipv6_extension_headers_are_read_as_the_server_reads_them(dp, headers, refused, vlans):
    """A decoy behind extension headers the server refuses names nothing;
    the real hello behind headers it keeps is read. Behind VLAN tags too
    (receiver_ipv6_header_at() finds the IPv6 header past them)."""
    real, fake, _port = STREAMS["0.5KB"]
    flow = Flow(dp, v6=True)
    before = evasions(dp)
    assert flow.send_raw(fake if refused else real, seq=ISN + 1, ext_headers=headers,
                         vlans=vlans) == ("pass" if refused else "drop")
    if refused:
        assert moved(before, evasions(dp)) == {"ipv6_extension": 1}
        assert flow.send([(0, real)]) == ["drop"]
    else:
        assert moved(before, evasions(dp)) == {}


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
@pytest.mark.parametrize("stream,size", [("1.8KB", 64), ("1.8KB", 16), ("1.8KB", 1), ("0.5KB", 1), ("http", 1)],
                         ids=["1.8KB-wssize-1:6", "1.8KB-16B", "1.8KB-1B", "0.5KB-1B", "http-1B"])
def test_a_hello_in_more_segments_than_the_window_is_named(dp, v6, stream, size):
    """zapret's --wssize 1:6 shrinks the window the server offers, so the
    client's TCP sends a browser's hello in 64-byte segments: 29 of them,
    more than the window's 20 packets, and the server reads it whole. Each
    brings bytes the stream lacked, and none spends the window."""
    real, _decoy, dport = STREAMS[stream]
    parts = cut(real, *range(size, len(real), size))
    assert len(parts) > 20
    verdicts = Flow(dp, v6, dport).send(parts)
    assert verdicts[-1] == "drop" and "pass" in verdicts


@FAMILIES
def test_copies_that_bring_nothing_new_spend_the_window(dp, v6):
    """What adds no byte to the stream (the same piece again and again)
    still counts: after the window, the flow is given up and its real
    hello is not read."""
    real = HELLOS["1.8KB"]
    first, rest = cut(real, 10)
    flow = Flow(dp, v6)
    gave_up = dp.counters()["gave_up"]
    assert flow.send([first] * 25) == ["pass"] * 25
    assert dp.counters()["gave_up"] == gave_up + 1
    assert flow.send([rest]) == ["pass"]


@FAMILIES
def test_bytes_that_can_begin_no_hello_spend_the_window(dp, v6):
    """New bytes count too where the stream cannot hold a hello or request
    (no record, no method's first letter): junk is given up after the window."""
    flow = Flow(dp, v6, dport=80)
    gave_up = dp.counters()["gave_up"]
    junk = cut(b"x" * 2500, *range(100, 2500, 100))
    assert flow.send(junk) == ["pass"] * 25
    assert dp.counters()["gave_up"] == gave_up + 1


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
@pytest.mark.parametrize("pad", [4096, 8000, 14000])
def test_host_after_kilobytes_of_one_padding_header(dp, v6, pad):
    """tpws's --hostpad: one header of pad bytes before Host (nginx takes a
    line of up to 8 KB, Apache 8190 bytes); the stream is scanned in passes
    to its end."""
    request = http_request("blocked.example", before=(f"X-Pad: {'a' * pad}",))
    before = dp.counters()
    assert "drop" in Flow(dp, v6, dport=80).send(cut(request, *range(1400, len(request), 1400)))
    assert dp.counters()["stage_missed"] == before["stage_missed"], "every pass within the tail-call limit"


@FAMILIES
@pytest.mark.parametrize("lines", [40, 200])
def test_host_after_more_header_lines_than_a_packet_is_looked_through_for(dp, v6, lines):
    """Short header lines before Host, more than the one-packet path reads
    (HTTP_LINES_MAX): in one segment, the stream's scan reads on."""
    request = http_request("blocked.example", before=tuple(f"X-{i}: a" for i in range(lines)))
    assert "drop" in Flow(dp, v6, dport=80).send(cut(request, *range(1400, len(request), 1400)))


@FAMILIES
def test_a_request_without_host_after_kilobytes_of_headers_is_read_to_its_end(dp, v6):
    """The scan's passes reach the blank line: the request has no Host, and says so at once."""
    request = http_request("blocked.example", before=(f"X-Pad: {'a' * 6000}",)).replace(b"Host:", b"Hast:")
    before = dp.counters()
    assert "drop" not in Flow(dp, v6, dport=80).send(cut(request, *range(1400, len(request), 1400)))
    after = dp.counters()
    assert after["http_no_host"] - before["http_no_host"] == 1 and after["gave_up"] == before["gave_up"]


# What servers step over that a parser with fixed bounds may not: any
# amount of whitespace before the Host value (nginx, Apache, Go's net/http),
# and spaces after the request line's version (nginx). Each is in one
# segment, or cut every 1400 bytes, so both the one-packet path and the
# stream's scan read it.
WHITESPACE_REQUESTS = {
    "17-spaces-before-host-value": REQUEST.replace(b"Host: ", b"Host:" + b" " * 17),
    "600-tabs-and-spaces-before-host-value": REQUEST.replace(b"Host: ", b"Host:" + b" \t" * 300),
    "5000-spaces-before-host-value": REQUEST.replace(b"Host: ", b"Host:" + b" " * 5000),
    "1-space-after-version": REQUEST.replace(b"HTTP/1.1\r\n", b"HTTP/1.1 \r\n", 1),
    "100-spaces-after-version-bare-lf": REQUEST.replace(b"HTTP/1.1\r\n", b"HTTP/1.1" + b" " * 100 + b"\n", 1),
    "3000-spaces-after-version": REQUEST.replace(b"HTTP/1.1\r\n", b"HTTP/1.1" + b" " * 3000 + b"\r\n", 1),
    "both": REQUEST.replace(b"HTTP/1.1\r\n", b"HTTP/1.1" + b" " * 40 + b"\r\n", 1).replace(b"Host: ", b"Host:" + b" " * 40),
}


@FAMILIES
@pytest.mark.parametrize("request_bytes", WHITESPACE_REQUESTS.values(), ids=WHITESPACE_REQUESTS.keys())
def test_whitespace_servers_step_over_hides_nothing(dp, v6, request_bytes):
    before = dp.counters()
    assert "drop" in Flow(dp, v6, dport=80).send(cut(request_bytes, *range(1400, len(request_bytes), 1400)))
    assert dp.counters()["stage_missed"] == before["stage_missed"]


@FAMILIES
@pytest.mark.parametrize("request_bytes", [
    REQUEST.replace(b"HTTP/1.1\r\n", b"HTTP/1.1 x\r\n", 1),
    REQUEST.replace(b"HTTP/1.1\r\n", b"HTTP/1.1 \r\n", 1).replace(b"GET", b"G\x01T"),
    REQUEST.replace(b"Host: blocked.example", b"Host:" + b" " * 40 + b"\r\n"),
], ids=["junk-after-version", "not-a-method", "host-value-empty-after-spaces"])
def test_what_servers_refuse_stays_unnamed_with_whitespace(dp, v6, request_bytes):
    """Spaces after the version, or before a Host value, do not make a
    request of what servers refuse (nginx answers these 400)."""
    assert "drop" not in Flow(dp, v6, dport=80).send([(0, request_bytes)])


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
    sent in any order, over either family, with or without an urgent byte
    inside the name (marked by the piece that carries it), names the flow."""
    hello = data.draw(st.sampled_from(list(HELLOS.values())))
    urgent_at = None
    if data.draw(st.booleans()):
        hello, urgent_at = with_urgent_byte(hello)
    at = data.draw(st.lists(st.integers(1, len(hello) - 1), max_size=11, unique=True))
    parts = data.draw(st.permutations(cut(hello, *sorted(at))))
    flow = Flow(dp, data.draw(st.booleans()))
    def send(offset, piece):
        if urgent_at is not None and offset <= urgent_at < offset + len(piece):
            return send_urgent(flow, offset, piece, urgent_at)
        return flow.send([(offset, piece)])[0]
    verdicts = [send(offset, piece) for offset, piece in parts]
    assert "drop" in verdicts, (urgent_at, parts, verdicts)


def evasions(dp) -> dict[str, int]:
    return {name.removeprefix("evasion_"): value for name, value in dp.counters().items()
            if name.startswith("evasion_")}


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {kind: after[kind] - before[kind] for kind in after if after[kind] != before[kind]}


@pytest.mark.parametrize("kind,v6", DECOY_CASES, ids=DECOY_IDS)
@pytest.mark.parametrize("stream", list(STREAMS))
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_decoy_the_server_drops_does_not_name_the_flow(dp, kind, v6, stream, when):
    """zapret's fake/fakedsplit, GoodbyeDPI's --wrong-chksum/--wrong-seq,
    ByeDPI's --fake: the decoy names an allowed name; the server never reads it."""
    real, fake, port = STREAMS[stream]
    flow = Flow(dp, v6, dport=port)
    before = evasions(dp)
    if when == "before":
        assert flow.send_decoy(kind, 0, fake) == "pass"
        assert flow.send(cut(real, len(real) // 2))[-1] == "drop"
        assert moved(before, evasions(dp)) == {COUNTED_AS.get(kind, kind): 1}
    else:
        assert flow.send(cut(real, len(real) // 2))[-1] == "drop"
        assert flow.send_decoy(kind, 0, fake) == "drop"


@FAMILIES
@pytest.mark.parametrize("acked", ["all of it", "none of it"])
def test_a_hello_that_acknowledges_the_servers_banner_is_read(dp, v6, acked):
    """A server that speaks first: the client's ACK numbers move past its
    SYN-ACK, up to the banner's end; one that has not caught up is an old
    ACK, which the server takes too. A decoy that acknowledges bytes past
    the banner is one the server drops."""
    real, fake, _ = STREAMS["0.5KB"]
    flow = Flow(dp, v6)
    start = flow.server_next
    assert flow.reply(b"220 server.example ESMTP\r\n") == "pass"
    ack = flow.server_next if acked == "all of it" else start
    before = evasions(dp)
    assert flow.send_raw(fake, seq=ISN + 1, ack=(flow.server_next + 1) % 2**32) == "pass"
    assert flow.send_raw(real, seq=ISN + 1, ack=ack) == "drop"
    assert moved(before, evasions(dp)) == {"bad_ack": 1}


@FAMILIES
@pytest.mark.parametrize("ack_shift", [-66000, 2**30, 2**31 + 5], ids=["old", "future", "far"])
def test_without_the_servers_syn_ack_no_ack_number_is_refused(blocking, v6, ack_shift):
    """One direction seen (a capture, an interface that carries only the
    client's packets): the server's numbers are unknown, and a client's
    ACK number is never held against it. Under on_evasion: block, a refusal
    would have blocked this flow of no rule."""
    flow = Flow(blocking, v6, syn_ack=False)
    before = evasions(blocking)
    assert flow.send_raw(padded_hello(b"unruled.example"), seq=ISN + 1,
                         ack=(SERVER_ISN + 1 + ack_shift) % 2**32) == "pass"
    assert moved(before, evasions(blocking)) == {}


@FAMILIES
@pytest.mark.parametrize("forged", ["before the server's", "after the server's"])
def test_a_forged_syn_ack_makes_no_real_hello_a_decoy(blocking, v6, forged):
    """A client that sends, as if from the server, a SYN-ACK of another
    number, would have its real hello (which acknowledges the real one)
    refused and unread. Two SYN-ACKs that disagree leave the server's
    numbers unknown: no ACK number is held against the client."""
    flow = Flow(blocking, v6, syn_ack=False)
    forged_isn = (SERVER_ISN + 5_000_000) % 2**32
    answers = [(forged_isn, "SA"), (SERVER_ISN, "SA")]
    for seq, flags in answers if forged == "before the server's" else answers[::-1]:
        assert flow.reply(b"", seq=seq, flags=flags) == "pass"
    before = evasions(blocking)
    assert flow.send([(0, padded_hello(b"unruled.example"))]) == ["pass"]
    assert moved(before, evasions(blocking)) == {}


@FAMILIES
def test_a_reopened_flow_forgets_the_old_servers_numbers(dp, v6):
    """The 5-tuple used again: the new connection's hello acknowledges the
    new SYN-ACK's number, which sluice saw on the old flow, and is read."""
    real = HELLOS["0.5KB"]
    flow = Flow(dp, v6)
    assert flow.send([(0, padded_hello(b"allowed.example"))]) == ["pass"]
    new_isn, new_server_isn = (ISN + 3_000_000) % 2**32, (SERVER_ISN + 7_000_000) % 2**32
    assert flow.send_raw(b"", seq=new_isn, flags="S") == "pass"
    assert flow.reply(b"", seq=new_server_isn, flags="SA", ack=new_isn + 1) == "pass"
    before = evasions(dp)
    assert flow.send_raw(real, seq=new_isn + 1, ack=(new_server_isn + 1) % 2**32) == "drop"
    assert moved(before, evasions(dp)) == {}


@FAMILIES
@pytest.mark.parametrize("stream", list(STREAMS))
def test_a_decoy_in_the_syn_is_read_again_from_the_resend(dp, v6, stream):
    """A server without a Fast Open cookie drops the SYN's data; the client
    sends its real bytes at the stream's start (zapret's --dpi-desync=syndata)."""
    real, fake, port = STREAMS[stream]
    flow = Flow(dp, v6, dport=port, syn_payload=fake)
    before = evasions(dp)
    assert flow.syn_verdict == "pass"
    assert flow.send([(0, real)]) == ["drop"]
    assert moved(before, evasions(dp)) == {"syn_data": 1}


# A bare SYN the server drops, made as each data decoy is (a SYN has no ACK to corrupt).
BARE_SYN_DECOYS = {"bad_checksum": DECOYS["bad_checksum"], "bad_ip_checksum": DECOYS["bad_ip_checksum"],
                   "truncated": DECOYS["truncated"],
                   "tcp_auth_option": DECOYS["tcp_auth_option"], "tcp_ao": DECOYS["tcp_ao"],
                   "rst": dict(flags="SR"), "low_ttl": DECOYS["low_ttl"], "hop_by_hop": DECOYS["hop_by_hop"],
                   "ipv6_option": DECOYS["ipv6_option"], "source_route": DECOYS["source_route"],
                   "ip_version": DECOYS["ip_version"],
                   "sent again": {}}
BARE_SYN_CASES = [(kind, v6) for kind in BARE_SYN_DECOYS for v6 in (False, True)
                  if kind not in (IPV4_ONLY if v6 else IPV6_ONLY)]
FUTURE = [("Timestamp", (SYN_TSVAL + 10**6, 0))]


@pytest.mark.parametrize("kind,v6", BARE_SYN_CASES, ids=[f"{kind}-{'ipv6' if v6 else 'ipv4'}"
                                                         for kind, v6 in BARE_SYN_CASES])
def test_a_bare_syn_sent_again_stamped_in_the_future_makes_no_paws_decoy(dp, kind, v6):
    """The client's SYN sent again with a timestamp from the future, as a
    decoy the server drops or as a valid SYN, which the server answers and
    forgets (tcp_check_req()). Taken, its stamp would make the real hello
    after it look like a PAWS decoy, unread, and the flow pass unnamed."""
    flow = Flow(dp, v6)
    options = {"flags": "S", **BARE_SYN_DECOYS[kind]}
    options["tcp_options"] = [*options.get("tcp_options", ()), *FUTURE]
    before = evasions(dp)
    assert flow.send_raw(b"", seq=ISN, **options) == "pass"
    assert flow.send([(0, HELLOS["0.5KB"])]) == ["drop"]
    assert moved(before, evasions(dp)) == ({} if kind == "sent again" else {COUNTED_AS.get(kind, kind): 1})


@FAMILIES
def test_a_first_syn_sent_to_expire_gives_way_to_the_real_one(dp, v6):
    """The flow's first SYN a low-TTL decoy stamped in the future, the real
    SYN after it: the real one's higher TTL shows the first never reached
    the server, and its stamp stands."""
    flow = Flow(dp, v6, syn_options=dict(ttl=3, tcp_options=FUTURE))
    assert flow.send_raw(b"", seq=ISN, flags="S") == "pass"
    assert flow.send([(0, HELLOS["0.5KB"])]) == ["drop"]


@FAMILIES
def test_fast_open_data_sent_again_unchanged_is_no_evasion(dp, v6):
    real = HELLOS["0.5KB"]
    flow = Flow(dp, v6, syn_payload=real)
    before = evasions(dp)
    assert flow.syn_verdict == "drop"
    assert flow.send([(0, real)]) == ["drop"]
    assert moved(before, evasions(dp)) == {}


@FAMILIES
def test_a_decoy_of_one_piece_in_a_multisplit_hello(dp, v6):
    """fakedsplit: each real piece follows a decoy of the same range."""
    real, fake, _ = STREAMS["1.8KB"]
    verdicts = []
    flow = Flow(dp, v6)
    for (offset, piece), kind in zip(cut(real, 3, 200, 900), ["low_ttl", "bad_checksum", "no_ack", "paws"]):
        verdicts += [flow.send_decoy(kind, offset, fake[offset:offset + len(piece)]), *flow.send([(offset, piece)])]
    assert verdicts == ["pass"] * 7 + ["drop"]


@FAMILIES
@pytest.mark.parametrize("first", ["nothing", "the first piece"])
def test_a_timestamp_from_the_future_ahead_of_the_stream_makes_no_paws_decoy(dp, v6, first):
    """A segment past what the server holds in order is queued (or dropped)
    and does not move its ts_recent (tcp_replace_ts_recent(): seq not after
    rcv_wup). Had sluice taken the future stamp, the real hello after it,
    with its true stamp, would have looked like a PAWS decoy and gone
    unread: the flow named by nothing, and passed."""
    real = HELLOS["0.5KB"]
    flow = Flow(dp, v6)
    sent = flow.send(cut(real, 5)[:1]) if first == "the first piece" else []
    future = [("Timestamp", (SYN_TSVAL + 10**6, 0))]
    sent.append(flow.send_raw(bytes(100), seq=(ISN + 1 + len(real) + 1000) % 2**32, tcp_options=future))
    sent += flow.send(cut(real, 5)[1:] if first == "the first piece" else [(0, real)])
    assert sent[-1] == "drop", sent


SYN_DECOYS = {"valid": {}, "bad_checksum": DECOYS["bad_checksum"], "low_ttl": DECOYS["low_ttl"],
              "tcp_auth_option": DECOYS["tcp_auth_option"]}


@FAMILIES
@pytest.mark.parametrize("kind", SYN_DECOYS)
@pytest.mark.parametrize("when", ["before the hello", "after its first piece", "after the block"])
def test_a_syn_of_another_connection_does_not_move_the_stream(dp, v6, kind, when):
    """A TCB desynchronisation: a SYN with another sequence number on a
    connection sluice knows, be it a decoy the server never takes or a valid
    one it answers with a challenge ACK (RFC 5961 4.2). The connection goes
    on at its own sequence numbers, and its hello is read there."""
    real = HELLOS["0.5KB"]
    flow = Flow(dp, v6)
    desync = dict(SYN_DECOYS[kind])
    verdicts = flow.send(cut(real, 5)[:1]) if when == "after its first piece" else []
    if when == "after the block":
        verdicts = flow.send([(0, real)])
        assert verdicts == ["drop"]
    assert flow.send_raw(b"", seq=(ISN + 3_000_000) % 2**32, flags="S", **desync) == "pass"
    verdicts += flow.send(cut(real, 5)[1:] if when == "after its first piece" else [(0, real)])
    assert verdicts[-1] == "drop", verdicts


@FAMILIES
def test_a_fast_open_syn_of_another_connection_is_dropped_unread(dp, v6):
    """Its data would reach the server unread; without data, the client's
    next SYN is held and the new connection read from its data."""
    flow = Flow(dp, v6)
    assert flow.send([(0, padded_hello(b"allowed.example"))]) == ["pass"]
    new_isn = (ISN + 3_000_000) % 2**32
    assert flow.send_raw(HELLOS["0.5KB"], seq=new_isn, flags="S") == "drop"
    assert flow.send_raw(b"", seq=new_isn, flags="S") == "pass"
    assert flow.send_raw(HELLOS["0.5KB"], seq=new_isn + 1) == "drop"


@pytest.mark.parametrize("kind,v6", DECOY_CASES, ids=DECOY_IDS)
def test_a_decoy_ahead_of_the_stream_start_loses_to_the_real_pieces(dp, kind, v6):
    """A decoy past the in-order point that the server would have queued
    out of order (and then read) had it kept it: dropped, it leaves the
    range to the real piece sent after it."""
    real, fake, _ = STREAMS["0.5KB"]
    flow = Flow(dp, v6)
    assert flow.send_decoy(kind, 5, fake[5:]) == "pass"
    assert flow.send(cut(real, 5)) == ["pass", "drop"]


@FAMILIES
@pytest.mark.parametrize("stream,first", [("http", b"\r\n"), ("0.5KB", b"\x14\x03\x03\x00\x01\x01")],
                         ids=["http-crlf", "tls-change-cipher-spec"])
def test_paws_holds_after_a_first_segment_read_alone(dp, v6, stream, first):
    """A first segment read alone (an empty line before an HTTP request, RFC
    9112 2.2; a ChangeCipherSpec record before a ClientHello), the rest
    through the stream. Each in-order segment moves the server's ts_recent
    on, so a decoy stamped between the first segment and the next is old to
    the server, and must be to sluice."""
    real, fake, port = STREAMS[stream]
    flow = Flow(dp, v6, dport=port)
    at, start = len(real) // 2, (ISN + 1 + len(first)) % 2**32
    stamped = lambda tsval: dict(tcp_options=[("Timestamp", (tsval, 0))])
    verdicts = [flow.send_raw(first, seq=(ISN + 1) % 2**32, **stamped(5000)),
                flow.send_raw(real[:at], seq=start, **stamped(9000)),
                flow.send_raw(fake[at:], seq=(start + at) % 2**32, **stamped(7000)),
                flow.send_raw(real[at:], seq=(start + at) % 2**32, **stamped(9001))]
    assert verdicts[-1] == "drop", verdicts


@pytest.fixture(scope="module")
def blocking(make_datapath):
    return make_datapath(POLICY.replace("rules:", "inspection: {on_evasion: block}\nrules:"))


@pytest.fixture(scope="module")
def blind(make_datapath):
    """The 2021 profile: each segment alone, every copy read."""
    return make_datapath(POLICY.replace("rules:", "inspection: {reassemble: false, on_evasion: ignore}\nrules:"))


@pytest.mark.parametrize("kind,v6", DECOY_CASES, ids=DECOY_IDS)
def test_on_evasion_block_blocks_a_flow_that_sends_a_decoy(blocking, kind, v6):
    real, fake = padded_hello(b"unruled.example"), padded_hello(b"allowed.example")
    flow = Flow(blocking, v6)
    before = evasions(blocking)
    assert [flow.send_decoy(kind, 0, fake), *flow.send([(0, real)])] == ["drop", "drop"]
    assert moved(before, evasions(blocking)) == {COUNTED_AS.get(kind, kind): 1}
    assert Flow(blocking, v6).send([(0, real)]) == ["pass"], "without a decoy the flow passes"


@FAMILIES
def test_a_connection_open_before_sluice_is_no_paws_decoy(blocking, v6):
    """No SYN seen, so no known client: both ends' segments are read, each
    stamped by its own clock (the server's far ahead here). Neither end's
    timestamps are the other's old ones."""
    port, before = next(Flow.ports), evasions(blocking)

    def send(payload: bytes, tsval: int, reply: bool) -> str:
        frame = tcp_frame(payload, sport=port, seq=ISN, ack=ISN, reply=reply, v6=v6,
                          tcp_options=[("Timestamp", (tsval, 0))])
        return run_xdp(blocking.function.fd, frame).verdict
    assert send(b"220 banner\r\n", 4_000_000, reply=True) == "pass"
    assert send(b"EHLO client.example\r\n", 1000, reply=False) == "pass"
    assert send(b"250 ok\r\n", 4_000_001, reply=True) == "pass"
    assert moved(before, evasions(blocking)) == {}


@FAMILIES
def test_on_evasion_block_blocks_a_decoy_in_the_syn(blocking, v6):
    flow = Flow(blocking, v6, syn_payload=padded_hello(b"allowed.example"))
    assert flow.syn_verdict == "pass"
    assert flow.send([(0, padded_hello(b"unruled.example"))]) == ["drop"]


@pytest.mark.parametrize("kind,v6", DECOY_CASES, ids=DECOY_IDS)
def test_on_evasion_ignore_the_2021_profile_is_fooled_by_every_decoy(blind, kind, v6):
    real, fake, _ = STREAMS["0.5KB"]
    flow = Flow(blind, v6)
    before = evasions(blind)
    assert [flow.send_decoy(kind, 0, fake), *flow.send([(0, real)])] == ["pass", "pass"]
    assert moved(before, evasions(blind)) == {}


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_partition_in_any_order_with_decoys_anywhere_is_named(dp, data):
    """Any cut of a hello into up to 10 pieces, sent in any order, with up to
    5 decoys the server drops, of any range, inserted anywhere: decoys alone
    name nothing, and the real name holds once the real pieces are in."""
    v6 = data.draw(st.booleans())
    real, fake, _ = STREAMS[data.draw(st.sampled_from(["0.5KB", "1.8KB"]))]
    at = data.draw(st.lists(st.integers(1, len(real) - 1), max_size=9, unique=True))
    sends = [("real", offset, piece) for offset, piece in data.draw(st.permutations(cut(real, *sorted(at))))]
    kinds = [kind for kind, on_v6 in DECOY_CASES if on_v6 == v6]
    for _ in range(data.draw(st.integers(0, 5))):
        start = data.draw(st.integers(0, len(fake) - 1))
        end = data.draw(st.integers(start + 1, len(fake)))
        sends.insert(data.draw(st.integers(0, len(sends))), (data.draw(st.sampled_from(kinds)), start, fake[start:end]))
    flow = Flow(dp, v6)
    verdicts = [flow.send([(offset, piece)])[0] if kind == "real" else flow.send_decoy(kind, offset, piece)
                for kind, offset, piece in sends]
    reals = [i for i, (kind, _, _) in enumerate(sends) if kind == "real"]
    assert verdicts[:reals[0]] == ["pass"] * reals[0] and verdicts[reals[-1]] == "drop", (sends, verdicts)


URGENT_BYTE = b"!"


def with_urgent_byte(stream: bytes, name: bytes = b"blocked.example") -> tuple[bytes, int]:
    """stream with an urgent byte put inside the name, and where it is."""
    at = stream.index(name) + 4
    return stream[:at] + URGENT_BYTE + stream[at:], at


def send_urgent(flow: Flow, offset: int, piece: bytes, urgent_at: int) -> str:
    """piece at offset, URG set, its pointer one past the urgent byte (Linux's reading)."""
    return flow.send_raw(piece, seq=(ISN + 1 + offset) % 2**32, flags="PAU", urgptr=urgent_at - offset + 1)


@FAMILIES
@pytest.mark.parametrize("stream", list(STREAMS))
@pytest.mark.parametrize("pieces", ["whole", "split"])
def test_an_urgent_byte_inside_the_name_is_taken_out(dp, v6, stream, pieces):
    """A receiver without SO_OOBINLINE takes the urgent byte out of the
    stream: the server reads the real name, and so must sluice."""
    real, port = STREAMS[stream][0], STREAMS[stream][2]
    sent, at = with_urgent_byte(real)
    flow = Flow(dp, v6, dport=port)
    before = evasions(dp)
    if pieces == "whole":
        assert send_urgent(flow, 0, sent, at) == "drop"
    else:       # the byte in the second piece, sent first
        (_, first), (offset, second) = cut(sent, at - 2)
        assert [send_urgent(flow, offset, second, at), *flow.send([(0, first)])] == ["pass", "drop"]
    assert moved(before, evasions(dp)) == {"urgent": 1}


@FAMILIES
@pytest.mark.parametrize("stream", ["0.5KB", "http"])
def test_a_later_urgent_mark_moves_it(dp, v6, stream):
    """Only the latest urgent byte is taken out: one marked earlier is read in line again."""
    real, port = STREAMS[stream][0], STREAMS[stream][2]
    sent, at = with_urgent_byte(real)
    flow = Flow(dp, v6, dport=port)
    early = at - 10                 # a byte of the real name's stream, marked first
    (_, first), (offset, second) = cut(sent, early - 5)
    assert send_urgent(flow, offset, second, early) == "pass"
    assert send_urgent(flow, 0, first, at) == "drop"


@FAMILIES
def test_an_urgent_mark_on_delivered_bytes_is_ignored(dp, v6):
    """Linux ignores an urgent pointer into bytes it has already taken in order."""
    real = HELLOS["0.5KB"]
    flow = Flow(dp, v6)
    at = real.index(b"blocked.example") - 20
    assert flow.send([(0, real[:at])]) == ["pass"]
    assert send_urgent(flow, at - 10, real[at - 10:], at - 5) == "drop"


@FAMILIES
def test_on_evasion_block_blocks_an_urgent_byte(blocking, v6):
    sent, at = with_urgent_byte(padded_hello(b"unruled.example"), b"unruled.example")
    flow = Flow(blocking, v6)
    before = evasions(blocking)
    assert send_urgent(flow, 0, sent, at) == "drop"
    assert moved(before, evasions(blocking)) == {"urgent": 1}


@FAMILIES
def test_on_evasion_ignore_reads_the_urgent_byte_in(blind, v6):
    """The 2021 throttler read the urgent byte as part of the name."""
    sent, at = with_urgent_byte(HELLOS["0.5KB"])
    before = evasions(blind)
    assert send_urgent(Flow(blind, v6), 0, sent, at) == "pass"
    assert moved(before, evasions(blind)) == {}


def hello_and_fake() -> tuple[bytes, bytes, int]:
    """A 1.8 KB hello, a fake of the same length for another name, and where the name is."""
    real, fake, _ = STREAMS["1.8KB"]
    return real, fake, real.index(b"blocked.example")


@FAMILIES
def test_copies_that_disagree_where_delivered_the_first_stands(dp, v6):
    real, fake, name = hello_and_fake()
    flow = Flow(dp, v6)
    before = evasions(dp)
    # "block" is delivered; the fake's "allowed.example" overlaps it, and the
    # server reads "block" + "ed.example" from the fake: the real name.
    assert flow.send([(0, real[:name + 5]), (name - 50, fake[name - 50:])]) == ["pass", "drop"]
    assert moved(before, evasions(dp)) == {"conflict": 1}


@FAMILIES
@pytest.mark.parametrize("order", ["real-first", "fake-first"])
def test_copies_that_disagree_out_of_order_the_receivers_stands(dp, v6, order):
    """Out of order, Linux keeps the copy that starts first and, of two that
    start together, the longer: a short fake at the real piece's start loses
    whether it comes before or after it."""
    real, fake, name = hello_and_fake()
    assert len(real) > name + 10, "the fake is the shorter copy"
    piece, short_fake = (name - 30, real[name - 30:]), (name - 30, fake[name - 30:name + 10])
    flow = Flow(dp, v6)
    before = evasions(dp)
    later = flow.send([piece, short_fake] if order == "real-first" else [short_fake, piece])
    assert later == ["pass", "pass"]
    assert flow.send([(0, real[:name - 30])]) == ["drop"]
    assert moved(before, evasions(dp)) == {"conflict": 1}


@FAMILIES
def test_a_copy_sent_again_unchanged_is_no_conflict(dp, v6):
    real, _, name = hello_and_fake()
    flow = Flow(dp, v6)
    before = evasions(dp)
    assert flow.send([(name, real[name:]), (name, real[name:]), (0, real[:name + 10])]) == ["pass", "pass", "drop"]
    assert moved(before, evasions(dp)) == {}


@FAMILIES
def test_on_evasion_block_blocks_copies_that_disagree(blocking, v6):
    real, fake = padded_hello(b"unruled.example"), padded_hello(b"allowed.example")
    name = real.index(b"unruled.example")
    flow = Flow(blocking, v6)
    assert flow.send([(name, real[name:]), (name, fake[name:name + 20])]) == ["pass", "drop"]
    assert flow.send([(0, real[:name])]) == ["drop"]


@FAMILIES
def test_a_lone_low_ttl_copy_is_not_read(dp, v6):
    """A low-TTL copy that no other copy replaces is not taken for the truth
    while the server has not acknowledged it (docs/policy.md,
    tests/test_bpf_tentative.py): the flow is not named by it, and passes."""
    flow = Flow(dp, v6)
    before = evasions(dp)
    assert flow.send_decoy("low_ttl", 0, HELLOS["0.5KB"]) == "pass"
    assert moved(before, evasions(dp)) == {"low_ttl": 1}


SERVER_SIDE = {
    # The server answers the client's SYN with a SYN of its own (a
    # simultaneous open); the client's kernel answers with a SYN-ACK.
    "simultaneous-open": [("reply", dict(flags="S", ack=0)), ("send", dict(flags="SA")), ("reply", dict(flags="A"))],
    # A SYN first, then the real SYN-ACK (the TCB turnaround: a middlebox
    # that takes the first SYN's sender for the client reads the wrong side).
    "turnaround": [("reply", dict(flags="S", ack=0)), ("reply", dict(flags="SA"))],
    # SYN-ACKs carrying bytes, three times, then a bare one.
    "loaded-syn-acks": [("reply", dict(flags="SA", payload=b"x" * 100))] * 3 + [("reply", dict(flags="SA"))],
}


@FAMILIES
@pytest.mark.parametrize("kind", ["0.5KB", "http"])
@pytest.mark.parametrize("strategy", list(SERVER_SIDE))
def test_geneva_server_side_handshakes_do_not_turn_the_flow_around(dp, blind, v6, kind, strategy):
    """Geneva's server-side strategies (Bock et al., 2020) change only the
    server's handshake, so that an unmodified client's hello slips past a
    middlebox that takes the server for the client. The client's SYN came
    first, and only what the client sends names the flow, in both profiles."""
    stream, _, port = STREAMS[kind]
    for profile in (dp, blind):
        flow = Flow(profile, v6, dport=port, syn_ack=False)
        for side, options in SERVER_SIDE[strategy]:
            options = dict(options)
            payload = options.pop("payload", b"")
            if side == "reply":
                assert flow.reply(payload, seq=SERVER_ISN, **options) == "pass"
            else:
                assert flow.send_raw(payload, seq=ISN, **options) == "pass"
        assert flow.send(cut(stream))[-1] == "drop"


def test_the_kinds_are_exported_to_prometheus(dp):
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from sluice.metrics import SluiceCollector
    registry = CollectorRegistry()
    registry.register(SluiceCollector(SimpleNamespace(datapath=dp, policy=dp.policy, loaded_at=0.0,
                                                      policy_digest="", reloads={"success": 0, "failure": 0})))

    def exported() -> dict[str, float]:
        return {line.split('kind="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in generate_latest(registry).decode().splitlines()
                if line.startswith("sluice_evasion_detected_total{")}
    before = exported()
    assert set(before) == {"bad_checksum", "tcp_auth_option", "no_ack", "rst", "paws", "out_of_window",
                           "hop_by_hop", "low_ttl", "syn_data", "conflict", "urgent", "bad_ack",
                           "forged_server", "truncated", "ipv6_extension", "ip_header"}
    Flow(dp, False).send_decoy("low_ttl", 0, STREAMS["0.5KB"][1])
    assert exported()["low_ttl"] == before["low_ttl"] + 1
