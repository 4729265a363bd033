"""The replay driver (bpf/replay_driver.c, controller/replay_batch.py): a
batch of frames through the real XDP program in one test run, in order, the
rings read where the controller must read them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.policies import lab_policy_path

from packets import http_request, tcp_frame, udp_frame, write_capture
from quic_packets import crypto_frame, handshake_client_hello, initial_packet

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

POLICY = """\
version: 1
rules:
  - name: block-quic
    action: block
    domains: [blocked.example]
"""


@pytest.fixture
def batch_on(make_datapath):
    """batch_on() -> (FrameBatch, calls): a batch on a fresh data plane,
    whose ring reader notes the program's packet count at each call."""
    from sluice.replay_batch import FrameBatch
    batches = []

    def make():
        datapath = make_datapath(POLICY, events=True, ring_wakeups=False)
        calls = []
        batch = FrameBatch(datapath, lambda: calls.append(datapath.counters()["packets"]))
        batches.append(batch)
        return batch, calls
    yield make
    for batch in batches:
        batch.close()


def run(batch, frames):
    for frame in frames:
        assert not batch.add(memoryview(frame), 0, len(frame), 0)      # not full, nor run alone
    batch.run()


def test_a_batch_runs_every_frame_once_and_reads_the_rings_after(batch_on):
    batch, calls = batch_on()
    frames = [tcp_frame(b"x" * size, sport=30000 + size) for size in (0, 10, 600, 1400, 1900)]
    frames += [tcp_frame(b"y" * (batch.longest - 54), sport=31000)]      # the longest a batch entry holds
    run(batch, frames)
    assert calls == [len(frames)]


def test_a_batch_stops_where_a_quic_datagram_was_handed_over(batch_on):
    """The controller settles a QUIC flow from its datagram, which decides
    how the flow's next datagrams run: the driver ends the test run right
    after the frame that handed one over, for the rings to be read."""
    batch, calls = batch_on()
    hello = udp_frame(initial_packet(crypto_frame(0, handshake_client_hello(b"blocked.example")), size=1200),
                      sport=50000)
    others = [tcp_frame(b"z", sport=port) for port in (30001, 30002)]
    run(batch, [others[0], hello, *others])
    assert calls == [2, 4]


def test_a_frame_longer_than_an_entry_runs_alone_in_its_place(batch_on, tmp_path):
    """Frames run in capture order: a request whose first segment is too
    long for a batch's entry is still read whole, and named."""
    from sluice.replay import replay
    request = http_request("order.example").replace(b"\r\n", b"\r\nX-Pad: " + b"p" * 3000 + b"\r\n", 1)
    split = len(request) - 20
    frames = [tcp_frame(sport=20000, dport=80, flags="S"),
              tcp_frame(request[:split], sport=20000, dport=80),
              tcp_frame(request[split:], sport=20000, dport=80, seq=1 + split)]
    assert len(frames[1]) > 2048
    write_capture(tmp_path / "long.pcap", frames)
    records, _frames = replay(str(tmp_path / "long.pcap"), show_progress=False)
    assert [(r["client_port"], r["name"]) for r in records] == [(20000, "order.example")]


def test_without_cap_sys_admin_replay_runs_a_frame_a_test_run_and_says_so():
    """No namespace of its own for the driver (unshare needs CAP_SYS_ADMIN):
    replay warns, runs batches of one frame, and prints the same lines."""
    capture = Path(__file__).parent / "captures" / "real-tools.pcap"
    replay = [sys.executable, "-m", "sluice", "replay", "--policy", str(lab_policy_path()), str(capture)]
    batched = subprocess.run(replay, capture_output=True, text=True, timeout=300)
    # setpriv (util-linux): the capability out of the bounding and inheritable sets, so root's exec lacks it.
    alone = subprocess.run(["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", *replay],
                           capture_output=True, text=True, timeout=300)
    assert batched.returncode == alone.returncode == 0, alone.stderr
    assert "replay runs one frame a test run" not in batched.stderr
    assert "replay runs one frame a test run, several times slower: cannot make a network namespace" in alone.stderr
    assert batched.stdout.count("\n") >= 15 and alone.stdout == batched.stdout


def test_a_syn_after_a_tunnelled_life_of_its_flow_in_the_same_batch_opens_it_again(tmp_path):
    """A tunnel's frames may be any flow's: a bare SYN after them, in the
    same batch, waits until their events are read, or the flow's earlier
    life, settled only then, would hide its new one (here the batch fills
    at the SYN, and the request after it would be left out)."""
    from packets import encapsulate
    from sluice.replay import Replayer, replay
    frames = [encapsulate(tcp_frame(sport=20000, dport=80, flags="S"), "ipip"),
              encapsulate(tcp_frame(http_request("first.example"), sport=20000, dport=80), "ipip"),
              tcp_frame(sport=20000, dport=80, flags="S", seq=5000),
              tcp_frame(http_request("second.example"), sport=20000, dport=80, seq=5001)]
    write_capture(tmp_path / "reopened.pcap", frames)
    replayer = Replayer()
    try:
        replayer.frame_batch.capacity = 3
        records, _frames = replayer.run(str(tmp_path / "reopened.pcap"))
    finally:
        replayer.close()
    assert [r["name"] for r in records] == ["first.example", "second.example"]
    assert replay(str(tmp_path / "reopened.pcap"), skip_settled=False, show_progress=False)[0] == records
