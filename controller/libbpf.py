# SPDX-License-Identifier: GPL-2.0-only
"""Every ctypes binding to libbpf, and the kernel structs it passes: one CDLL.

bcc 0.26 binds neither BPF_PROG_TEST_RUN nor BPF links, so testrun.py,
xdp_link.py and tc.py (tcx links) call libbpf (libbpf 1.x, Debian's libbpf1) directly; tests and
benchmarks read map and program info through the same functions. The
structs follow linux/bpf.h (stable UAPI) and libbpf's bpf.h: a struct may
stop short of the kernel's (the kernel fills what fits) or carry zeroed
room beyond it (the kernel checks that room is zero).
"""

import ctypes
import ctypes.util


class TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts from libbpf's bpf.h; sz tells libbpf which version of the struct we pass."""
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
    __test__ = False        # not a pytest test class


class SkBuff(ctypes.Structure):
    """struct __sk_buff as far as tstamp, the field the tc program writes, then
    room for the fields later kernels add: the kernel refuses to copy its ctx
    out into less than all of it."""
    _fields_ = [("u32_fields", ctypes.c_uint32 * 36),     # len .. data_meta
                ("flow_keys", ctypes.c_uint64),
                ("tstamp", ctypes.c_uint64),
                ("wire_len", ctypes.c_uint32),
                ("gso_segs", ctypes.c_uint32),
                ("sk", ctypes.c_uint64),
                ("gso_size", ctypes.c_uint32),
                ("later_fields", ctypes.c_uint8 * 76)]


class LinkCreateOpts(ctypes.Structure):
    """struct bpf_link_create_opts: sz, flags, then a union left zeroed (libbpf
    accepts a larger struct whose extra bytes are zero)."""
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("union", ctypes.c_uint64 * 6)]


class MapInfo(ctypes.Structure):
    """struct bpf_map_info as far as map_extra."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32),
                ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("btf_id", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
                ("btf_value_type_id", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("map_extra", ctypes.c_uint64)]


class MapCreateOpts(ctypes.Structure):
    """struct bpf_map_create_opts from libbpf's bpf.h (libbpf 1.1's, as far as map_ifindex)."""
    _fields_ = [("sz", ctypes.c_size_t), ("btf_fd", ctypes.c_uint32),
                ("btf_key_type_id", ctypes.c_uint32), ("btf_value_type_id", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("map_extra", ctypes.c_uint64),
                ("numa_node", ctypes.c_uint32), ("map_ifindex", ctypes.c_uint32)]


class BtfInfo(ctypes.Structure):
    """struct bpf_btf_info as far as id."""
    _fields_ = [("btf", ctypes.c_uint64), ("btf_size", ctypes.c_uint32), ("id", ctypes.c_uint32)]


class ProgInfo(ctypes.Structure):
    """struct bpf_prog_info as far as id."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32)]


class LinkInfo(ctypes.Structure):
    """struct bpf_link_info as far as the xdp and tcx members of its union
    (which 64-bit members align to 8): both begin with the ifindex."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("prog_id", ctypes.c_uint32),
                ("union_alignment", ctypes.c_uint32), ("ifindex", ctypes.c_uint32),
                ("union_rest", ctypes.c_uint32 * 3)]


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(TestRunOpts)]
    lib.bpf_prog_test_run_opts.restype = ctypes.c_int
    lib.bpf_prog_load.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t,
                                  ctypes.c_void_p]
    lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(LinkCreateOpts)]
    lib.bpf_link_update.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
    lib.bpf_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                   ctypes.c_uint32, ctypes.POINTER(MapCreateOpts)]
    lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    return lib


LIBBPF = _load()


def error_number(result: int) -> int:
    """The errno of a failed libbpf call: libbpf 1.x returns -errno, older calls -1 and set errno."""
    return -result if result < -1 else ctypes.get_errno()


def object_info(fd: int, info: ctypes.Structure) -> int:
    """Fill `info` (a MapInfo, BtfInfo, ProgInfo or LinkInfo) for the BPF object behind
    fd; libbpf's result: 0, or negative on failure (see error_number)."""
    length = ctypes.c_uint32(ctypes.sizeof(info))
    return LIBBPF.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(length))
