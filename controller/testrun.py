# SPDX-License-Identifier: GPL-2.0-only
"""Run a loaded XDP or tc program on a frame in the kernel: BPF_PROG_TEST_RUN.

bcc 0.26 has no binding for it, so this calls libbpf's
bpf_prog_test_run_opts() (controller/libbpf.py). The program runs exactly as it
would on an interface, with its real maps; only the frame is ours.
"""

import ctypes
import os
import struct
from dataclasses import dataclass

from .libbpf import LIBBPF, SkBuff, TestRunOpts

XDP_VERDICTS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}
XDP_GROWTH_BYTES = 4096


@dataclass(frozen=True)
class TestRun:
    verdict: str            # "pass", "drop", ...
    duration_ns: int        # average per repetition, as the kernel measured it
    frame: bytes = b""      # the frame as the program left it (what XDP_TX sends), metadata first

    __test__ = False        # not a pytest test class


class XdpMd(ctypes.Structure):
    """struct xdp_md: what a test run may say of the frame's arrival."""
    _fields_ = [("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32), ("data_meta", ctypes.c_uint32),
                ("ingress_ifindex", ctypes.c_uint32), ("rx_queue_index", ctypes.c_uint32),
                ("egress_ifindex", ctypes.c_uint32)]


def run_xdp(prog_fd: int, frame: bytes, repeat: int = 1, ifindex: int = 0) -> TestRun:
    """Run the XDP program prog_fd on frame, repeat times; return the verdict
    and the frame as the program left it. ifindex: the interface (of this
    network namespace) the frame comes in on; 0: the loopback, the kernel's
    default."""
    buffer = ctypes.create_string_buffer(frame, len(frame))
    # Room for a frame the program grows (a block page) up to a page.
    out = ctypes.create_string_buffer(len(frame) + XDP_GROWTH_BYTES)
    # The kernel takes data_end as the frame's length, and data 0: no metadata.
    md = XdpMd(data_end=len(frame), ingress_ifindex=ifindex)
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts),
                        data_in=ctypes.cast(buffer, ctypes.c_void_p),
                        data_size_in=len(frame), repeat=repeat,
                        data_out=ctypes.cast(out, ctypes.c_void_p), data_size_out=ctypes.sizeof(out))
    if ifindex:
        opts.ctx_in, opts.ctx_size_in = ctypes.cast(ctypes.byref(md), ctypes.c_void_p), ctypes.sizeof(md)
    if LIBBPF.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"BPF_PROG_TEST_RUN failed: {os.strerror(errno)}")
    return TestRun(XDP_VERDICTS.get(opts.retval, str(opts.retval)), opts.duration, out.raw[:opts.data_size_out])


class XdpFrameRunner:
    """Runs frames that are already in memory through the XDP program
    prog_fd, once each, for their effect on its maps and rings: no copy of
    the frame in, none out (data_out NULL: the kernel copies nothing back),
    and one options struct for every run. What `sluice replay` needs, where
    run_xdp's buffers cost more than the program's run.

    The Python side of a call is a good part of a test run's cost, so the
    frame's four fields are written in one go, and libbpf's function is
    called without ctypes checking its arguments (a function object of our
    own, without LIBBPF's argtypes; its arguments made once)."""

    def __init__(self, prog_fd: int):
        self.prog_fd = prog_fd
        self.opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), repeat=1)
        self._fields = memoryview(self.opts).cast("B")
        self._call = LIBBPF["bpf_prog_test_run_opts"]
        self._call.restype = ctypes.c_int
        self._arguments = (ctypes.c_int(prog_fd), ctypes.c_void_p(ctypes.addressof(self.opts)))

    def run(self, address: int, length: int) -> None:
        """Run the program on the length bytes at address."""
        # data_size_out too: the kernel writes the frame's size there, and
        # would take it as the room for the next frame (ENOSPC if larger).
        _FRAME_FIELDS.pack_into(self._fields, _FRAME_FIELDS_AT, address, 0, length, 0)
        if self._call(*self._arguments) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"BPF_PROG_TEST_RUN failed: {os.strerror(errno)}")


# data_in, data_out, data_size_in, data_size_out: consecutive in bpf_test_run_opts.
_FRAME_FIELDS, _FRAME_FIELDS_AT = struct.Struct("=QQII"), TestRunOpts.data_in.offset
assert TestRunOpts.data_size_out.offset == _FRAME_FIELDS_AT + _FRAME_FIELDS.size - 4


TC_VERDICTS = {0: "ok", 2: "shot"}     # TC_ACT_OK, TC_ACT_SHOT
# The classifier at tc ingress (--hook tc) in XDP's words: TC_ACT_OK passes,
# TC_ACT_SHOT drops, TC_ACT_REDIRECT is its XDP_TX (bpf/ctx_skb.h ctx_send_back()).
TC_INGRESS_VERDICTS = {0: "pass", 2: "drop", 7: "tx"}


@dataclass(frozen=True)
class TcRun:
    verdict: str            # "ok", "shot", ...
    tstamp: int             # skb->tstamp as the program left it: a departure time, or 0

    __test__ = False


def run_tc(prog_fd: int, frame: bytes, gso_segs: int = 0) -> TcRun:
    """Run the tc (SCHED_CLS) program prog_fd once on frame, as on egress.

    gso_segs: hand the frame over as a GSO packet that leaves as this many
    segments (as TSO or GRO build them)."""
    buffer = ctypes.create_string_buffer(frame, len(frame))
    skb_in, skb_out = SkBuff(gso_segs=gso_segs), SkBuff()
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts),
                        data_in=ctypes.cast(buffer, ctypes.c_void_p), data_size_in=len(frame),
                        ctx_in=ctypes.cast(ctypes.byref(skb_in), ctypes.c_void_p),
                        ctx_size_in=SkBuff.gso_size.offset + 4,
                        ctx_out=ctypes.cast(ctypes.byref(skb_out), ctypes.c_void_p),
                        ctx_size_out=ctypes.sizeof(skb_out), repeat=1)
    if LIBBPF.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"BPF_PROG_TEST_RUN failed: {os.strerror(errno)}")
    return TcRun(TC_VERDICTS.get(opts.retval, str(opts.retval)), skb_out.tstamp)


SKB_IFINDEX = 10        # struct __sk_buff's ifindex, among its leading u32 fields


def run_tc_ingress(prog_fd: int, frame: bytes, ifindex: int = 0) -> TestRun:
    """Run the classifier at tc ingress (sluice_tc_ingress) once on frame; the
    verdict in run_xdp()'s words, and the frame as the program left it.
    ifindex: as run_xdp()'s (the skb's device)."""
    buffer = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(len(frame) + XDP_GROWTH_BYTES)
    skb_in = SkBuff()
    skb_in.u32_fields[SKB_IFINDEX] = ifindex
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts),
                        data_in=ctypes.cast(buffer, ctypes.c_void_p), data_size_in=len(frame),
                        data_out=ctypes.cast(out, ctypes.c_void_p), data_size_out=ctypes.sizeof(out), repeat=1)
    if ifindex:
        # As far as ifindex: the kernel takes the fields it knows, and refuses others set.
        opts.ctx_in, opts.ctx_size_in = ctypes.cast(ctypes.byref(skb_in), ctypes.c_void_p), (SKB_IFINDEX + 1) * 4
    if LIBBPF.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"BPF_PROG_TEST_RUN failed: {os.strerror(errno)}")
    return TestRun(TC_INGRESS_VERDICTS.get(opts.retval, str(opts.retval)), opts.duration,
                   out.raw[:opts.data_size_out])
