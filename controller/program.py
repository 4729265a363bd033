# SPDX-License-Identifier: GPL-2.0-only
"""The data plane's program: compiled once per process, given fresh maps at each load.

bcc compiles the C into BPF instructions that name each map by the number
of a file descriptor bcc opened for it (BPF_PSEUDO_MAP_FD), and the kernel
binds a program to the maps behind those numbers when it loads it. The
compile is most of what a Datapath costs (7-17 s on this project's test
machine), yet it does not depend on the policy: the policy only fills maps
and sizes a few. So a process compiles once per context its hooks need
(XDP, or the skb of tc ingress, or both), and each Datapath makes maps
of its own (policy-sized where the policy decides) and loads the programs
with its maps put behind bcc's descriptor numbers (dup2) for the moment of
the load. A live reload thus loads and fills, but compiles nothing.

Between loads those numbers refer to /dev/null, so that no map outlives the
Datapath that made it.
"""

import ctypes
import functools
import json
import mmap
import os
import re
import struct
import threading
from dataclasses import dataclass

import bcc

from .abi import bpf_source_dir
from .libbpf import LIBBPF, BtfInfo, MapCreateOpts, MapInfo, error_number, object_info

# The programs, compiled as one unit so that they share their maps.
PROGRAM_FILES = ("sluice_xdp.c", "sluice_tc.c", "replay_driver.c")
CFLAGS = ["-Wno-incompatible-pointer-types-discards-qualifiers"]
# The classifier again, for tc ingress (--hook tc): the same source over the
# skb's context (bpf/ctx.h), with the tc programs, so that a data plane only
# at tc ingress compiles this build alone. Its maps are the XDP build's, by name.
TC_INGRESS_FILES = PROGRAM_FILES
TC_INGRESS_CFLAGS = ("-DSLUICE_CTX_SKB",)

_LOCAL_INCLUDE = re.compile(r'^#include "([\w.]+)"\s*$', re.MULTILINE)

bcc.lib.bpf_num_tables.restype = ctypes.c_size_t
bcc.lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
bcc.lib.bpf_table_name.restype = ctypes.c_char_p
bcc.lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


class LoadError(RuntimeError):
    """The kernel refused a program (its verifier's log went to stderr) or a map."""


def program_source(mains: tuple[str, ...] = PROGRAM_FILES) -> str:
    """The program as one translation unit, with our own headers spliced in.

    bcc rewrites map calls such as ``flows.lookup(&key)`` only in the text it
    is handed, not in included files, so headers that touch maps must be part
    of that text. ``#line`` markers keep compiler messages pointing at the
    real file and line.
    """
    directory = bpf_source_dir()
    seen: set[str] = set()

    def splice(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = directory.joinpath(name).read_text()
        out, last = [f'#line 1 "{name}"\n'], 0
        for match in _LOCAL_INCLUDE.finditer(text):
            out.append(text[last:match.start()])
            out.append(splice(match.group(1)))
            line = text.count("\n", 0, match.end()) + 1
            out.append(f'#line {line} "{name}"\n')
            last = match.end() + 1
        out.append(text[last:])
        return "".join(out)

    return "".join(splice(main) for main in mains)


@dataclass(frozen=True)
class MapSpec:
    """One map as bcc made it: what a fresh one like it needs."""
    name: str
    index: int          # bcc's id of the table
    fd: int             # bcc's descriptor number, the one the instructions name
    info: MapInfo


class Rings:
    """The ring buffers of one Datapath, and what bcc's tables ask of their BPF object.

    A bcc table opens its ring through the object it was made with. bcc's BPF
    object keeps one manager for all of its rings, so every Datapath of the
    process would share it, and a closed Datapath's ring could never leave it.
    This stands in for the BPF object: one manager per Datapath."""

    Function = bcc.BPF.Function     # a program array's __setitem__ checks for one

    def __init__(self, module):
        self.module = module        # what bcc's tables read their types through
        self._manager = None

    def _open_ring_buffer(self, map_fd, callback, ctx=None) -> None:
        if self._manager is None:
            self._manager = bcc.lib.bpf_new_ringbuf(map_fd, callback, ctx)
            if not self._manager:
                raise LoadError(f"could not open the ring buffer of map fd {map_fd}")
        elif bcc.lib.bpf_add_ringbuf(self._manager, map_fd, callback, ctx) < 0:
            raise LoadError(f"could not open the ring buffer of map fd {map_fd}")

    def poll(self, timeout_ms: int) -> None:
        """Call each open ring's callback for what waits, or arrives within timeout_ms."""
        if self._manager is None:
            raise LoadError("no ring buffer is open")
        bcc.lib.bpf_poll_ringbuf(self._manager, timeout_ms)

    def consume(self) -> None:
        """Call each open ring's callback for what waits, without waiting."""
        if self._manager is None:
            raise LoadError("no ring buffer is open")
        bcc.lib.bpf_consume_ringbuf(self._manager)

    def close(self) -> None:
        if self._manager is not None:
            bcc.lib.bpf_free_ringbuf(self._manager)
            self._manager = None


_U64, _U32 = struct.Struct("=Q"), struct.Struct("=I")


class MappedRing:
    """A BPF ring buffer read straight from its pages, for a reader that runs
    the program itself (`sluice replay`): no call into bcc per read, no
    Python callback per record, and an empty ring costs one load.

    The kernel maps a ring's map as a consumer page (the reader's position,
    writable), then a producer page (the writer's position) and the data
    pages, mapped twice in a row so that a record that wraps reads on
    unbroken (linux/kernel/bpf/ringbuf.c). Each record is an 8-byte header
    (length, with a busy and a discarded bit; the page offset) and the
    record, rounded up to 8 bytes. The reader here is on the writer's own
    thread, between two test runs, so no record is ever half written."""

    BUSY_BIT, DISCARD_BIT, HEADER_BYTES = 1 << 31, 1 << 30, 8

    def __init__(self, map_fd: int):
        info = MapInfo()
        if object_info(map_fd, info) < 0:
            raise LoadError(f"reading the info of ring buffer map fd {map_fd}: {os.strerror(error_number(-1))}")
        page = mmap.PAGESIZE
        self.mask = info.max_entries - 1            # the data's size, a power of two
        self.data_start = page                      # where the data begins in self.pages
        self.consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.position = _U64.unpack_from(self.consumer)[0]      # the only reader: kept here too
        try:
            self.pages = mmap.mmap(map_fd, page + 2 * info.max_entries, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=page)
        except BaseException:
            self.consumer.close()
            raise

    def read(self, handle) -> None:
        """handle(buffer, offset) for each record waiting, in order: the
        record lies in buffer (read only, valid until the next read) from
        offset on."""
        producer = _U64.unpack_from(self.pages)[0]
        if producer == self.position:
            return
        position, pages, mask, start = self.position, self.pages, self.mask, self.data_start
        while position < producer:
            header = start + (position & mask)
            length = _U32.unpack_from(pages, header)[0]
            if length & self.BUSY_BIT:
                break
            if not length & self.DISCARD_BIT:
                handle(pages, header + self.HEADER_BYTES)
            position += ((length & ~(self.BUSY_BIT | self.DISCARD_BIT)) + self.HEADER_BYTES + 7) & ~7
        _U64.pack_into(self.consumer, 0, position)
        self.position = position

    def close(self) -> None:
        """Unmap it (each mapping holds a descriptor of the map)."""
        self.pages.close()
        self.consumer.close()


class Program:
    """bcc's compile of the data plane, and the means to load it with other maps."""

    def __init__(self, source: str, cflags: tuple[str, ...] = ()):
        self._bpf = bcc.BPF(text=source.encode(), cflags=[*CFLAGS, *cflags])
        self.module = self._bpf.module
        self.maps: dict[str, MapSpec] = {}
        for index in range(bcc.lib.bpf_num_tables(self.module)):
            name = bcc.lib.bpf_table_name(self.module, index).decode()
            fd = bcc.lib.bpf_table_fd(self.module, name.encode())
            info = MapInfo()
            if object_info(fd, info) < 0:
                raise LoadError(f"reading the info of map {name}: {os.strerror(error_number(-1))}")
            self.maps[name] = MapSpec(name, index, fd, info)
        self._btf_fd = _find_btf(next((s.info.btf_id for s in self.maps.values() if s.info.btf_id), 0))
        self._placeholder = os.open(os.devnull, os.O_RDONLY)
        self._types: dict[str, tuple] = {}
        self._binding = threading.Lock()
        self._park()

    def make_map(self, name: str, max_entries: int | None = None, inner_map_fd: int | None = None) -> int:
        """A new map like bcc's `name` (its BTF types too), sized max_entries if given;
        an outer map (map-in-map) takes inner maps like inner_map_fd."""
        info = self.maps[name].info
        opts = MapCreateOpts(sz=ctypes.sizeof(MapCreateOpts), map_flags=info.map_flags, map_extra=info.map_extra,
                             inner_map_fd=inner_map_fd or 0)
        if self._btf_fd >= 0 and info.btf_id:
            opts.btf_fd, opts.btf_key_type_id = self._btf_fd, info.btf_key_type_id
            opts.btf_value_type_id = info.btf_value_type_id
        fd = LIBBPF.bpf_map_create(info.type, name[:15].encode(), info.key_size, info.value_size,
                                   max_entries or info.max_entries, ctypes.byref(opts))
        if fd < 0:
            raise LoadError(f"creating map {name} ({max_entries or info.max_entries} entries): "
                            f"{os.strerror(error_number(fd))}")
        return fd

    def load(self, function: bytes, prog_type: int, maps: dict[str, int]) -> int:
        """Load one function bound to `maps` (name -> fd, every map); its fd."""
        with self._binding:
            for name, spec in self.maps.items():
                os.dup2(maps[name], spec.fd)
            try:
                module = self.module
                fd = bcc.lib.bcc_func_load(module, prog_type, function,
                                           bcc.lib.bpf_function_start(module, function),
                                           bcc.lib.bpf_function_size(module, function),
                                           bcc.lib.bpf_module_license(module),
                                           bcc.lib.bpf_module_kern_version(module), 0, None, 0, None, -1)
            finally:
                self._park()
        if fd < 0:
            raise LoadError(f"the kernel refused program {function.decode()}: "
                            f"{os.strerror(ctypes.get_errno())} (its verifier log is above)")
        return fd

    def table(self, rings: Rings, name: str, fd: int):
        """bcc's table object for the map behind fd, made like bcc's `name`."""
        if name not in self._types:
            self._types[name] = tuple(
                bcc.BPF._decode_table_type(json.loads(describe(self.module, name.encode()).decode()))
                for describe in (bcc.lib.bpf_table_key_desc, bcc.lib.bpf_table_leaf_desc))
        key_type, leaf_type = self._types[name]
        table = bcc.table.Table(rings, self.maps[name].index, fd, key_type, leaf_type, name.encode())
        info = MapInfo()
        if object_info(fd, info) == 0:
            table.max_entries = info.max_entries    # bcc's figure is the compile's, not this map's
        return table

    def _park(self) -> None:
        """Point bcc's descriptor numbers at /dev/null until the next load."""
        for spec in self.maps.values():
            os.dup2(self._placeholder, spec.fd)


def _find_btf(btf_id: int) -> int:
    """A descriptor of our own for the BTF object bcc loaded (btf_id), or -1.

    bcc holds one but does not say which; opening it by id would take
    CAP_SYS_ADMIN, which the systemd unit does not grant. So look among the
    process's own descriptors."""
    if not btf_id:
        return -1
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}") != "anon_inode:btf":
                continue
        except OSError:
            continue
        info = BtfInfo()
        if object_info(int(entry), info) == 0 and info.id == btf_id:
            return os.dup(int(entry))
    return -1


@functools.cache
def compiled(source: str, cflags: tuple[str, ...] = ()) -> Program:
    return Program(source, cflags)


def program() -> Program:
    """The data plane, compiled on first use in this process."""
    return compiled(program_source())


def tc_ingress_program() -> Program:
    """The classifier for tc ingress and the tc programs, compiled on first
    use: a process that puts no interface at tc ingress never compiles it."""
    return compiled(program_source(TC_INGRESS_FILES), TC_INGRESS_CFLAGS)
