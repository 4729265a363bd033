"""Run a loaded XDP or tc program on a frame in the kernel: BPF_PROG_TEST_RUN.

bcc 0.26 has no binding for it, so this calls libbpf's
bpf_prog_test_run_opts() through ctypes. The program runs exactly as it
would on an interface, with its real maps; only the frame is ours.
"""

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

XDP_VERDICTS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}
XDP_GROWTH_BYTES = 4096


class _TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts from libbpf's bpf.h (libbpf 1.x); sz tells
    # libbpf which version of the struct we pass.
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def _libbpf():
    lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
    lib.bpf_prog_test_run_opts.restype = ctypes.c_int
    return lib


_LIBBPF = _libbpf()


@dataclass(frozen=True)
class TestRun:
    verdict: str            # "pass", "drop", ...
    duration_ns: int        # average per repetition, as the kernel measured it
    frame: bytes = b""      # the frame as the program left it (what XDP_TX sends), metadata first

    __test__ = False        # not a pytest test class


def run_xdp(prog_fd: int, frame: bytes, repeat: int = 1) -> TestRun:
    """Run the XDP program prog_fd on frame, repeat times; return the verdict
    and the frame as the program left it."""
    buffer = ctypes.create_string_buffer(frame, len(frame))
    # Room for a frame the program grows (a block page) up to a page.
    out = ctypes.create_string_buffer(len(frame) + XDP_GROWTH_BYTES)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts),
                        data_in=ctypes.cast(buffer, ctypes.c_void_p),
                        data_size_in=len(frame), repeat=repeat,
                        data_out=ctypes.cast(out, ctypes.c_void_p), data_size_out=ctypes.sizeof(out))
    if _LIBBPF.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"BPF_PROG_TEST_RUN failed: {os.strerror(errno)}")
    return TestRun(XDP_VERDICTS.get(opts.retval, str(opts.retval)), opts.duration, out.raw[:opts.data_size_out])


TC_VERDICTS = {0: "ok", 2: "shot"}     # TC_ACT_OK, TC_ACT_SHOT


class _SkBuff(ctypes.Structure):
    # struct __sk_buff from linux/bpf.h (stable UAPI) as far as tstamp, the
    # field the tc program writes, then room for the fields later kernels
    # add: the kernel refuses to copy its ctx out into less than all of it.
    _fields_ = [("u32_fields", ctypes.c_uint32 * 36),     # len .. data_meta
                ("flow_keys", ctypes.c_uint64),
                ("tstamp", ctypes.c_uint64),
                ("wire_len", ctypes.c_uint32),
                ("gso_segs", ctypes.c_uint32),
                ("sk", ctypes.c_uint64),
                ("gso_size", ctypes.c_uint32),
                ("later_fields", ctypes.c_uint8 * 76)]


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
    skb_in, skb_out = _SkBuff(gso_segs=gso_segs), _SkBuff()
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts),
                        data_in=ctypes.cast(buffer, ctypes.c_void_p), data_size_in=len(frame),
                        ctx_in=ctypes.cast(ctypes.byref(skb_in), ctypes.c_void_p),
                        ctx_size_in=_SkBuff.gso_size.offset + 4,
                        ctx_out=ctypes.cast(ctypes.byref(skb_out), ctypes.c_void_p),
                        ctx_size_out=ctypes.sizeof(skb_out), repeat=1)
    if _LIBBPF.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"BPF_PROG_TEST_RUN failed: {os.strerror(errno)}")
    return TcRun(TC_VERDICTS.get(opts.retval, str(opts.retval)), skb_out.tstamp)
