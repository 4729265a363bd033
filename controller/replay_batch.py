# SPDX-License-Identifier: GPL-2.0-only
"""Run a capture's frames through the XDP program a chunk at a time, many
frames a BPF_PROG_TEST_RUN: what `sluice replay` runs its frames by.

A test run costs about 2 us of the kernel's own (and some of ctypes'), more
than the program spends on most frames. So a chunk of the capture's frames
(capture.Chunk) is copied, as the capture holds them, into the replay_chunk
map through a memory mapping, with each frame's place and length, and the
replay driver (bpf/replay_driver.c) runs them, up to
SLUICE_REPLAY_BATCH_FRAMES a test run (repeat = their number). Each
repetition puts the next frame in the packet and tail-calls the XDP program,
which runs on it as on an interface. Replay's own process takes no step per
frame: every frame runs, which costs the kernel less than leaving out those
of settled flows cost Python.

A test run with repeat > 1 puts its program into the kernel's XDP
dispatcher and takes it out again, about 12 ms a call (net/bpf/test_run.c,
bpf_prog_change_xdp()), unless an interface has it attached already. So the
driver is attached, as generic XDP, to the loopback of a network namespace
of this process's own, which carries no traffic and goes with the process.
bench/test_run_batch.py measures both: the batch costs a tenth of a test run
per frame attached, more than one detached.
"""

import ctypes
import errno
import logging
import mmap
import os

import numpy

from .abi import ABI
from .capture import frame_address
from .libbpf import LIBBPF, LinkCreateOpts, TestRunOpts, error_number
from .netns import NetnsError, private_netns
from .testrun import XdpFrameRunner
from .xdp_link import BPF_XDP, XDP_FLAGS_SKB_MODE

LOOPBACK_IFINDEX = 1            # in every network namespace

log = logging.getLogger(__name__)


class ChunkRunner:
    """Runs chunks of a capture's frames through the program, in order, and
    hands what it sent on its rings to whoever reads them: after each test
    run, and where the driver stopped for a QUIC datagram."""

    def __init__(self, datapath, read_rings):
        """read_rings(): hands what the program sent on its rings to whoever reads them."""
        self.read_rings = read_rings
        self.driver_fd = datapath.replay_driver()
        self.single = XdpFrameRunner(datapath.function.fd)
        # 1: every frame by a test run of its own, the driver left out.
        self.frames_per_run = ABI.SLUICE_REPLAY_BATCH_FRAMES
        self.longest = ABI.SLUICE_REPLAY_FRAME_BYTES - 1      # the driver's mask
        chunk_type, state_type = datapath.table("replay_chunk").Leaf, datapath.table("replay_batch").Leaf
        self.bytes_at = chunk_type.bytes.offset
        self.chunk = self.control = self.state = self.offsets = self.lengths = None
        self.netns_fd = self.link_fd = -1
        try:
            self.chunk = _map_pages(datapath.map_fd("replay_chunk"), ctypes.sizeof(chunk_type))
            self.control = _map_pages(datapath.map_fd("replay_batch"), ctypes.sizeof(state_type))
            self.state = state_type.from_buffer(self.control)      # struct replay_batch, in the map
            # struct replay_chunk's offset[] and len[], in the map.
            self.offsets, self.lengths = (numpy.frombuffer(self.chunk, dtype=numpy.uint32, offset=field.offset,
                                                           count=ABI.SLUICE_REPLAY_CHUNK_FRAMES)
                                          for field in (chunk_type.offset, chunk_type.len))
            self.bytes_address = frame_address(self.chunk) + self.bytes_at
        except BaseException:
            self.close()
            raise
        try:
            self._attach()
        except (NetnsError, OSError) as error:
            # Without CAP_SYS_ADMIN, say: a frame a test run, which the
            # dispatcher does not take (repeat = 1).
            log.warning("replay runs one frame a test run, several times slower: %s", error)
            self.frames_per_run = 1
        # Its contents do not matter: the driver puts each frame in its place.
        self.packet = ctypes.create_string_buffer(ABI.SLUICE_REPLAY_FRAME_BYTES)
        self.opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), data_in=ctypes.addressof(self.packet),
                                data_size_in=len(self.packet))

    def _attach(self) -> None:
        """The driver on the loopback of a namespace of its own (see above)."""
        with private_netns() as netns_fd:
            self.netns_fd = netns_fd        # closed by close(), even if what follows fails
            # Generic XDP: the loopback has no driver hook.
            opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts), flags=XDP_FLAGS_SKB_MODE)
            link_fd = LIBBPF.bpf_link_create(self.driver_fd, LOOPBACK_IFINDEX, BPF_XDP, ctypes.byref(opts))
            if link_fd < 0:
                raise OSError(error_number(link_fd), "attaching the replay driver to a private loopback: "
                              f"{os.strerror(error_number(link_fd))}")
            self.link_fd = link_fd

    def run(self, buffer, offsets: numpy.ndarray, lengths: numpy.ndarray) -> None:
        """Run the frames of lengths bytes at offsets in buffer, in order:
        a capture.Chunk's, which lie within SLUICE_REPLAY_CHUNK_BYTES from
        the first one's start. A frame too long for the driver runs alone,
        in its place."""
        count = len(offsets)
        if not count:
            return
        first = int(offsets[0])
        span = int((offsets + lengths).max()) - first
        if span > ABI.SLUICE_REPLAY_CHUNK_BYTES or count > ABI.SLUICE_REPLAY_CHUNK_FRAMES:
            raise ValueError(f"a chunk of {count} frames over {span} bytes: more than the replay driver's map holds")
        with memoryview(buffer) as frames:
            self.chunk[self.bytes_at:self.bytes_at + span] = frames[first:first + span]
        self.offsets[:count] = offsets - first
        self.lengths[:count] = lengths
        start = 0
        for alone in [*numpy.flatnonzero(lengths > self.longest).tolist(), count]:
            self._run(start, alone)
            if alone < count:
                self.single.run(self.bytes_address + int(self.offsets[alone]), int(self.lengths[alone]))
                self.read_rings()
            start = alone + 1

    def _run(self, start: int, stop: int) -> None:
        """Frames start to stop of the chunk by the driver, frames_per_run a
        test run, the rings read after each."""
        if self.frames_per_run == 1:
            for index in range(start, stop):
                self.single.run(self.bytes_address + int(self.offsets[index]), int(self.lengths[index]))
                self.read_rings()
            return
        state = self.state
        while start < stop:
            end = min(start + self.frames_per_run, stop)
            state.next, state.failed, state.stopped, state.watching = start, 0, 0, 0
            while state.next < end:
                # data_size_out: the kernel writes the packet's size there, and
                # would take it as the room for the next run's (ENOSPC if larger).
                self.opts.repeat, self.opts.data_size_out = end - state.next, 0
                # A signal stops a test run between repetitions (EINTR): Python
                # handles it (a KeyboardInterrupt leaves here), and the run goes on.
                interrupted = LIBBPF.bpf_prog_test_run_opts(self.driver_fd, ctypes.byref(self.opts)) != 0
                if interrupted and ctypes.get_errno() != errno.EINTR:
                    raise OSError(ctypes.get_errno(), f"BPF_PROG_TEST_RUN failed: {os.strerror(ctypes.get_errno())}")
                if state.failed:
                    raise RuntimeError(f"the replay driver could not run {state.failed} of frames {start} to {end}")
                if state.stopped:
                    self.read_rings()
                    state.stopped = state.watching = 0
                elif state.next != end and not interrupted:
                    raise RuntimeError(f"the replay driver ran frames {start} to {state.next} of {start} to {end}")
            self.read_rings()
            start = end

    def close(self) -> None:
        # Their views of the maps' pages, which would keep them from closing.
        self.state = self.offsets = self.lengths = None
        for pages in (self.chunk, self.control):
            if pages is not None:
                pages.close()
        for fd in (self.link_fd, self.netns_fd):
            if fd >= 0:
                os.close(fd)
        self.chunk = self.control = None
        self.netns_fd = self.link_fd = -1


def _map_pages(map_fd: int, size: int) -> mmap.mmap:
    """An array map made BPF_F_MMAPABLE, mapped for reading and writing."""
    return mmap.mmap(map_fd, (size + mmap.PAGESIZE - 1) & -mmap.PAGESIZE, mmap.MAP_SHARED,
                     mmap.PROT_READ | mmap.PROT_WRITE)
