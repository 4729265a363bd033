"""The throttle policer in the real XDP program, on a frozen, stepped clock.

The data plane takes its time from sluice_config.clock_ns when that is set,
so these tests replay exact packet timings: a token bucket of depth `burst`
at rate `r` must pass exactly burst + r*t bytes over t, per direction, and
drop the rest. Its coarse clock then reads that time rounded down to
clock_tick_ns, set here to this machine's tick, as the real one moves: a
bucket deep enough for it is policed on it (sluice.clocks), give or take a
tick's worth of bytes.
"""

import ctypes
import os

import pytest
from scapy.all import IP, TCP, Ether, Raw

from sluice.abi import ABI
from sluice.clocks import COARSE_CLOCK_TICKS, coarse_tick_ns
from sluice.datapath import Datapath
from sluice.policy import load_policy
from sluice.testrun import run_xdp

from packets import client_hello

pytestmark = [pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]

CLIENT, OTHER_CLIENT, SERVER = "192.0.2.2", "192.0.2.3", "198.51.100.2"
# Explicit addresses: without them scapy would ARP for each frame it builds.
ETHER = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
TICK_NS = coarse_tick_ns()
START_NS = 10**12 // TICK_NS * TICK_NS   # on a tick: the coarse clock reads it exactly
FRAME = 1000                     # bytes per test frame
PAYLOAD = FRAME - 14 - 20 - 20   # Ethernet, IPv4, TCP headers
# A bucket 8 ticks deep at 1 byte per microsecond: policed on the coarse clock.
DEEP_BURST = 2 * COARSE_CLOCK_TICKS * TICK_NS // 1000

POLICY = f"""\
version: 1
rules:
  - name: per-flow
    action: throttle
    up: {{rate: 8mbit, burst: 3000B}}       # 1 byte per microsecond
    down: {{rate: 16mbit, burst: 5000B}}    # 2 bytes per microsecond
    domains: [flow.example]
  - name: per-client
    action: throttle
    rate: 8mbit
    burst: 2000B
    scope: client
    domains: [client.example]
  - name: per-rule
    action: throttle
    rate: 8mbit
    burst: 2000B
    scope: rule
    domains: [rule.example]
  - name: down-only
    action: throttle
    direction: down
    rate: 8mbit
    burst: 2000B
    domains: [down.example]
  - name: deep
    action: throttle
    rate: 8mbit
    burst: {DEEP_BURST}B
    domains: [deep.example]
  - name: shallow
    action: throttle
    rate: 80mbit                          # 10 bytes per microsecond: a frame per 100 us
    burst: 3000B                          # 300 us: under a tick
    domains: [shallow.example]
"""


@pytest.fixture(scope="module")
def datapath(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "throttle.yaml"
    path.write_text(POLICY)
    loaded = Datapath(load_policy(path))
    yield loaded
    loaded.close()


@pytest.fixture
def clock(datapath):
    """Set the data plane's time, in ns since START_NS; the flow table starts empty."""
    datapath.flow_table().clear()
    datapath.table("client_clocks").clear()
    datapath.table("rule_clocks").clear()

    def set_time(offset_ns: int):
        datapath.set_config(clock_ns=START_NS + offset_ns, clock_tick_ns=TICK_NS)
    set_time(0)
    yield set_time
    datapath.set_config(clock_ns=0, clock_tick_ns=0)


def open_flow(datapath, name: bytes, port: int, client=CLIENT):
    """SYN, then a ClientHello for name: the flow is classified. Returns its two senders."""
    run_xdp(datapath.function.fd, bytes(
        ETHER / IP(src=client, dst=SERVER) / TCP(sport=port, dport=443, flags="S")))
    assert run_xdp(datapath.function.fd, bytes(
        ETHER / IP(src=client, dst=SERVER) / TCP(sport=port, dport=443, flags="PA", seq=1) / Raw(client_hello(name)))
    ).verdict == "pass"   # the hello itself spends tokens, but fits the burst

    def upload():
        return run_xdp(datapath.function.fd, bytes(
            ETHER / IP(src=client, dst=SERVER) / TCP(sport=port, dport=443, flags="A") / Raw(b"u" * PAYLOAD))).verdict

    def download():
        return run_xdp(datapath.function.fd, bytes(
            ETHER / IP(src=SERVER, dst=client) / TCP(sport=443, dport=port, flags="A") / Raw(b"d" * PAYLOAD))).verdict
    return upload, download


def passes(send, count: int) -> int:
    return sum(send() == "pass" for _ in range(count))


def test_each_direction_passes_exactly_its_burst_then_its_rate(datapath, clock):
    upload, download = open_flow(datapath, b"flow.example", 41000)
    hello_frame = 14 + 20 + 20 + len(client_hello(b"flow.example"))
    # Up: 3000 bytes of burst, less what the ClientHello spent.
    assert passes(upload, 10) == (3000 - hello_frame) // FRAME
    # Down: its own bucket of 5000 bytes, untouched by the upload.
    assert passes(download, 10) == 5
    # 4 ms later: up has earned 4000 bytes, down 8000 (capped at its 5000 burst).
    clock(4_000_000)
    assert passes(upload, 10) == 3     # 4000 earned, minus the backlog still owed
    assert passes(download, 10) == 5
    # 1 ms more: exactly one more frame up, two down.
    clock(5_000_000)
    assert passes(upload, 10) == 1
    assert passes(download, 10) == 2


def test_dropped_packets_are_counted_per_direction(datapath, clock):
    rule = datapath.policy.rule_by_name("per-flow")
    before = datapath.rule_stats()[rule.id]
    upload, download = open_flow(datapath, b"flow.example", 41001)
    passed_down = passes(download, 8)
    stats = datapath.rule_stats()[rule.id]
    assert stats["down"]["packets"] - before["down"]["packets"] == 8
    assert stats["down"]["dropped_packets"] - before["down"]["dropped_packets"] == 8 - passed_down
    assert stats["down"]["dropped_bytes"] - before["down"]["dropped_bytes"] == (8 - passed_down) * FRAME


def test_sustained_rate_matches_configuration(datapath, clock):
    """From t=0 to t=1000 ms, offered ten times the rate, exactly burst + rate*t passes."""
    upload, download = open_flow(datapath, b"flow.example", 41002)
    passed_bytes = 0
    for ms in range(0, 1001):
        clock(ms * 1_000_000)
        passed_bytes += passes(download, 20) * FRAME      # offered: 20 kB per ms, 10x the rate
    allowed = 5000 + 2 * 1000 * 1000                      # burst + 2 bytes/us for 1 s
    assert allowed - FRAME <= passed_bytes <= allowed


def test_client_scope_shares_one_bucket_between_a_clients_flows(datapath, clock):
    _, first = open_flow(datapath, b"client.example", 42000)
    _, second = open_flow(datapath, b"client.example", 42001)
    _, other_client = open_flow(datapath, b"client.example", 42002, client=OTHER_CLIENT)
    assert passes(first, 5) == 2
    assert passes(second, 5) == 0, "the client's bucket is already empty"
    assert passes(other_client, 5) == 2, "another client has its own bucket"


def test_rule_scope_shares_one_bucket_between_all_flows(datapath, clock):
    _, first = open_flow(datapath, b"rule.example", 43000)
    _, other_client = open_flow(datapath, b"rule.example", 43001, client=OTHER_CLIENT)
    assert passes(first, 5) == 2
    assert passes(other_client, 5) == 0


def test_unlimited_direction_is_never_dropped(datapath, clock):
    upload, download = open_flow(datapath, b"down.example", 44000)
    assert passes(upload, 50) == 50
    assert passes(download, 50) == 2


def test_unthrottled_flow_is_untouched(datapath, clock):
    upload, download = open_flow(datapath, b"open.example", 45000)
    assert passes(download, 200) == 200
    assert passes(upload, 200) == 200


def police_clocks(datapath, rule_name: str) -> tuple[int, int]:
    """The clocks (enum sluice_rate_clock) the data plane polices a rule's up and down on."""
    rule = datapath.policy.rule_by_name(rule_name)
    info = datapath.table("rules")[ctypes.c_uint32(datapath.generation * ABI.SLUICE_MAX_RULES + rule.id)]
    return info.limit[ABI.SLUICE_DIR_UP].clock, info.limit[ABI.SLUICE_DIR_DOWN].clock


def set_police_clock(datapath, rule_name: str, clock: int) -> None:
    """Make the data plane police a rule on another clock than the controller chose."""
    rule = datapath.policy.rule_by_name(rule_name)
    rules = datapath.table("rules")
    key = ctypes.c_uint32(datapath.generation * ABI.SLUICE_MAX_RULES + rule.id)
    info = rules[key]
    for direction in (ABI.SLUICE_DIR_UP, ABI.SLUICE_DIR_DOWN):
        info.limit[direction].clock = clock
    rules[key] = info


def test_the_clock_follows_the_buckets_depth_in_ticks(datapath):
    assert police_clocks(datapath, "deep") == (ABI.SLUICE_CLOCK_COARSE,) * 2
    assert police_clocks(datapath, "shallow") == (ABI.SLUICE_CLOCK_PRECISE,) * 2
    assert police_clocks(datapath, "per-flow") == (ABI.SLUICE_CLOCK_PRECISE,) * 2


@pytest.mark.parametrize("clock_kind", [ABI.SLUICE_CLOCK_COARSE, ABI.SLUICE_CLOCK_PRECISE],
                         ids=["coarse", "precise"])
def test_a_deep_bucket_keeps_its_rate_over_a_second_on_either_clock(datapath, clock, clock_kind):
    """The same packet train, offered at three times the rate in steps that
    do not divide the tick, on the deep rule policed on each clock: both pass
    burst + rate*t, the coarse one short by at most a tick's worth."""
    set_police_clock(datapath, "deep", clock_kind)
    try:
        upload, _ = open_flow(datapath, b"deep.example", 46000 + clock_kind)
        hello_frame = 14 + 20 + 20 + len(client_hello(b"deep.example"))
        passed_bytes = hello_frame
        step_ns, last_ns = 700_000, 10**9
        for at_ns in range(0, last_ns + 1, step_ns):
            clock(at_ns)
            passed_bytes += passes(upload, 3) * FRAME     # 3000 bytes per 700 us: 4.3x the rate
    finally:
        set_police_clock(datapath, "deep", ABI.SLUICE_CLOCK_COARSE)
    last_step_ns = last_ns - last_ns % step_ns
    precise = DEEP_BURST + last_step_ns // 1000           # burst + 1 byte/us
    tick_bytes = TICK_NS // 1000
    lowest = precise - FRAME - (tick_bytes if clock_kind == ABI.SLUICE_CLOCK_COARSE else 0)
    assert lowest <= passed_bytes <= precise


def test_a_shallow_bucket_earns_within_a_tick_a_deep_one_at_the_tick(datapath, clock):
    """Drained at a tick, then stepped by 100 us up to the next: the shallow
    rule (precise clock) earns a frame at every step, the deep one (coarse)
    nothing until the tick, then the tick's worth at once."""
    shallow, _ = open_flow(datapath, b"shallow.example", 47000)
    deep, _ = open_flow(datapath, b"deep.example", 47001)
    passes(shallow, 10)
    passes(deep, DEEP_BURST // FRAME + 10)
    steps = range(100_000, TICK_NS, 100_000)
    earned = [(clock(at_ns), passes(shallow, 3), passes(deep, 3))[1:] for at_ns in steps]
    assert earned == [(1, 0)] * len(steps)
    clock(TICK_NS)
    assert passes(deep, 10) == TICK_NS // 1000 // FRAME
