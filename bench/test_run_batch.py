"""Handing replayed frames to the program: one BPF_PROG_TEST_RUN per frame, against replay's batches.

Run as root:  .venv/bin/python bench/test_run_batch.py [--frames 1024] [--pairs 7]

`sluice replay` used to run each frame it needs by a test run of its own
(controller/testrun.py XdpFrameRunner): about 2 us a frame of the kernel's
and ctypes' own cost here, more than sluice's program spends on most
frames. It now runs them a chunk at a time (controller/replay_batch.py
ChunkRunner): the chunk is copied into the replay driver's map, the driver
(bpf/replay_driver.c) puts each frame in the packet and tail-calls
sluice_xdp, and one test run runs up to SLUICE_REPLAY_BATCH_FRAMES. This
compares the two on sluice's own program, with frames it reads no further
than their Ethernet header (all zeros), so that what is compared is the
handing over:

- baseline: the frames, one test run each (XdpFrameRunner);
- batched: the frames as one chunk through a ChunkRunner, as replay runs
  them, the rings read after each test run (nothing is on them).

Each figure is --pairs alternations of the baseline and the batch
(bench/pairs.py), the wall time per frame from Python; the ratio batch /
baseline per pair, median and spread. Frames of 60, 74, 600 and 1514
bytes in turn.
"""

import argparse
import contextlib
import ctypes
import statistics
import sys
import time
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pairs import alternate  # noqa: E402
from sluice.capture import frame_address  # noqa: E402
from sluice.datapath import Datapath  # noqa: E402
from sluice.replay_batch import ChunkRunner  # noqa: E402
from sluice.testrun import XdpFrameRunner  # noqa: E402

FRAME_SIZES = (60, 74, 600, 1514)


class Bench:
    def __init__(self, frames: int):
        self.datapath = Datapath(events=True, ring_wakeups=False)
        self.chunk_runner = ChunkRunner(self.datapath, lambda: None)
        self.runner = XdpFrameRunner(self.datapath.function.fd)
        self.frames = [bytes(FRAME_SIZES[i % len(FRAME_SIZES)]) for i in range(frames)]
        # One after another, as a capture's chunk holds them.
        self.chunk = b"".join(self.frames)
        self.lengths = numpy.array([len(frame) for frame in self.frames])
        self.offsets = numpy.concatenate(([0], numpy.cumsum(self.lengths)[:-1]))
        self.buffer = ctypes.create_string_buffer(max(FRAME_SIZES))
        self.batched = False

    def runs(self) -> int:
        return self.datapath.counters()["packets"]

    def per_frame_ns(self) -> float:
        """Run every frame once, one way or the other; wall ns per frame."""
        before = self.runs()
        address = frame_address(self.buffer)
        started = time.perf_counter_ns()
        if self.batched:
            self.chunk_runner.run(self.chunk, self.offsets, self.lengths)
        else:
            run = self.runner.run
            for frame in self.frames:
                run(address, len(frame))
        elapsed = time.perf_counter_ns() - started
        ran = self.runs() - before
        assert ran == len(self.frames), f"{ran} of {len(self.frames)} frames reached the program"
        return elapsed / len(self.frames)

    @contextlib.contextmanager
    def batch(self):
        self.batched = True
        try:
            yield
        finally:
            self.batched = False

    def close(self) -> None:
        self.chunk_runner.close()
        self.datapath.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1024, help="frames per run (default 1024: a chunk of them within SLUICE_REPLAY_CHUNK_BYTES)")
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    bench = Bench(args.frames)
    try:
        print(f"{args.frames} frames a run, {args.pairs} alternations; wall ns per frame (median), and the ratio "
              "batches / one test run per frame of each pair: median (lowest-highest)")
        pairs = alternate(bench.per_frame_ns, bench.batch, args.pairs)
        print(f"  one test run per frame {statistics.median(pairs.baseline):6.0f} ns, "
              f"replay's batches {statistics.median(pairs.measured):6.0f} ns   {pairs.show()}")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
