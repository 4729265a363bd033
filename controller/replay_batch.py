# SPDX-License-Identifier: GPL-2.0-only
"""Run many of a capture's frames through the XDP program in one
BPF_PROG_TEST_RUN: what `sluice replay` runs its frames by.

A test run costs about 2 us of the kernel's own (and some of ctypes'), more
than the program spends on most frames. So the frames gather in a batch:
written into the replay_frames map through a memory mapping, then run by
one test run of the replay driver (bpf/replay_driver.c) with repeat = their
number. Each repetition puts the next frame in the packet and tail-calls the
XDP program, which runs on it as on an interface.

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
import struct

from .abi import ABI
from .libbpf import LIBBPF, LinkCreateOpts, TestRunOpts, error_number
from .netns import NetnsError, private_netns
from .testrun import XdpFrameRunner
from .xdp_link import BPF_XDP, XDP_FLAGS_SKB_MODE

LOOPBACK_IFINDEX = 1            # in every network namespace
_LENGTH = struct.Struct("=I")

log = logging.getLogger(__name__)


class FrameBatch:
    """Frames gathered for one run of the replay driver.

    add() the frames to run, in order; run() runs those gathered, and reads
    the rings. A batch runs by itself when full, and a frame too long for a
    batch's entry runs alone, after those gathered."""

    def __init__(self, datapath, read_rings):
        """read_rings(): hands what the program sent on its rings to whoever reads them."""
        self.read_rings = read_rings
        self.driver_fd = datapath.replay_driver()
        self.single = XdpFrameRunner(datapath.function.fd)
        self.capacity = ABI.SLUICE_REPLAY_BATCH_FRAMES
        self.longest = ABI.SLUICE_REPLAY_FRAME_BYTES - 1      # the driver's mask
        frame_type, state_type = datapath.table("replay_frames").Leaf, datapath.table("replay_batch").Leaf
        self.stride = ctypes.sizeof(frame_type) + 7 & ~7        # an array map's entries are 8-byte aligned
        self.length_at, self.data_at = frame_type.len.offset, frame_type.data.offset
        self.count = 0
        self.frames = self.control = self.state = None
        self.netns_fd = self.link_fd = -1
        try:
            self.frames = _map_pages(datapath.map_fd("replay_frames"), self.stride * self.capacity)
            self.control = _map_pages(datapath.map_fd("replay_batch"), ctypes.sizeof(state_type))
            self.state = state_type.from_buffer(self.control)      # struct replay_batch, in the map
        except BaseException:
            self.close()
            raise
        try:
            self._attach()
        except (NetnsError, OSError) as error:
            # Without CAP_SYS_ADMIN, say: batches of one frame, which the
            # dispatcher does not take (repeat = 1), as fast as test runs of
            # their own.
            log.warning("replay runs one frame a test run, several times slower: %s", error)
            self.capacity = 1
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

    def add(self, frames: memoryview, offset: int, length: int, address: int) -> bool:
        """Gather the frame of length bytes at offset in frames (a view of a
        capture's chunk, which copies it once, into the batch's map), at
        address in memory; True if frames ran (and the rings were read): the
        batch was full, or the frame too long for it.
        The frame is sliced out only in the statement that copies it: a view
        of it kept in a local would outlive this call wherever a reference
        cycle keeps the frames of the stack below (an exception caught while
        the rings are read, with its traceback), and keep the capture's
        mapping from closing until the garbage collector runs."""
        if length > self.longest:
            self.run()
            self.single.run(address, length)
            self.read_rings()
            return True
        at = self.count * self.stride
        _LENGTH.pack_into(self.frames, at + self.length_at, length)
        self.frames[at + self.data_at:at + self.data_at + length] = frames[offset:offset + length]
        self.count += 1
        if self.count < self.capacity:
            return False
        self.run()
        return True

    def discard(self) -> None:
        """Forget the frames gathered (a capture given up on midway)."""
        self.count = 0

    def run(self) -> None:
        """Run the frames gathered, in order, and start a new batch. The
        rings are read where the driver stopped for a QUIC datagram, and
        after the last frame."""
        if not self.count:
            return
        count, self.count = self.count, 0
        state, ran = self.state, 0
        state.next = state.failed = state.stopped = state.watching = 0
        while ran < count:
            # data_size_out: the kernel writes the packet's size there, and
            # would take it as the room for the next run's (ENOSPC if larger).
            self.opts.repeat, self.opts.data_size_out = count - ran, 0
            # A signal stops a test run between repetitions (EINTR): Python
            # handles it (a KeyboardInterrupt leaves here), and the batch goes on.
            interrupted = LIBBPF.bpf_prog_test_run_opts(self.driver_fd, ctypes.byref(self.opts)) != 0
            if interrupted and ctypes.get_errno() != errno.EINTR:
                raise OSError(ctypes.get_errno(), f"BPF_PROG_TEST_RUN failed: {os.strerror(ctypes.get_errno())}")
            ran = state.next
            if state.failed:
                raise RuntimeError(f"the replay driver could not run {state.failed} of a batch's {count} frames")
            if state.stopped:
                self.read_rings()
                state.stopped = state.watching = 0
            elif ran != count and not interrupted:
                raise RuntimeError(f"the replay driver ran {ran} of a batch's {count} frames")
        self.read_rings()

    def close(self) -> None:
        self.state = None           # its view of the map's pages, which would keep them from closing
        for pages in (self.frames, self.control):
            if pages is not None:
                pages.close()
        for fd in (self.link_fd, self.netns_fd):
            if fd >= 0:
                os.close(fd)
        self.frames = self.control = None
        self.netns_fd = self.link_fd = -1


def _map_pages(map_fd: int, size: int) -> mmap.mmap:
    """An array map made BPF_F_MMAPABLE, mapped for reading and writing."""
    return mmap.mmap(map_fd, (size + mmap.PAGESIZE - 1) & -mmap.PAGESIZE, mmap.MAP_SHARED,
                     mmap.PROT_READ | mmap.PROT_WRITE)
