"""Byte-identical repeats of a QUIC datagram, in the real program (bpf/quic.h,
sluice_stage_quic), beside tests/test_quic.py's IPv4 cases.

zapret's most common QUIC strategy sends a valid Initial of another
connection (its own DCID, naming www.google.com) N times, byte for byte,
ahead of the real Initial on the same addresses and ports
(--dpi-desync=fake --dpi-desync-repeats=N). A server ignores duplicates; so
must the data plane: a repeat of a datagram the flow already handed to the
controller is not handed over again, nor counted in the inspection window,
whatever N is (a flow's first datagram is not signed: its first repeat goes
over once more). Distinct datagrams still spend the window: it stays a bound.
Fakes the server's UDP drops for a length they do not fit spend none of it.
"""

import pytest
from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether

from helpers import HOOKS, AtHook, classify, needs_root
from sluice.policy import DEFAULT_WINDOW_PACKETS
from sluice.quic_flows import QuicFlows

from packets import ip_fragments, udp_frame, with_ip_len_extra
from quic_packets import crypto_frame, handshake_client_hello, initial_packet, short_header_packet, two_datagram_hello

pytestmark = [pytest.mark.bpf, needs_root]

POLICY = """\
version: 1
rules:
  - {name: blocked, action: block, domains: [blocked.example]}
"""
FAKE = initial_packet(crypto_frame(0, handshake_client_hello(b"www.google.com")), dcid=b"\x0f" * 8, size=1200)
REAL_HELLOS = {"one-datagram": lambda: [initial_packet(crypto_frame(0, handshake_client_hello(b"blocked.example")),
                                                       dcid=b"\xa1" * 8, size=1200)],
               "two-datagrams": lambda: two_datagram_hello(b"blocked.example", b"\xa1" * 8)}
ports = iter(range(46000, 50000))


@pytest.fixture(scope="module", params=HOOKS)
def quic(make_datapath, request):
    """A data plane whose QUIC Initials are read by the controller's QuicFlows, at either hook."""
    dp = make_datapath(POLICY, events=True)
    return AtHook(dp, request.param), QuicFlows(dp)


def send(quic, datagrams, *, port: int, v6: bool = False) -> dict[str, int]:
    """Send the client's datagrams, the controller reading the ring after
    each (so the fake settles the flow first, as a quick controller would);
    returns how the counters moved."""
    dp, _flows = quic
    before = dp.counters()
    for datagram in datagrams:
        assert classify(dp, udp_frame(datagram, sport=port, v6=v6)).verdict == "pass"
        dp.poll_rings(0)
    after = dp.counters()
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


def later_packet_verdict(quic, port: int, v6: bool = False) -> str:
    return classify(quic[0], udp_frame(short_header_packet(), sport=port, v6=v6)).verdict


@pytest.mark.parametrize("hello", REAL_HELLOS)
@pytest.mark.parametrize("repeats", [20, 64])
def test_identical_fakes_however_many_leave_an_ipv6_flows_real_hello_read(quic, repeats, hello):
    """An IPv6 flow's key in flows is its number (flow_key.h): its
    signatures are found under it as an IPv4 flow's are under its addresses."""
    port = next(ports)
    real = REAL_HELLOS[hello]()
    moved = send(quic, [FAKE] * repeats + real, port=port, v6=True)
    assert later_packet_verdict(quic, port, v6=True) == "drop"
    assert moved["quic_datagrams"] == 2 + len(real)
    assert moved.get("quic_repeats") == repeats - 2


def test_repeats_of_the_fake_and_of_the_real_hello_interleaved_are_each_handed_over_once(quic):
    """Repeats interleaved, as a client that sends its fake before each
    retransmission would: the real hello's copies are skipped as the
    fake's are (the fake, first on the flow and unsigned, goes twice)."""
    port = next(ports)
    first, second = REAL_HELLOS["two-datagrams"]()
    moved = send(quic, [FAKE, first, FAKE, first] * 12 + [second], port=port)
    assert later_packet_verdict(quic, port) == "drop"
    assert moved["quic_datagrams"] == 4
    assert moved["quic_repeats"] == 4 * 12 - 3


def test_distinct_datagrams_still_spend_the_window(quic):
    """Fakes that differ (each its own connection) are each handed over, up
    to the window: past it the real hello is not read, and the flow keeps
    the fakes' verdict. The bound holds."""
    port = next(ports)
    fakes = [initial_packet(crypto_frame(0, handshake_client_hello(b"www.google.com")),
                            dcid=index.to_bytes(8, "big"), size=1200) for index in range(DEFAULT_WINDOW_PACKETS)]
    moved = send(quic, [*fakes, *REAL_HELLOS["one-datagram"]()], port=port)
    assert later_packet_verdict(quic, port) == "pass"
    assert moved["quic_datagrams"] == DEFAULT_WINDOW_PACKETS and "quic_repeats" not in moved


def udp_length_says(frame: bytes, udp_len: int) -> bytes:
    """frame, its UDP header's length field udp_len (the IP length and the payload as they were)."""
    packet = Ether(frame)
    packet[UDP].len = udp_len
    del packet[UDP].chksum
    return bytes(packet)


# Ways a client makes a datagram the server's UDP drops for its length
# (Linux: ip_rcv_core, ipv6_rcv; __udp4_lib_rcv, __udp6_lib_rcv: short_packet).
# Each gives the frames that carry the datagram.
DROPPED_DATAGRAMS = {
    "ip_length_past_the_frame": lambda frame: [with_ip_len_extra(frame, 100)],
    "udp_length_past_the_datagram": lambda frame: [udp_length_says(frame, len(Ether(frame)[UDP]) + 1)],
    "udp_length_shorter_than_its_header": lambda frame: [udp_length_says(frame, 4)],
    "udp_length_past_the_fragmented_datagram":
        lambda frame: ip_fragments(udp_length_says(frame, len(Ether(frame)[UDP]) + 1), 512)}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("made", DROPPED_DATAGRAMS)
def test_fakes_the_server_drops_for_their_length_spend_no_window(quic, made, v6):
    """A window's worth of distinct fake Initials, each with a length its
    datagram does not fit: the server reads none of them, nor does the data
    plane, and the real hello after them is read and blocked. (Read, they
    would spend the window: test_distinct_datagrams_still_spend_the_window.)
    The flow's first datagram is handed over as its IP length says
    (quic_refused_for_length() in bpf/quic.h): the first fake goes over."""
    dp, _flows = quic
    port = next(ports)
    before = dp.counters()
    for index in range(DEFAULT_WINDOW_PACKETS):
        fake = initial_packet(crypto_frame(0, handshake_client_hello(b"www.google.com")),
                              dcid=(index + 1000).to_bytes(8, "big"), size=1200)
        for frame in DROPPED_DATAGRAMS[made](udp_frame(fake, sport=port, v6=v6)):
            assert classify(dp, frame).verdict == "pass"
        dp.poll_rings(0)
    moved = send(quic, REAL_HELLOS["one-datagram"](), port=port, v6=v6)
    assert later_packet_verdict(quic, port, v6=v6) == "drop"
    assert moved["quic_datagrams"] == 1
    truncated = dp.counters()["evasion_truncated"] - before["evasion_truncated"]
    assert truncated == DEFAULT_WINDOW_PACKETS - 1


def test_a_datagram_padded_past_its_udp_length_is_read_to_that_length(quic):
    """Bytes past the UDP length are not the datagram's: the server trims
    them (and drops an Initial left shorter than 1200 bytes, RFC 9000
    14.1). Padded past a length that leaves the Initial short, the hello is
    not handed over; padded past its own length, it is, and read."""
    hello = REAL_HELLOS["one-datagram"]()[0]
    short_port, whole_port = next(ports), next(ports)
    # Each flow's first datagram is handed over whole (see the test above): a fake opens it.
    send(quic, [FAKE], port=short_port)
    send(quic, [FAKE], port=whole_port)
    cut = udp_length_says(udp_frame(hello, sport=short_port), 8 + 1000)
    before = quic[0].counters()["quic_datagrams"]
    assert classify(quic[0], cut).verdict == "pass"
    assert quic[0].counters()["quic_datagrams"] == before
    quic[0].poll_rings(0)
    assert later_packet_verdict(quic, short_port) == "pass"
    padded = udp_frame(hello + bytes(64), sport=whole_port)
    assert classify(quic[0], udp_length_says(padded, 8 + len(hello))).verdict == "pass"
    quic[0].poll_rings(0)
    assert later_packet_verdict(quic, whole_port) == "drop"


def test_a_new_flow_on_the_same_ports_starts_its_signatures_afresh(quic):
    """A flow gone idle and started again hands its datagrams over even if
    the earlier flow, under the same key, had handed over the same bytes."""
    dp, _flows = quic
    port, now = next(ports), 5 * 10**12
    idle_ns = dp.config().flow_idle_jiffies * dp.config().jiffy_ns
    dp.set_config(clock_ns=now)
    try:
        real = REAL_HELLOS["one-datagram"]()
        assert send(quic, [FAKE, *real], port=port)["quic_datagrams"] == 2
        dp.set_config(clock_ns=now + 2 * idle_ns)
        moved = send(quic, [FAKE, *real], port=port)
    finally:
        dp.set_config(clock_ns=0)
    assert moved["quic_datagrams"] == 2 and moved["flows_expired"] == 1 and "quic_repeats" not in moved
