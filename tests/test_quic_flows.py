"""The controller's memory for QUIC flows whose hellos never complete: a
flood of half hellos through the real XDP program and ring, read by the
real QuicFlows, stays within PENDING_BYTES_MAX (tracemalloc-measured), the
oldest flows give way first, a newer flow's real hello is still read, and
the evictions are counted for Prometheus."""

import gc
import struct
import tracemalloc
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from helpers import needs_root
from sluice.metrics import SluiceCollector
from sluice.quic import MAX_CRYPTO_BYTES, QUIC_V1
from sluice.quic_flows import PENDING_BYTES_MAX, PENDING_FLOWS_MAX, QuicFlows
from sluice.testrun import run_xdp
from packets import udp_frame
from quic_packets import DATAGRAM_MIN, crypto_frame, initial_packet, short_header_packet, two_datagram_hello

pytestmark = needs_root

POLICY = """\
version: 1
rules:
  - {name: block-video, action: block, domains: [video.example]}
"""
SERVER_PORT = 443
# Two connections, each of one byte at the end of its stream's room: each
# claims MAX_CRYPTO_BYTES of data and as much of bitmap, which is as much as
# a flow holds for the fewest datagrams (a third such stream would make the
# largest give way, quic.MAX_FLOW_CRYPTO_BYTES). The same bytes on every
# flow: each flow reads its own.
HOARDERS = [initial_packet(crypto_frame(MAX_CRYPTO_BYTES - 1, b"x"), dcid=bytes([0xd0 + index]) * 8,
                           size=DATAGRAM_MIN) for index in range(2)]
HOARDER_BYTES = 2 * 2 * MAX_CRYPTO_BYTES
# What the budget's bound may be passed by, at the peak: a stream's buffers
# grown by the datagram just read (the flows before it give way after), its
# temporaries as large, and what reading a datagram makes and frees (the
# ring's copy, its decryption, the frames).
SLACK_BYTES = 2 * 2 * 2 * MAX_CRYPTO_BYTES + 64 * 1024


@pytest.fixture
def quic_flows(make_datapath):
    """A fresh data plane and QuicFlows per test: a flood fills the one flow table it was sent to."""
    datapath = make_datapath(POLICY, events=True)
    settled = {}
    flows = QuicFlows(datapath, on_settled=lambda key, _hi, hello, rule: settled.update({hello and hello.sni: rule}))
    return datapath, flows, settled


def send(datapath, datagrams, port: int) -> list[str]:
    """A client's datagrams through the XDP program; the controller reads the ring after them."""
    verdicts = [run_xdp(datapath.function.fd, udp_frame(datagram, sport=port)).verdict for datagram in datagrams]
    datapath.consume_rings()
    return verdicts


def client_port(key: bytes) -> int:
    """The client's port of a flow_key (bpf/sluice_abi.h: port_lo, port_hi after the addresses)."""
    ports = set(struct.unpack_from("!HH", key, 32))
    return (ports - {SERVER_PORT}).pop()


def flood(datagrams, ports) -> list[list[bytes]]:
    """Each flow's frames, built ahead of the measurement."""
    return [[udp_frame(datagram, sport=port) for datagram in datagrams] for port in ports]


def send_frames(datapath, flows_frames) -> None:
    for frames in flows_frames:
        for frame in frames:
            run_xdp(datapath.function.fd, frame)
        datapath.consume_rings()
        # run_xdp's ctypes buffers refer to each other: the test's own garbage,
        # which would pile up in the measure until the collector's next round.
        gc.collect(0)


def test_a_flood_of_hoarding_half_hellos_stays_within_the_byte_budget_and_the_oldest_give_way(quic_flows):
    datapath, flows, _settled = quic_flows
    ports = range(20000, 20000 + PENDING_BYTES_MAX // HOARDER_BYTES + 100)
    flows_frames = flood(HOARDERS, ports)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        send_frames(datapath, flows_frames)
        _held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < PENDING_BYTES_MAX + SLACK_BYTES
    assert flows.pending_bytes == sum(reassembler.held for reassembler in flows.pending.values()) <= PENDING_BYTES_MAX
    # The newest stay, every one of them; the oldest gave way.
    kept = sorted(client_port(key) for key in flows.pending)
    assert kept == list(ports[len(ports) - len(kept):])
    assert flows.evicted["memory"] == len(ports) - len(kept) > 0
    assert flows.evicted["count"] == 0
    flows.forget_flows()                                # as replay does between captures
    assert (flows.pending, flows.pending_bytes) == ({}, 0)


def test_a_real_hello_newer_than_a_flood_is_still_read(quic_flows):
    """A browser's hello of two datagrams, begun after half the flood and
    finished after the rest: the flood's older flows give way, not it."""
    datapath, flows, settled = quic_flows
    first, second = two_datagram_hello(b"video.example", b"\xa1" * 8)
    older = flood(HOARDERS, range(21000, 21000 + PENDING_BYTES_MAX // HOARDER_BYTES))
    newer = flood(HOARDERS, range(22000, 22000 + PENDING_BYTES_MAX // HOARDER_BYTES // 2))
    send_frames(datapath, older)
    assert send(datapath, [first], 23000) == ["pass"]
    send_frames(datapath, newer)
    assert flows.evicted["memory"] >= len(newer)
    assert send(datapath, [second], 23000) == ["pass"]
    assert settled["video.example"].name == "block-video"
    assert send(datapath, [short_header_packet()], 23000) == ["drop"]


def test_evictions_are_counted_by_reason_for_prometheus(quic_flows):
    """Over PENDING_FLOWS_MAX flows of a typical half hello (a browser's
    first datagram of two), then hoarders past the byte budget."""
    datapath, flows, _settled = quic_flows
    half, _second = two_datagram_hello(b"www.example.com", b"\xa2" * 8)
    ports = range(30000, 30000 + PENDING_FLOWS_MAX + 10)
    for start in range(0, len(ports), 200):           # the ring holds some hundreds of datagrams
        for port in ports[start:start + 200]:
            run_xdp(datapath.function.fd, udp_frame(half, sport=port))
        datapath.consume_rings()
    assert flows.evicted == {"count": 10, "memory": 0}
    send_frames(datapath, flood(HOARDERS, range(20000, 20000 + PENDING_BYTES_MAX // HOARDER_BYTES + 10)))
    registry = CollectorRegistry()
    registry.register(SluiceCollector(SimpleNamespace(datapath=datapath, policy=datapath.policy, loaded_at=0.0,
                                                      policy_digest="", reloads={}, quic=flows)))
    exported = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in generate_latest(registry).decode().splitlines()
                if line.startswith("sluice_quic_flows_evicted_total")}
    assert exported['sluice_quic_flows_evicted_total{reason="count"}'] == flows.evicted["count"] >= 10
    assert exported['sluice_quic_flows_evicted_total{reason="memory"}'] == flows.evicted["memory"] > 0
