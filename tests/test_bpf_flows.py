"""Flow tracking in the real XDP program: one verdict per flow, both ways, for as long as it lives."""

import ctypes
import os
import time

import bcc
import pytest

from helpers import judge, needs_root
from sluice.abi import ABI
from sluice.clocks import coarse_tick_ns, in_jiffies
from sluice.testrun import run_xdp
from packets import client_hello, http_request, tcp_frame

pytestmark = [pytest.mark.bpf, needs_root]

POLICY = """\
version: 1
inspection: {window_packets: 3}
rules:
  - {name: blocked, action: block, domains: [blocked.example]}
  - {name: watched, action: block, mode: monitor, domains: [watched.example]}
  - {name: allowed, action: allow, domains: [allowed.example]}
"""


@pytest.fixture(scope="module")
def dp(make_datapath):
    return make_datapath(POLICY, events=True)


def send(dp, payload=b"", **options):
    return run_xdp(dp.function.fd, tcp_frame(payload, **options)).verdict


def test_handshake_passes_and_block_starts_at_the_classifying_packet(dp):
    port = 31000
    assert send(dp, flags="S", sport=port) == "pass"
    assert send(dp, flags="SA", sport=port, reply=True) == "pass"
    assert send(dp, flags="A", sport=port) == "pass"
    assert send(dp, client_hello(b"blocked.example"), sport=port) == "drop"
    # Every later packet, either way, with or without payload, is dropped.
    assert send(dp, b"server data", sport=port, reply=True) == "drop"
    assert send(dp, flags="A", sport=port, reply=True) == "drop"
    assert send(dp, flags="A", sport=port) == "drop"
    assert send(dp, flags="FA", sport=port) == "drop"


def test_an_allowed_flow_passes_both_ways(dp):
    port = judge(dp, client_hello(b"open.example")).port
    assert send(dp, b"x" * 1000, sport=port, reply=True) == "pass"
    assert send(dp, b"y" * 1000, sport=port) == "pass"


def test_both_directions_share_one_entry(dp):
    port = judge(dp, client_hello(b"blocked.example"), v6=True).port
    assert send(dp, b"reply", sport=port, v6=True, reply=True) == "drop"
    entries = [key for key in dp.flow_table().keys()
               if socket_port(key.port_lo) == port or socket_port(key.port_hi) == port]
    assert len(entries) == 1


def socket_port(raw: int) -> int:
    return int.from_bytes(raw.to_bytes(2, "little"), "big")


def open_flow(dp, hello: bytes, port: int, **frame_options) -> str:
    """A SYN then the client's hello; the hello's verdict."""
    send(dp, flags="S", sport=port, **frame_options)
    return send(dp, hello, sport=port, **frame_options)


def entries_of_port(dp, port: int) -> list:
    """The flow_keys of the flow table's entries whose client used port."""
    return [key for key in dp.flow_table().keys() if port in (socket_port(key.port_lo), socket_port(key.port_hi))]


def test_ipv6_flows_whose_addresses_differ_only_in_their_first_bytes_are_separate(dp):
    """An IPv6 flow's key in the flow table is a number given to its whole
    address pair (bpf/flow.h), not a part of the addresses: two clients that
    share their last 12 bytes and port keep their own verdicts."""
    port = 31600
    blocked, allowed = dict(v6=True, src="2001:db8:1::5"), dict(v6=True, src="2001:db8:2::5")
    assert open_flow(dp, client_hello(b"blocked.example"), port, **blocked) == "drop"
    assert open_flow(dp, client_hello(b"allowed.example"), port, **allowed) == "pass"
    for reply in (False, True):
        assert send(dp, b"data", sport=port, reply=reply, **blocked) == "drop"
        assert send(dp, b"data", sport=port, reply=reply, **allowed) == "pass"
    assert len(entries_of_port(dp, port)) == 2


def test_an_ipv4_flow_and_ipv6_flows_with_the_same_last_bytes_are_separate(dp):
    """An IPv4 flow's key holds its 4-byte addresses; IPv6 flows whose
    addresses end in the same bytes, IPv4-mapped ones (which look like the
    IPv4 flow's own in a 40-byte flow_key) included, are flows of their own."""
    port = 31610
    ipv4 = dict(src="192.0.2.2", dst="198.51.100.2")
    ipv6_alike = [dict(v6=True, src="2001:db8::c000:202", dst="2001:db8::c633:6402"),
                  dict(v6=True, src="::ffff:192.0.2.2", dst="::ffff:198.51.100.2")]
    assert open_flow(dp, client_hello(b"blocked.example"), port, **ipv4) == "drop"
    for addresses in ipv6_alike:
        assert open_flow(dp, client_hello(b"allowed.example"), port, **addresses) == "pass"
    for reply in (False, True):
        assert send(dp, b"data", sport=port, reply=reply, **ipv4) == "drop"
        for addresses in ipv6_alike:
            assert send(dp, b"data", sport=port, reply=reply, **addresses) == "pass"
    assert sorted(key.ipv6 for key in entries_of_port(dp, port)) == [0, 1, 1]


def test_an_ipv6_flow_the_index_forgot_never_takes_another_flows_entry(dp):
    """The index from an IPv6 flow's flow_key to its number (ipv6_flows) is
    an LRU table, which may forget a flow whose entry the flow table keeps.
    Blocked flows forgotten (their index entries gone, as an eviction takes
    them: the kernel's LRU keeps the entries its programs use against
    inserts from user space, so filling the table from here would not), a
    forgotten flow is at worst inspected afresh, and its old entry, which
    says drop, is applied to no flow opened after it: here another
    client's on the same ports, picked up mid-stream."""
    ports = range(31620, 31628)
    for port in ports:
        assert open_flow(dp, client_hello(b"blocked.example"), port, v6=True) == "drop"
    forgotten = [key for port in ports for key in entries_of_port(dp, port)]
    assert len(forgotten) == len(ports)
    entries = dp.flow_count()
    index = dp.table("ipv6_flows")
    for key in forgotten:
        del index[key]
    assert dp.flow_count() == entries, "the flow table keeps their entries"

    created = dp.counters()["flows_created"]
    for port in ports:      # another client, the same ports, picked up mid-stream (no SYN resets an entry)
        assert send(dp, b"data", sport=port, v6=True, src="2001:db8:c::3") == "pass"
        assert send(dp, b"data", sport=port, reply=True, v6=True, src="2001:db8:c::3") == "pass"
    assert dp.counters()["flows_created"] == created + len(ports), "a new flow found an entry"
    for port in ports:
        assert send(dp, flags="A", sport=port, reply=True, v6=True) == "pass"   # no entry: not worth one
        assert send(dp, client_hello(b"blocked.example"), sport=port, v6=True) == "drop"


def test_a_datapath_on_pinned_state_numbers_ipv6_flows_on_from_where_the_last_one_stopped(make_datapath):
    """A restarted controller takes the flows over from their pins, and with
    them each CPU's count of IPv6 flows: numbering afresh would give a new
    flow the number of one the pinned table still holds. On one CPU, so
    that both data planes count on the same one."""
    pin_dir = f"/sys/fs/bpf/sluice-test-{os.getpid()}-numbers"
    os.mkdir(pin_dir)
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        first = make_datapath(POLICY, pin_dir=pin_dir)
        assert send(first, client_hello(b"blocked.example"), sport=31640, v6=True) == "drop"
        first.close()
        second = make_datapath(POLICY, pin_dir=pin_dir)
        # Another client, the same ports: only the number tells the two apart.
        assert send(second, b"data", sport=31640, v6=True, src="2001:db8:c::3") == "pass"
        assert send(second, b"data", sport=31640, v6=True) == "drop"
        second.close()
    finally:
        os.sched_setaffinity(0, cpus)
        for name in os.listdir(pin_dir):
            os.unlink(os.path.join(pin_dir, name))
        os.rmdir(pin_dir)


def test_window_runs_out_then_a_late_hello_is_not_judged(dp):
    port = 31100
    before = dp.counters()["gave_up"]
    send(dp, flags="S", sport=port)
    for _ in range(3):
        assert send(dp, b"\x00junk before any hello", sport=port) == "pass"
    assert dp.counters()["gave_up"] == before + 1
    assert send(dp, client_hello(b"blocked.example"), sport=port) == "pass"


def test_a_hello_inside_the_window_after_junk_is_judged(dp):
    port = 31150
    send(dp, flags="S", sport=port)
    assert send(dp, b"\x00junk", sport=port) == "pass"
    assert send(dp, client_hello(b"blocked.example"), sport=port) == "drop"


def test_the_server_cannot_name_the_flow_once_the_client_is_known(dp):
    port = 31200
    send(dp, flags="S", sport=port)
    assert send(dp, http_request("blocked.example"), sport=port, reply=True) == "pass"
    assert send(dp, client_hello(b"open.example"), sport=port) == "pass"
    assert send(dp, b"more", sport=port, reply=True) == "pass"


def test_a_new_connection_on_a_reused_tuple_is_judged_afresh(dp):
    """Its SYN (another sequence number) is held, and passes; its data at
    that SYN's stream start says the old connection is gone."""
    new_isn = 7_000_000
    for old, new, verdict in [(b"blocked.example", b"open.example", "pass"),
                              (b"open.example", b"blocked.example", "drop")]:
        port = judge(dp, client_hello(old)).port
        before = dp.counters()["flows_reopened"]
        assert send(dp, flags="S", sport=port, seq=new_isn) == "pass"
        assert send(dp, client_hello(new), sport=port, seq=new_isn + 1) == verdict
        assert dp.counters()["flows_reopened"] == before + 1


def test_the_flows_own_syn_sent_again_keeps_its_verdict(dp):
    port = judge(dp, client_hello(b"blocked.example")).port
    assert send(dp, flags="S", sport=port) == "drop"
    assert send(dp, client_hello(b"blocked.example"), sport=port) == "drop"


def test_flows_that_were_open_before_sluice_are_inspected_from_their_next_payload(dp):
    judgement = judge(dp, client_hello(b"blocked.example"), syn=False)
    assert judgement.verdict == "drop"


def test_idle_flows_expire_and_are_inspected_afresh(dp):
    now = 5 * 10**12
    dp.set_config(clock_ns=now, flow_idle_jiffies=in_jiffies(60 * 10**9, coarse_tick_ns()))
    try:
        port = judge(dp, client_hello(b"blocked.example")).port
        dp.set_config(clock_ns=now + 59 * 10**9)
        assert send(dp, b"still blocked", sport=port) == "drop"
        before = dp.counters()["flows_expired"]
        dp.set_config(clock_ns=now + 59 * 10**9 + 61 * 10**9)
        assert send(dp, client_hello(b"open.example"), sport=port) == "pass"
        assert dp.counters()["flows_expired"] == before + 1
    finally:
        dp.set_config(clock_ns=0, flow_idle_jiffies=in_jiffies(dp.policy.flow_idle_ns, coarse_tick_ns()))


def test_idle_flows_expire_on_the_kernels_own_clock(dp):
    """As above on the running clock, jiffies (flow_now() in flow.h): a flow
    seen again within its idle time keeps its verdict; one seen again after
    it is inspected afresh."""
    idle_s = 0.3
    dp.set_config(clock_ns=0, flow_idle_jiffies=in_jiffies(int(idle_s * 10**9), coarse_tick_ns()))
    try:
        port = judge(dp, client_hello(b"blocked.example")).port
        before = dp.counters()["flows_expired"]
        assert send(dp, b"still blocked", sport=port) == "drop"
        time.sleep(2 * idle_s)
        assert send(dp, client_hello(b"open.example"), sport=port) == "pass"
        assert dp.counters()["flows_expired"] == before + 1
    finally:
        dp.set_config(flow_idle_jiffies=in_jiffies(dp.policy.flow_idle_ns, coarse_tick_ns()))


def test_a_flow_seen_a_tick_earlier_on_another_cpu_is_not_idle(dp):
    """jiffies read on one CPU may come a tick behind the read another CPU
    stored in the flow (flow_is_idle() in flow.h): that is no idle time,
    and the flow keeps its verdict."""
    tick = coarse_tick_ns()
    now = 5 * 10**12 // tick * tick
    dp.set_config(clock_ns=now)
    try:
        port = judge(dp, client_hello(b"blocked.example")).port
        dp.set_config(clock_ns=now - tick)
        assert send(dp, client_hello(b"open.example"), sport=port) == "drop"
    finally:
        dp.set_config(clock_ns=0)


def test_a_flow_stamped_in_nanoseconds_by_an_older_sluice_is_idle(dp):
    """Flows pinned by a sluice that kept last_seen in nanoseconds read as
    far ahead of the jiffies clock: inspected afresh, not kept for good."""
    port = judge(dp, client_hello(b"blocked.example")).port
    table = dp.flow_table()
    [key] = entries_of_port(dp, port)
    flow = table[key]
    flow.last_seen = time.monotonic_ns()
    table[key] = flow
    before = dp.counters()["flows_expired"]
    assert send(dp, client_hello(b"open.example"), sport=port) == "pass"
    assert dp.counters()["flows_expired"] == before + 1


def test_monitor_mode_counts_the_rule_and_passes(dp):
    rule = dp.policy.rule_by_name("watched")
    before = dp.rule_stats()[rule.id]
    port = judge(dp, client_hello(b"watched.example")).port
    assert send(dp, b"x" * 500, sport=port, reply=True) == "pass"
    after = dp.rule_stats()[rule.id]
    assert after["flows"] == before["flows"] + 1
    assert after["packets"] == before["packets"] + 2
    assert after["dropped_packets"] == before["dropped_packets"] == 0


def test_rule_counters_add_up(dp):
    rule = dp.policy.rule_by_name("blocked")
    before = dp.rule_stats()[rule.id]
    port = judge(dp, client_hello(b"blocked.example")).port
    reply = tcp_frame(b"z" * 300, sport=port, reply=True)
    run_xdp(dp.function.fd, reply)
    after = dp.rule_stats()[rule.id]
    hello_frame = len(tcp_frame(client_hello(b"blocked.example"), sport=port))
    assert after["up"]["dropped_packets"] - before["up"]["dropped_packets"] == 1
    assert after["up"]["dropped_bytes"] - before["up"]["dropped_bytes"] == hello_frame
    assert after["down"]["dropped_bytes"] - before["down"]["dropped_bytes"] == len(reply)
    assert after["flows"] == before["flows"] + 1


def test_allow_rule_passes_and_counts(dp):
    rule = dp.policy.rule_by_name("allowed")
    before = dp.rule_stats()[rule.id]["flows"]
    assert judge(dp, client_hello(b"cdn.allowed.example")).verdict == "pass"
    assert dp.rule_stats()[rule.id]["flows"] == before + 1


def test_classification_events_name_the_flow(dp):
    events = []
    event_type = ctypes.POINTER(dp.table("event_buffers").sLeaf)
    ring = dp.table("events")
    ring.open_ring_buffer(lambda _ctx, data, _size: events.append(ctypes.cast(data, event_type).contents))
    dp.consume_rings()
    events.clear()
    port = judge(dp, http_request("Blocked.Example:8080"), dport=80).port
    dp.consume_rings()
    assert len(events) == 1
    event = events[0]
    assert bytes(event.name[:event.name_len]) == b"blocked.example"
    assert event.proto == ABI.SLUICE_PROTO_HTTP
    assert event.action == ABI.SLUICE_ACTION_BLOCK
    assert dp.policy.rule_by_id(event.rule_id).name == "blocked"
    client_port = event.key.port_hi if event.client_is_hi else event.key.port_lo
    assert socket_port(client_port) == port


def test_window_also_ends_after_its_bytes(make_datapath):
    bytes_dp = make_datapath("version: 1\ninspection: {window_packets: 20, window_bytes: 3000B}\n"
                             "rules:\n  - {name: blocked, action: block, domains: [blocked.example]}\n")
    port = 31300
    send(bytes_dp, flags="S", sport=port)
    before = bytes_dp.counters()["gave_up"]
    assert send(bytes_dp, b"\x00" * 1200, sport=port) == "pass"
    assert send(bytes_dp, b"\x00" * 1200, sport=port) == "pass"
    assert bytes_dp.counters()["gave_up"] == before, "2400 bytes: still inside the window"
    assert send(bytes_dp, b"\x00" * 1200, sport=port) == "pass"
    assert bytes_dp.counters()["gave_up"] == before + 1
    assert send(bytes_dp, client_hello(b"blocked.example"), sport=port) == "pass"


def test_the_flow_count_counts_every_entry_of_a_table_larger_than_a_batch(make_datapath):
    """flow_count() (what a scrape and `sluice status` report) reads the table a
    batch at a time: every entry once, none skipped at a batch's edge."""
    dp = make_datapath(POLICY)
    flows = dp.table("flows")
    count = 3 * 8192 + 123          # three full batches and a part
    keys = (flows.Key * count)()
    values = (flows.Leaf * count)()
    for index in range(count):
        keys[index].port_lo = index & 0xFFFF
        keys[index].port_hi = 443
        keys[index].lo = index >> 16
    flows.items_update_batch(keys, values)
    assert dp.flow_count() == count
    del flows[keys[0]]
    assert dp.flow_count() == count - 1


def test_a_missed_tail_call_is_counted_and_the_packet_passes(dp):
    """A stage missing from the program array (its pin was lost, or
    something deleted it): the tail call returns, and the packet passes unjudged, but
    counted, where it would otherwise pass in silence, and exported."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from sluice.metrics import SluiceCollector
    registry = CollectorRegistry()
    registry.register(SluiceCollector(SimpleNamespace(datapath=dp, policy=dp.policy, loaded_at=0.0,
                                                      policy_digest="", reloads={"success": 0, "failure": 0})))
    exported_before = registry.get_sample_value("sluice_stage_missed_total")
    stages, tls = dp.table("stages"), ctypes.c_int(ABI.SLUICE_STAGE_TLS)
    stage = bcc.lib.bpf_prog_get_fd_by_id(stages[tls].value)   # the slot holds the program's id
    assert stage >= 0
    del stages[tls]
    try:
        missed = judge(dp, client_hello(b"blocked.example"))
    finally:
        stages[tls] = ctypes.c_int(stage)
        os.close(stage)
    assert missed.verdict == "pass"
    assert missed.moved() == {"stage_missed": 1}
    assert registry.get_sample_value("sluice_stage_missed_total") == exported_before + 1
    found = judge(dp, client_hello(b"blocked.example"))
    assert found.verdict == "drop" and "stage_missed" not in found.moved()


def test_a_scrape_holds_off_the_unload_of_its_datapath_and_one_after_it_reports_nothing(make_datapath):
    """A reload swaps a Datapath out, and a stop unloads it, while the
    exporter's thread may be reading its maps: the unload waits for the
    scrape, and a scrape of an unloaded Datapath yields none of its
    families (it raised KeyError, a traceback on the controller's stderr)."""
    import threading
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from sluice.metrics import SluiceCollector
    datapath = make_datapath("version: 1\nrules:\n  - name: x\n    action: block\n    domains: [x.example]\n")
    registry = CollectorRegistry()
    registry.register(SluiceCollector(SimpleNamespace(datapath=datapath, policy=datapath.policy, loaded_at=0.0,
                                                      policy_digest="", reloads={"success": 0, "failure": 0})))
    assert registry.get_sample_value("sluice_packets_total") == 0
    unloader = threading.Thread(target=datapath.unload)
    with datapath.in_use() as loaded:
        assert loaded
        unloader.start()
        unloader.join(0.3)
        assert unloader.is_alive(), "the unload waits for the scrape"
    unloader.join(10)
    assert not unloader.is_alive()
    assert registry.get_sample_value("sluice_packets_total") is None
