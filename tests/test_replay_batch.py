"""The replay driver (bpf/replay_driver.c, controller/replay_batch.py): a
chunk of frames through the real XDP program, many a test run, in order,
the rings read where the controller must read them."""

import os
import subprocess
import sys
from pathlib import Path

import numpy
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
def runner_on(make_datapath):
    """runner_on() -> (ChunkRunner, calls): a runner on a fresh data plane,
    whose ring reader notes the program's packet count at each call."""
    from sluice.replay_batch import ChunkRunner
    runners = []

    def make():
        datapath = make_datapath(POLICY, events=True, ring_wakeups=False)
        calls = []
        runner = ChunkRunner(datapath, lambda: calls.append(datapath.counters()["packets"]))
        runners.append(runner)
        return runner, calls
    yield make
    for runner in runners:
        runner.close()


def run(runner, frames, gap: int = 16):
    """frames as a chunk, gap bytes before each (a pcap record's header)."""
    buffer, offsets = bytearray(), []
    for frame in frames:
        buffer += bytes(gap)
        offsets.append(len(buffer))
        buffer += frame
    runner.run(buffer, numpy.array(offsets), numpy.array([len(frame) for frame in frames]))


def test_a_chunk_runs_every_frame_once_and_reads_the_rings_after(runner_on):
    runner, calls = runner_on()
    frames = [tcp_frame(b"x" * size, sport=30000 + size) for size in (0, 10, 600, 1400, 1900)]
    frames += [tcp_frame(b"y" * (runner.longest - 54), sport=31000)]      # the longest the driver copies
    run(runner, frames)
    assert calls == [len(frames)]


def test_a_chunk_runs_a_batch_of_frames_a_test_run_and_a_long_frame_alone_in_its_place(runner_on):
    """The events ring holds what SLUICE_REPLAY_BATCH_FRAMES frames may send:
    the rings are read after each test run of that many; a frame too long
    for the driver runs by a test run of its own, in its place."""
    from sluice.abi import ABI
    runner, calls = runner_on()
    batch = ABI.SLUICE_REPLAY_BATCH_FRAMES
    frames = [tcp_frame(b"x", sport=30000 + index) for index in range(batch + 10)]
    frames[5] = tcp_frame(b"y" * 3000, sport=31000)
    run(runner, frames, gap=0)
    assert calls == [5, 6, 6 + batch, len(frames)]


def test_a_chunk_stops_where_a_quic_datagram_was_handed_over(runner_on):
    """The controller settles a QUIC flow from its datagram, which decides
    how the flow's next datagrams run: the driver ends the test run right
    after the frame that handed one over, for the rings to be read."""
    runner, calls = runner_on()
    hello = udp_frame(initial_packet(crypto_frame(0, handshake_client_hello(b"blocked.example")), size=1200),
                      sport=50000)
    others = [tcp_frame(b"z", sport=port) for port in (30001, 30002)]
    run(runner, [others[0], hello, *others])
    assert calls == [2, 4]


def test_a_request_longer_than_the_driver_copies_is_named(tmp_path):
    """A request whose first segment is too long for the driver to copy is
    still read whole, in its place, and named."""
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
