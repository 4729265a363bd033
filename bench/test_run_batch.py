"""A replayed frame's test-run cost: one BPF_PROG_TEST_RUN per frame, against a batch fed from a map.

Run as root:  .venv/bin/python bench/test_run_batch.py [--frames 4096] [--pairs 7]

`sluice replay` runs each frame it needs by a test run of its own
(controller/testrun.py XdpFrameRunner): about 2 us a frame of the kernel's
and ctypes' own cost here, more than sluice's program on the frame. This
measures the way past that (issue 18 part 4), with an empty program as the
target, so that only the cost of handing frames over is compared:

- baseline: the frames, one test run each, as replay runs them today;
- batched: a driver program copies the next frame from an array map into
  the packet (bpf_xdp_adjust_tail, bpf_xdp_store_bytes) and tail-calls the
  target; one test run with repeat = the number of frames runs them all.

A test run with repeat > 1 puts the program into the kernel's XDP
dispatcher and takes it out again (net/bpf/test_run.c,
bpf_prog_change_xdp()), which costs milliseconds, unless an interface has
it attached already. So the batch is measured twice: with the driver
attached to nothing, and attached (generic XDP) to a veth in a namespace of
its own, which carries no traffic. Each figure is --pairs alternations of
the baseline and the batch (bench/pairs.py), the wall time per frame from
Python; the ratio batch/baseline per pair, median and spread. Frames of 60,
74, 600 and 1514 bytes in turn.
"""

import argparse
import contextlib
import ctypes
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bcc  # noqa: E402

from pairs import alternate  # noqa: E402
from sluice.netns import inside_netns  # noqa: E402
from sluice.testrun import XdpFrameRunner, run_xdp  # noqa: E402

FRAME_SIZES = (60, 74, 600, 1514)
SLOT = 2048                     # bytes of a frame's slot in the map; a power of two, for the verifier's bound
XDP_FLAGS_SKB_MODE = 1 << 1

PROGRAMS = r"""
struct frame { u32 len; u8 data[SLOT]; };
BPF_ARRAY(frames, struct frame, FRAMES);
BPF_ARRAY(next_frame, u32, 1);
BPF_ARRAY(runs, u64, 1);
BPF_PROG_ARRAY(target, 1);

int empty(struct xdp_md *ctx)
{
    u32 zero = 0;
    u64 *count = runs.lookup(&zero);
    if (count)
        *count += 1;
    return XDP_PASS;
}

int driver(struct xdp_md *ctx)
{
    u32 zero = 0;
    u32 *next = next_frame.lookup(&zero);
    if (!next)
        return XDP_ABORTED;
    u32 index = *next;
    *next = index + 1;
    struct frame *frame = frames.lookup(&index);
    if (!frame)
        return XDP_ABORTED;
    /* Masked: bpf_xdp_store_bytes() takes a length the verifier knows is within the slot. */
    u32 len = frame->len & (SLOT - 1);
    if (len < 14)
        return XDP_ABORTED;
    /* The packet is as long as the frame before left it: grown or cut to this one's length. */
    if (bpf_xdp_adjust_tail(ctx, (int)len - (int)bpf_xdp_get_buff_len(ctx)))
        return XDP_ABORTED;
    if (bpf_xdp_store_bytes(ctx, 0, frame->data, len))
        return XDP_ABORTED;
    target.call(ctx, 0);
    return XDP_ABORTED;
}
"""


class Bench:
    def __init__(self, frames: int):
        self.frames = frames
        self.bpf = bcc.BPF(text=PROGRAMS, cflags=[f"-DSLOT={SLOT}", f"-DFRAMES={frames}"])
        self.driver = self.bpf.load_func("driver", bcc.BPF.XDP)
        self.empty = self.bpf.load_func("empty", bcc.BPF.XDP)
        self.bpf["target"][ctypes.c_int(0)] = ctypes.c_int(self.empty.fd)
        self.lengths = [FRAME_SIZES[i % len(FRAME_SIZES)] for i in range(frames)]
        table = self.bpf["frames"]
        for index, length in enumerate(self.lengths):
            slot = table.Leaf()
            slot.len = length
            table[ctypes.c_int(index)] = slot
        self.packet = ctypes.create_string_buffer(max(FRAME_SIZES))
        self.runner = XdpFrameRunner(self.empty.fd)
        self.batched = False

    def runs(self) -> int:
        return self.bpf["runs"][ctypes.c_int(0)].value

    def per_frame_ns(self) -> float:
        """Run every frame once, the current way; wall ns per frame."""
        before = self.runs()
        started = time.perf_counter_ns()
        if self.batched:
            self.bpf["next_frame"][ctypes.c_int(0)] = ctypes.c_uint(0)
            run_xdp(self.driver.fd, bytes(max(FRAME_SIZES)), repeat=self.frames)
        else:
            address = ctypes.addressof(self.packet)
            for length in self.lengths:
                self.runner.run(address, length)
        elapsed = time.perf_counter_ns() - started
        ran = self.runs() - before
        assert ran == self.frames, f"{ran} of {self.frames} frames reached the target"
        return elapsed / self.frames

    @contextlib.contextmanager
    def batch(self):
        self.batched = True
        try:
            yield
        finally:
            self.batched = False


@contextlib.contextmanager
def attached_in_namespace(bench: Bench):
    """The driver attached (generic XDP) to a veth in a namespace of its own."""
    netns = f"sluice-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "add", "batch0", "type", "veth", "peer", "name", "batch1"],
                       check=True)
        with inside_netns(netns):
            bench.bpf.attach_xdp("batch0", bench.driver, XDP_FLAGS_SKB_MODE)
        yield
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def show(label: str, pairs) -> None:
    print(f"  {label:<28} one test run per frame {statistics.median(pairs.baseline):6.0f} ns, "
          f"batch {statistics.median(pairs.measured):6.0f} ns   {pairs.show()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4096, help="frames per run (default 4096)")
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    bench = Bench(args.frames)
    print(f"{args.frames} frames a run, {args.pairs} alternations; wall ns per frame (median), and the ratio "
          "batch / one test run per frame of each pair: median (lowest-highest)")
    detached = alternate(bench.per_frame_ns, bench.batch, args.pairs)
    show("driver attached to nothing", detached)
    with attached_in_namespace(bench):
        attached = alternate(bench.per_frame_ns, bench.batch, args.pairs)
    show("driver attached to a veth", attached)
    return 0


if __name__ == "__main__":
    sys.exit(main())
