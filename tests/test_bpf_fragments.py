"""IP fragments of a flow's first packets, in the real program (bpf/ip_frag.h).

Circumvention tools (zapret's ipfrag, GoodbyeDPI, Geneva) send the hello as
IPv4 fragments or IPv6 Fragment-header fragments, in order or not, so that no
packet holds the name. The data plane gathers them as the server's stack
does; the fragments pass while gathered, the fragment that completes the
datagram takes the flow's verdict, and so does every packet after it.
"""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import HOOKS, AtHook, classify, needs_root
from sluice.abi import ABI
from sluice.quic_flows import QuicFlows
from packets import (IPv6ExtHdrFragment, client_hello, extension, http_request, ip_fragments, tcp_frame,
                     udp_frame)
from quic_packets import crypto_frame, handshake_client_hello, initial_packet
from test_bpf_reassembly import browser_hello

pytestmark = [pytest.mark.bpf, needs_root]

POLICY = """\
version: 1
{inspection}rules:
  - {{name: blocked, action: block, domains: [blocked.example]}}
"""
ISN = 5000
FRAGMENT = 256                                   # bytes of IP payload per fragment
EXT_PADDING = 21
CHANGE_CIPHER_SPEC = b"\x14\x03\x03\x00\x01\x01"


def small_hello(name: bytes) -> bytes:
    """A ClientHello of about 0.5 KB, as curl's."""
    return client_hello(name, extensions_after=(extension(EXT_PADDING, bytes(380)),))


HELLOS = {"tls-0.5k": small_hello, "tls-1.8k": browser_hello,
          "http": lambda name: http_request(name.decode(), after=("User-Agent: " + "x" * 300,))}
ORDERS = {"in-order": lambda frames: frames, "reversed": lambda frames: frames[::-1],
          "shuffled": lambda frames: random.Random(len(frames)).sample(frames, len(frames))}
ports = iter(range(41000, 45000))
idents = iter(range(1, 60000))


@pytest.fixture(scope="module", params=HOOKS)
def dp(make_datapath, request):
    """Fragments reach tc ingress as they reach XDP: the kernel gathers them later, in IP."""
    return AtHook(make_datapath(POLICY.format(inspection="")), request.param)


class Flow:
    """One client connection whose segments may be sent as fragments."""

    def __init__(self, dp, *, v6: bool, dport: int = 443):
        self.dp, self.v6, self.port, self.dport = dp, v6, next(ports), dport
        assert self.send_whole(b"", seq=ISN, flags="S") == "pass"

    def frame(self, payload: bytes, seq: int, flags: str = "PA") -> bytes:
        return tcp_frame(payload, sport=self.port, dport=self.dport, seq=seq, flags=flags, v6=self.v6)

    def send_whole(self, payload: bytes, seq: int = ISN + 1, flags: str = "PA") -> str:
        return classify(self.dp, self.frame(payload, seq, flags)).verdict

    def send_fragments(self, frames: list[bytes]) -> list[str]:
        return [classify(self.dp, frame).verdict for frame in frames]

    def fragments(self, payload: bytes, cuts=FRAGMENT, seq: int = ISN + 1) -> list[bytes]:
        return ip_fragments(self.frame(payload, seq), cuts, ident=next(idents))


def moved(dp, before: dict) -> dict:
    after = dp.counters()
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("hello", HELLOS)
def test_a_fragmented_hello_is_named_and_its_flow_blocked(dp, hello, order, v6):
    flow = Flow(dp, v6=v6)
    payload = HELLOS[hello](b"blocked.example")
    frames = ORDERS[order](flow.fragments(payload))
    assert len(frames) >= 2
    before = dp.counters()
    verdicts = flow.send_fragments(frames)
    # Gathered, they pass; the fragment that completes the datagram takes the verdict.
    assert verdicts == ["pass"] * (len(frames) - 1) + ["drop"]
    counts = moved(dp, before)
    assert counts["fragments"] == len(frames)
    assert counts["frag_reassembled"] == 1
    assert counts["flows_http" if hello == "http" else "flows_tls"] == 1
    assert flow.send_whole(b"next", seq=ISN + 1 + len(payload)) == "drop"


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("hello", HELLOS)
def test_a_fragmented_hello_of_a_name_no_rule_names_passes(dp, hello, v6):
    flow = Flow(dp, v6=v6)
    payload = HELLOS[hello](b"allowed.example")
    before = dp.counters()
    assert set(flow.send_fragments(flow.fragments(payload)[::-1])) == {"pass"}
    assert moved(dp, before)["flows_http" if hello == "http" else "flows_tls"] == 1
    assert flow.send_whole(b"next", seq=ISN + 1 + len(payload)) == "pass"


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_any_cut_into_fragments_sent_in_any_order_with_repeats_is_named(dp, data):
    """Any partition of a segment into fragments (8-byte units, as IP has
    them), sent in any order, with exact repeats anywhere: the fragment
    that completes the datagram is blocked, every one before it passes."""
    v6 = data.draw(st.booleans(), label="v6")
    payload = data.draw(st.sampled_from([small_hello(b"blocked.example"), browser_hello(b"blocked.example")]))
    total = len(payload) + 20                          # the TCP header travels in the fragments too
    units = (total + 7) // 8
    cuts = data.draw(st.sets(st.integers(1, units - 1), max_size=ABI.SLUICE_FRAG_PIECES_MAX - 1), label="cuts")
    bounds = [0, *sorted(unit * 8 for unit in cuts), total]
    pieces = list(zip(bounds, bounds[1:]))
    repeats = data.draw(st.lists(st.sampled_from(pieces), max_size=3), label="repeats")
    order = data.draw(st.permutations(pieces + repeats), label="order")
    flow = Flow(dp, v6=v6)
    verdicts = flow.send_fragments(flow.fragments(payload, order))
    complete = max(order.index(piece) for piece in pieces)
    assert verdicts[:complete + 1] == ["pass"] * complete + ["drop"]
    assert flow.send_whole(b"next", seq=ISN + 1 + len(payload)) == "drop"


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_first_fragment_that_cuts_the_tcp_header_is_gathered_too(dp, v6):
    """RFC 1858's tiny fragment: 8 bytes of TCP header, the rest after it."""
    flow = Flow(dp, v6=v6)
    payload = small_hello(b"blocked.example")
    total = len(payload) + 20
    verdicts = flow.send_fragments(flow.fragments(payload, [(8, 400), (400, total), (0, 8)]))
    assert verdicts == ["pass", "pass", "drop"]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_the_second_segment_of_a_hello_sent_in_fragments_completes_it(dp, v6):
    """A browser's two-segment hello whose second segment comes fragmented: the stream takes it."""
    flow = Flow(dp, v6=v6)
    payload = browser_hello(b"blocked.example")
    assert flow.send_whole(payload[:1000]) == "pass"
    before = dp.counters()
    verdicts = flow.send_fragments(flow.fragments(payload[1000:], seq=ISN + 1 + 1000)[::-1])
    assert verdicts[-1] == "drop"
    assert moved(dp, before)["tls_reassembled"] == 1


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_change_cipher_spec_record_before_a_fragmented_hello_is_stepped_over(dp, v6):
    flow = Flow(dp, v6=v6)
    payload = CHANGE_CIPHER_SPEC + small_hello(b"blocked.example")
    assert flow.send_fragments(flow.fragments(payload)[::-1])[-1] == "drop"


def test_an_atomic_ipv6_fragment_is_read_as_the_whole_packet(dp):
    flow = Flow(dp, v6=True)
    frame = tcp_frame(small_hello(b"blocked.example"), sport=flow.port, seq=ISN + 1, v6=True,
                      ext_headers=(IPv6ExtHdrFragment(offset=0, m=0, id=next(idents)),))
    before = dp.counters()
    assert classify(dp, frame).verdict == "drop"
    counts = moved(dp, before)
    assert counts["flows_tls"] == 1 and "fragments" not in counts


def test_fragments_behind_one_hop_by_hop_header_are_gathered(dp):
    """One Hop-by-Hop header, first as RFC 8200 puts it, the receiver keeps:
    only a second one (or one later in the chain) is refused."""
    flow = Flow(dp, v6=True)
    frames = ip_fragments(flow.frame(small_hello(b"blocked.example"), ISN + 1), FRAGMENT, ident=next(idents),
                          hop_by_hop=1)
    before = dp.counters()
    assert flow.send_fragments(frames) == ["pass"] * (len(frames) - 1) + ["drop"]
    assert "evasion_hop_by_hop" not in moved(dp, before)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_an_exact_repeat_of_a_fragment_is_ignored_and_the_first_copy_kept(dp, v6):
    """As Linux keeps the first copy: a decoy repeating a fragment's range
    with another name cannot replace it."""
    flow = Flow(dp, v6=v6)
    real, decoy = small_hello(b"blocked.example"), small_hello(b"allowed.example")
    assert len(real) == len(decoy)
    ident = next(idents)            # one datagram: the decoy repeats the range of the real first fragment
    first, decoy_first, rest = (ip_fragments(flow.frame(payload, ISN + 1), [cut], ident=ident)[0]
                                for payload, cut in ((real, (0, 256)), (decoy, (0, 256)),
                                                     (real, (256, len(real) + 20))))
    assert flow.send_fragments([first, decoy_first, rest]) == ["pass", "pass", "drop"]


# Decoy fragments a receiver never gathers: how each is made (ip_fragments'
# options), the counter that counts it, and how many times at least.
DECOY_FRAGMENTS = {"low_ttl": (dict(ttl=3), "frag_low_ttl", 1),           # zapret's fakes at the IP layer
                   "bad_header_checksum": (dict(ip_chksum=0xBEEF), "evasion_bad_checksum", 2),  # Geneva's
                   "truncated": (dict(ip_len_extra=100), "evasion_truncated", 2),
                   "ip_version": (dict(ip_version=5), "evasion_ip_header", 2),           # INTANG's
                   "hop_by_hop_twice": (dict(hop_by_hop=2), "evasion_hop_by_hop", 2)}     # zapret's hopbyhop2
IPV4_ONLY, IPV6_ONLY = {"bad_header_checksum", "ip_version"}, {"hop_by_hop_twice"}
DECOY_FRAGMENT_CASES = [(kind, v6) for kind in DECOY_FRAGMENTS for v6 in (False, True)
                        if not (v6 and kind in IPV4_ONLY) and not (not v6 and kind in IPV6_ONLY)]


@pytest.mark.parametrize("kind,v6", DECOY_FRAGMENT_CASES,
                         ids=[f"{kind}-{'ipv6' if v6 else 'ipv4'}" for kind, v6 in DECOY_FRAGMENT_CASES])
@pytest.mark.parametrize("decoy_first", [True, False], ids=["decoys-first", "decoys-between"])
def test_decoy_fragments_the_server_never_gathers_are_not_gathered(dp, kind, v6, decoy_first):
    """A copy of the first fragment with another name, and a fragment
    overlapping the real second one (which would discard the datagram),
    sent to expire before the server (a TTL the fragments of one datagram
    do not share), with a wrong IPv4 header checksum (Geneva's
    tamper{IP:chksum:corrupt}) or version, an IP length past the frame's
    end, or a second Hop-by-Hop header: the receiver's IP drops these
    before reassembly."""
    made, counter, at_least = DECOY_FRAGMENTS[kind]
    flow = Flow(dp, v6=v6)
    real, decoy = small_hello(b"blocked.example"), small_hello(b"allowed.example")
    total = len(real) + 20
    ident = next(idents)
    reals = ip_fragments(flow.frame(real, ISN + 1), [(0, 256), (256, total)], ident=ident)
    decoys = ip_fragments(flow.frame(decoy, ISN + 1), [(0, 256), (256, 384)], ident=ident, **made)
    frames = decoys + reals if decoy_first else [reals[0], *decoys, reals[1]]
    before = dp.counters()
    assert flow.send_fragments(frames) == ["pass", "pass", "pass", "drop"]
    assert moved(dp, before)[counter] >= at_least


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_overlapping_fragments_discard_the_datagram_as_the_receiver_does(dp, v6):
    """RFC 5722 for IPv6, and Linux for IPv4 too: the whole datagram goes."""
    flow = Flow(dp, v6=v6)
    payload = small_hello(b"blocked.example")
    total = len(payload) + 20
    before = dp.counters()
    verdicts = flow.send_fragments(flow.fragments(payload, [(0, 256), (128, 384), (384, total)]))
    assert verdicts == ["pass", "pass", "pass"]
    counts = moved(dp, before)
    assert counts["frag_overlaps"] == 1
    assert "frag_reassembled" not in counts and "flows_tls" not in counts
    # The client sends the segment again, whole: the flow is named from it.
    assert flow.send_whole(payload) == "drop"


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("held", ["in-order", "reversed"])
def test_a_last_fragment_ending_before_bytes_held_discards_the_datagram_even_as_a_repeat(dp, v6, held):
    """Linux's ip_frag_queue() checks the length before the ranges: a last
    fragment that repeats a piece's range but ends before another piece
    discards the datagram, whichever piece came first."""
    flow = Flow(dp, v6=v6)
    payload = small_hello(b"blocked.example")
    total = len(payload) + 20
    ident = next(idents)
    head, middle, next_, rest = ip_fragments(flow.frame(payload, ISN + 1),
                                             [(0, 128), (128, 256), (256, 384), (384, total)], ident=ident)
    # The IP payload's first 256 bytes (20 of them the TCP header) as a datagram
    # of their own: its fragment from 128 on is a last one, repeating middle's range.
    short_last = ip_fragments(flow.frame(payload[:236], ISN + 1), [(128, 256)], ident=ident)[0]
    pieces = [middle, next_] if held == "in-order" else [next_, middle]
    before = dp.counters()
    assert flow.send_fragments([*pieces, short_last, head, rest]) == ["pass"] * 5
    counts = moved(dp, before)
    assert counts["frag_overlaps"] == 1
    assert "frag_reassembled" not in counts and "flows_tls" not in counts


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_datagram_past_the_buffer_passes_unread_and_is_counted(dp, v6):
    flow = Flow(dp, v6=v6)
    payload = bytes(ABI.SLUICE_FRAG_BYTES + 500)
    before = dp.counters()
    assert set(flow.send_fragments(flow.fragments(payload, 1024))) == {"pass"}
    counts = moved(dp, before)
    assert counts["frag_oversize"] == 1 and "frag_reassembled" not in counts


def test_more_fragments_than_a_datagram_holds_apart_pass_unread_and_are_counted(dp):
    flow = Flow(dp, v6=False)
    payload = small_hello(b"blocked.example")
    frames = flow.fragments(payload, 8)
    assert len(frames) > ABI.SLUICE_FRAG_PIECES_MAX
    before = dp.counters()
    assert set(flow.send_fragments(frames)) == {"pass"}
    counts = moved(dp, before)
    assert counts["frag_oversize"] == 1 and "frag_reassembled" not in counts


def test_more_datagrams_than_the_table_holds_evict_the_oldest(dp):
    """First fragments of more datagrams than SLUICE_FRAGS_MAX, none ever whole."""
    flow = Flow(dp, v6=False)
    segment = flow.frame(small_hello(b"blocked.example"), ISN + 1)
    count = ABI.SLUICE_FRAGS_MAX + 100
    before = dp.counters()
    for _ in range(count):
        first = ip_fragments(segment, [(0, 256)], ident=next(idents))[0]
        assert classify(dp, first).verdict == "pass"
    assert moved(dp, before)["frag_datagrams"] == count
    assert dp.fragment_count() <= ABI.SLUICE_FRAGS_MAX


def test_a_datagram_not_whole_in_time_is_started_afresh(dp):
    dp.set_config(clock_ns=10**12)
    try:
        flow = Flow(dp, v6=False)
        payload = small_hello(b"blocked.example")
        first, rest = flow.fragments(payload, [(0, 256), (256, len(payload) + 20)])
        assert classify(dp, first).verdict == "pass"
        dp.set_config(clock_ns=10**12 + ABI.SLUICE_FRAG_TIMEOUT_NS + 1)
        before = dp.counters()
        assert classify(dp, rest).verdict == "pass"
    finally:
        dp.set_config(clock_ns=0)
    counts = moved(dp, before)
    assert counts["frag_timeouts"] == 1 and "frag_reassembled" not in counts


def test_without_reassembly_fragments_pass_unread_as_the_2021_throttler_let_them(make_datapath):
    dp = make_datapath(POLICY.format(inspection="inspection: {reassemble: false}\n"))
    flow = Flow(dp, v6=False)
    frames = flow.fragments(small_hello(b"blocked.example"))
    before = dp.counters()
    assert set(flow.send_fragments(frames)) == {"pass"}
    counts = moved(dp, before)
    assert counts["fragments"] == len(frames) and "frag_datagrams" not in counts and "flows_tls" not in counts


@pytest.fixture(scope="module")
def dropping(make_datapath):
    return make_datapath(POLICY.format(inspection="inspection: {fragments: drop}\n"), events=True)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_fragments_drop_drops_the_first_fragment_of_a_flow_being_inspected(dropping, v6):
    flow = Flow(dropping, v6=v6)
    payload = small_hello(b"allowed.example")
    frames = flow.fragments(payload)
    before = dropping.counters()
    # Later fragments pass: without the first the receiver rebuilds nothing.
    assert flow.send_fragments(frames[::-1]) == ["pass"] * (len(frames) - 1) + ["drop"]
    counts = moved(dropping, before)
    assert counts["frag_dropped"] == 1 and "flows_tls" not in counts
    # Sent whole, the hello names the flow; its fragments then take its verdict.
    assert flow.send_whole(payload) == "pass"
    assert flow.send_fragments(flow.fragments(b"x" * 600, seq=ISN + 1 + len(payload))) == ["pass"] * 3


def test_fragments_drop_leaves_other_udp_alone(dropping):
    frames = ip_fragments(udp_frame(bytes(3000), sport=next(ports), dport=53), 1024, ident=next(idents))
    assert [classify(dropping, frame).verdict for frame in frames] == ["pass"] * 3


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_fragments_drop_drops_a_quic_initial_sent_in_fragments(dropping, v6):
    datagram = initial_packet(crypto_frame(0, handshake_client_hello(b"allowed.example")), size=1200)
    frames = ip_fragments(udp_frame(datagram, sport=next(ports), v6=v6), 512, ident=next(idents))
    assert [classify(dropping, frame).verdict for frame in frames] == ["drop", "pass", "pass"]


@pytest.fixture(scope="module", params=HOOKS)
def quic(make_datapath, request):
    """A data plane whose QUIC Initials are read by the controller's QuicFlows, at either hook."""
    dp = make_datapath(POLICY.format(inspection=""), events=True)
    return AtHook(dp, request.param), QuicFlows(dp)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("order", ORDERS)
def test_a_quic_initial_sent_in_fragments_is_named_and_its_flow_blocked(quic, order, v6):
    dp, flows = quic
    port = next(ports)
    datagram = initial_packet(crypto_frame(0, handshake_client_hello(b"blocked.example")), size=1200)
    frames = ORDERS[order](ip_fragments(udp_frame(datagram, sport=port, v6=v6), 400, ident=next(idents)))
    before, named = dp.counters(), flows.outcomes["sni_found"]
    # The controller decides a QUIC flow: every fragment passes meanwhile.
    assert [classify(dp, frame).verdict for frame in frames] == ["pass"] * len(frames)
    assert moved(dp, before)["quic_datagrams"] == 1
    dp.poll_rings(0)
    assert flows.outcomes["sni_found"] == named + 1
    assert classify(dp, udp_frame(b"\x40" + bytes(40), sport=port, v6=v6)).verdict == "drop"
