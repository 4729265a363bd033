"""The pacer (shape) and the fixed delay in the real tc egress program, on a frozen clock.

The XDP program classifies a flow; then its packets go through
sluice_tc_egress by BPF_PROG_TEST_RUN, which hands back the departure time
the program wrote into skb->tstamp. fq itself is not involved (this
kernel has none): what is checked is the schedule fq would be given.
"""

import os

import pytest

from sluice.testrun import run_tc, run_xdp
from packets import client_hello, tcp_frame

pytestmark = [pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]

START_NS = 10**12
FRAME = 1000                      # bytes per test frame
PAYLOAD = FRAME - 14 - 20 - 20    # Ethernet, IPv4, TCP headers
COST_NS = 1000 * FRAME            # 8 Mbit/s: one byte per microsecond
HORIZON_NS = 10 * 10**6           # 10 ms: ten frames' worth of waiting
LATENCY_NS, JITTER_NS = 50 * 10**6, 10 * 10**6

POLICY = """\
version: 1
rules:
  - name: paced
    action: shape
    rate: 8mbit
    horizon: 10ms
    domains: [paced.example]
  - name: delayed
    action: delay
    latency: 50ms
    jitter: 10ms
    domains: [delayed.example]
  - name: blocked
    action: block
    domains: [blocked.example]
""" + "".join(f"""\
  - name: paced-{rate}
    action: shape
    rate: {rate}
    horizon: 10s
    domains: [{rate}.paced.example]
""" for rate in ("128kbit", "1.5mbit", "100mbit", "10gbit")) + """\
  - name: paced-slow-short
    action: shape
    rate: 1mbit
    horizon: 10ms
    domains: [slow.paced.example]
"""


@pytest.fixture(scope="module")
def datapath(make_datapath):
    return make_datapath(POLICY)


@pytest.fixture
def egress(datapath):
    """Send frames of a fresh flow through tc egress at frozen times: egress(name) -> send(at_ns)."""
    datapath.flow_table().clear()
    tc_fd = datapath.tc_egress_fd()

    def open_flow(name: bytes, port: int = 41000):
        datapath.set_config(clock_ns=START_NS)
        run_xdp(datapath.function.fd, tcp_frame(sport=port, flags="S"))
        run_xdp(datapath.function.fd, tcp_frame(client_hello(name), sport=port))

        def send(at_ns: int, segments: int = 1):
            """A server -> client frame at START_NS + at_ns, or a GSO packet of
            `segments` frames' payload; (verdict, departure offset or None)."""
            datapath.set_config(clock_ns=START_NS + at_ns)
            result = run_tc(tc_fd, tcp_frame(b"d" * PAYLOAD * segments, sport=port, flags="A", reply=True),
                            gso_segs=segments if segments > 1 else 0)
            return result.verdict, (result.tstamp - START_NS if result.tstamp else None)
        return send
    yield open_flow
    datapath.set_config(clock_ns=0)


def test_back_to_back_packets_depart_one_cost_apart(egress):
    send = egress(b"paced.example")
    departures = [send(0) for _ in range(5)]
    # The first leaves now (no tstamp needed), the rest at the rate.
    assert departures == [("ok", None)] + [("ok", i * COST_NS) for i in range(1, 5)]


@pytest.mark.parametrize("rate, rate_bps", [("128kbit", 128_000), ("1.5mbit", 1_500_000),
                                            ("100mbit", 100_000_000), ("10gbit", 10**10)])
def test_the_schedule_keeps_to_the_configured_rate(egress, rate, rate_bps):
    """A backlog of frames departs at exactly the rate: the wire time of each
    frame, to within a nanosecond per frame (integer picoseconds per byte)."""
    send = egress(f"{rate}.paced.example".encode())
    departures = [send(0)[1] or 0 for _ in range(100)]
    for i, departure in enumerate(departures):
        assert abs(departure - i * FRAME * 8 * 10**9 / rate_bps) <= i, (i, departure)


def test_a_gso_packet_costs_the_frames_it_leaves_as(egress):
    """Three frames' payload in one GSO packet costs three frames, headers and
    all: counting its headers once would let the flow beat its rate. (Three:
    a test run's packet must fit in a page.)"""
    send = egress(b"paced.example")
    assert [send(0, segments=3), send(0)] == [("ok", None), ("ok", 3 * COST_NS)]


def test_a_packet_beyond_the_horizon_is_dropped_and_costs_nothing(egress, datapath):
    send = egress(b"paced.example")
    before = datapath.rule_stats()[1]["down"]
    verdicts = [send(0) for _ in range(14)]
    kept = [v for v in verdicts if v[0] == "ok"]
    # Frames departing at 0, 1, ... 9 ms have left by 10 ms, the horizon;
    # later ones are dropped.
    assert len(kept) == HORIZON_NS // COST_NS
    assert all(v == ("shot", None) for v in verdicts[len(kept):])
    # Had the dropped packets been charged, the next one would wait behind
    # them; it departs right after the last packet that was kept.
    assert send(HORIZON_NS // 2) == ("ok", (len(kept)) * COST_NS)
    after = datapath.rule_stats()[1]["down"]
    assert after["dropped_packets"] - before["dropped_packets"] == len(verdicts) - len(kept)
    # The kept ones after the first, and the last.
    assert after["delayed_packets"] - before["delayed_packets"] == len(kept)


def test_the_horizon_bounds_where_a_packet_ends_not_where_it_starts(egress):
    """A GRO aggregate that would start within the horizon but end beyond it
    is dropped: admitted, it would hold the flow's clock past the horizon,
    and the queue fq keeps would no longer be bounded by it."""
    send = egress(b"paced.example")
    assert [send(0) for _ in range(9)][-1] == ("ok", 8 * COST_NS)
    # Three frames from 9 ms would end at 12 ms.
    assert send(0, segments=3) == ("shot", None)
    assert send(0) == ("ok", 9 * COST_NS)
    assert send(0) == ("shot", None)


def test_an_aggregate_longer_than_the_horizon_passes_only_on_an_idle_clock(egress):
    """At 1 Mbit/s a frame is 8 ms and an aggregate of three is 24 ms, longer
    than the 10 ms horizon (as 64 KB at 128 kbit/s is longer than 2 s): behind
    other packets it is dropped; with nothing to wait behind it leaves at once,
    since refusing it there would starve a flow that GRO keeps aggregating."""
    frame_ns = 8 * COST_NS
    send = egress(b"slow.paced.example")
    assert send(0) == ("ok", None)
    assert send(0, segments=3) == ("shot", None)
    assert send(frame_ns, segments=3) == ("ok", None)
    # It holds the clock until 32 ms: a frame is kept once it ends within
    # the horizon, from 30 ms on.
    assert send(frame_ns + HORIZON_NS) == ("shot", None)
    assert send(4 * frame_ns - 2 * 10**6) == ("ok", 4 * frame_ns)


def test_an_idle_flow_earns_no_credit(egress):
    send = egress(b"paced.example")
    assert send(0) == ("ok", None)
    # A second after its last packet, a burst is paced from now, not from the past.
    assert [send(10**9) for _ in range(3)] == [("ok", None), ("ok", 10**9 + COST_NS),
                                               ("ok", 10**9 + 2 * COST_NS)]


def test_delay_adds_latency_within_the_jitter(egress, datapath):
    send = egress(b"delayed.example")
    before = datapath.rule_stats()[2]["down"]["delayed_packets"]
    departures = [send(i * 10**6)[1] - i * 10**6 for i in range(200)]
    assert all(LATENCY_NS <= d < LATENCY_NS + JITTER_NS for d in departures)
    assert max(departures) - min(departures) > JITTER_NS // 2, "jitter is drawn, not fixed"
    assert datapath.rule_stats()[2]["down"]["delayed_packets"] - before == 200


def test_other_flows_are_untouched_at_egress(egress):
    for name in (b"unnamed.example", b"blocked.example"):
        send = egress(name, port=42000)
        assert [send(0) for _ in range(20)] == [("ok", None)] * 20
