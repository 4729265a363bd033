# SPDX-License-Identifier: GPL-2.0-only
"""`sluice replay`: run the real data plane over a capture, offline.

The frames of a pcap or pcapng file (controller/capture.py reads it) go, in
order, through the same XDP program that runs on interfaces, by
BPF_PROG_TEST_RUN, every one of them, many frames a test run
(controller/replay_batch.py). The program reports each flow it settles on
its event ring, and hands over the Initial packets of QUIC flows, which
the controller's own code (controller/quic_flows.py) settles; replay prints
one line per flow.

Output (stable; tools may parse it):
  text:  CLIENT:PORT -> SERVER:PORT PROTO NAME rule=RULE action=ACTION [method=METHOD]
  json:  {"client", "client_port", "server", "server_port", "proto", "name",
          "rule", "action", "method"} per line
  proto is "tls", "http" or "quic", or null for a TCP flow that sent payload
  but never a ClientHello or request (or a QUIC flow whose ClientHello never
  completed); name is null when the flow carried none;
  method is how a blocked flow was blocked: drop, reset or page (a page goes
  to plain HTTP, other TCP flows are reset, QUIC flows always dropped), null
  unless the action is block; text lines of blocked flows end in method=METHOD;
  rule and action are null when no rule names the flow; action is "allow",
  "block" or "monitor" (a rule in monitor mode matched: the flow passes).
"""

import contextlib
import functools
import ipaddress
import json
import multiprocessing
import os
import socket
import struct
import sys
import time

import numpy

from .abi import ABI, PROTO_NAMES
from .block_methods import effective_method
from .capture import Capture, CaptureError, check_linktype
from .capture_reader import ReadAhead, read_here
from .datapath import Datapath
from .map_batches import delete_entries
from .program import MappedRing
from .quic_flows import QuicFlows
from .replay_batch import ChunkRunner

IPV4_MAPPED = bytes(10) + b"\xff\xff"
_U32 = struct.Struct("=I")
PROGRESS_AFTER_S = 3.0      # a capture replayed faster than this shows no progress bar
PROGRESS_WIDTH = 30


def check_capture(capture_path: str) -> None:
    """Refuse (CaptureError) a file that is not a capture replay can read,
    as far as its header tells, before any program is loaded."""
    with Capture(capture_path) as capture:
        if capture.linktype is not None:          # pcap: one link type; pcapng names one per interface
            check_linktype(capture_path, capture.linktype)


@functools.lru_cache(maxsize=65536)        # a capture's servers and clients recur over many flows
def _address(raw: bytes) -> str:
    if raw.startswith(IPV4_MAPPED):
        return socket.inet_ntoa(raw[12:])       # as ipaddress writes it, at a tenth of the cost
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped or address)


@functools.cache
def _key_layout(key_type) -> tuple[int, slice, slice, slice, slice]:
    """Where a flow key's protocol, lower address and port, higher address
    and port lie in its bytes (bcc's ctypes type of struct flow_key)."""
    def part(field):
        return slice(field.offset, field.offset + field.size)
    return (key_type.l4proto.offset, part(key_type.addr_lo), part(key_type.port_lo), part(key_type.addr_hi),
            part(key_type.port_hi))


def _key_parts(key) -> tuple[int, bytes, bytes, bytes, bytes]:
    """A flow key's protocol, lower address, port (as on the wire), higher
    address, port: read from one copy of its bytes, not field by field."""
    return _raw_key_parts(bytes(key), type(key))


def _raw_key_parts(raw: bytes, key_type) -> tuple[int, bytes, bytes, bytes, bytes]:
    """_key_parts() of a key's bytes (key_type: its ctypes type)."""
    proto, addr_lo, port_lo, addr_hi, port_hi = _key_layout(key_type)
    return raw[proto], raw[addr_lo], raw[port_lo], raw[addr_hi], raw[port_hi]


@functools.cache
def _event_reader(event_type) -> tuple[struct.Struct, int, int, type]:
    """An event's key, rule id, protocol, client end and name length as one
    struct.Struct (the fields between them skipped); where its name and its
    provisional byte lie; its key's type. Built from bcc's ctypes type of
    struct classification_event, which the header defines: read straight
    from the ring's pages, an event costs no ctypes copy of the whole (its
    name and ALPN buffers are most of it)."""
    layout, at = "=", 0
    for name, code in (("key", None), ("rule_id", "I"), ("proto", "B"), ("client_is_hi", "B"), ("name_len", "B")):
        field = getattr(event_type, name)
        layout += (f"{field.offset - at}x" if field.offset > at else "") + (code or f"{field.size}s")
        at = field.offset + field.size
    key_type = dict(event_type._fields_)["key"]
    return struct.Struct(layout), event_type.name.offset, event_type.provisional.offset, key_type


@functools.cache
def _datagram_reader(datagram_type) -> tuple[type, int, int, int, int]:
    """A struct quic_datagram's key type, where its key, length and bytes
    lie, and how many bytes it holds at most (from bcc's ctypes type): read
    straight from the ring's pages, a datagram costs no ctypes copy of its
    whole buffer."""
    key_type = dict(datagram_type._fields_)["key"]
    return (key_type, datagram_type.key.offset, datagram_type.len.offset, datagram_type.bytes.offset,
            datagram_type.bytes.size)


def client_and_server(parts, client_is_hi: int) -> tuple[tuple[str, int], tuple[str, int]]:
    """parts: a flow key's, as _key_parts() gives them."""
    _proto, addr_lo, port_lo, addr_hi, port_hi = parts
    lo = (_address(addr_lo), int.from_bytes(port_lo, "big"))
    hi = (_address(addr_hi), int.from_bytes(port_hi, "big"))
    return (hi, lo) if client_is_hi else (lo, hi)


def _record(parts, client_is_hi, proto=None, name=None, rule=None) -> dict:
    """parts: the flow key's, as _key_parts() gives them."""
    client, server = client_and_server(parts, client_is_hi)
    return {"client": client[0], "client_port": client[1],
            "server": server[0], "server_port": server[1],
            "proto": proto, "name": name,
            "rule": rule.name if rule else None,
            "action": ("monitor" if rule.monitor else rule.action) if rule else None,
            "method": (effective_method(rule, proto) if rule and rule.action == "block" and not rule.monitor
                       else None)}


class FlowReport:
    """Turns classification events into the documented records. A flow is
    known by its key's parts (_key_parts())."""

    def __init__(self, policy):
        self.policy = policy
        self.records: list[dict] = []
        self.provisional: dict[tuple, int] = {}     # flow -> its record, named from its SYN's data
        self.quic_records: dict[tuple, int] = {}    # flow -> the record of its latest QUIC life

    def add_event(self, parts, rule_id: int, proto: int, client_is_hi: int, name: bytes, provisional: int) -> None:
        """A classification event's fields (parts: its key's, as _key_parts()
        gives them). A flow named from its SYN's data stays open: its next
        segment may undo that name (bpf/receiver.h), and its next event
        replaces it."""
        rule = self.policy.rule_by_id(rule_id) if self.policy and rule_id else None
        record = _record(parts, client_is_hi, PROTO_NAMES.get(proto),
                         name.decode("ascii", "backslashreplace") if name else None, rule)
        if parts in self.provisional:
            self.records[self.provisional.pop(parts)] = record
        else:
            self.records.append(record)
        if provisional:
            self.provisional[parts] = len(self.records) - 1

    def add_quic_flow(self, key, client_is_hi, hello, rule) -> None:
        """A QUIC flow the controller settled. An Initial of another
        connection may still name it again (rename_quic_flow)."""
        parts = _key_parts(key)
        self.quic_records[parts] = len(self.records)
        self.records.append(_record(parts, client_is_hi, "quic", hello.sni if hello else None, rule))

    def rename_quic_flow(self, key, client_is_hi, hello, rule) -> None:
        """A stricter hello of another connection names the flow again: its line says so, in its place."""
        parts = _key_parts(key)
        self.records[self.quic_records[parts]] = _record(parts, client_is_hi, "quic", hello.sni, rule)

    def clear(self) -> None:
        """Forget every flow and record: the next capture starts afresh."""
        self.records = []
        self.provisional.clear()
        self.quic_records.clear()


def format_text(record: dict) -> str:
    def endpoint(host, port):
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (f"{endpoint(record['client'], record['client_port'])} -> "
            f"{endpoint(record['server'], record['server_port'])} "
            f"{record['proto'] or '-'} {record['name'] or '-'} "
            f"rule={record['rule'] or '-'} action={record['action'] or '-'}"
            + (f" method={record['method']}" if record["method"] else ""))


class Progress:
    """A progress bar on stderr, once a capture has taken PROGRESS_AFTER_S,
    and only on a terminal: a log or a pipe gets no carriage returns."""

    def __init__(self, capture_path: str, out=None):
        # sys.stderr when the bar is made, not when this module was imported:
        # whoever imported it first may have had a stderr that is closed now.
        self.capture_path, self.out = capture_path, out or sys.stderr
        self.size = max(os.path.getsize(capture_path), 1)
        self.started, self.shown = time.monotonic(), False

    def update(self, position: int, frames: int) -> None:
        if not self.out.isatty() or time.monotonic() - self.started < PROGRESS_AFTER_S:
            return
        done = min(position / self.size, 1.0)
        print(f"\r{self.capture_path}: [{'#' * int(done * PROGRESS_WIDTH):<{PROGRESS_WIDTH}}] {done:4.0%}, "
              f"{frames:,} frames", end="", file=self.out, flush=True)
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            print(file=self.out)


def replay_all(capture_paths: list[str], policy=None, jobs: int = 1, fix_checksums: bool = False):
    """(capture path, records) of each capture, in the order given, each
    replayed as replay() does, by up to jobs processes at once. A progress
    bar only with one job: several would write over each other."""
    if jobs == 1 or len(capture_paths) == 1:
        for path in capture_paths:
            yield path, replay(path, policy, fix_checksums=fix_checksums)[0]
        return
    # fork: the workers inherit the checked policy instead of a pickled copy.
    with multiprocessing.get_context("fork").Pool(jobs, initializer=_keep_settings,
                                                  initargs=(policy, fix_checksums)) as pool:
        yield from zip(capture_paths, pool.imap(_replay_records, capture_paths))


_worker_settings = (None, False)        # a worker's (policy, fix_checksums)


def _keep_settings(policy, fix_checksums: bool) -> None:
    global _worker_settings
    _worker_settings = policy, fix_checksums


def _replay_records(capture_path: str) -> list[dict]:
    policy, fix_checksums = _worker_settings
    return replay(capture_path, policy, show_progress=False, fix_checksums=fix_checksums, read_ahead=False)[0]


def replay(capture_path: str, policy=None, show_progress: bool = True, fix_checksums: bool = False,
           read_ahead: bool = True) -> tuple[list[dict], int]:
    """Run the capture through the data plane; returns (records, frames).

    fix_checksums: every checksum made right first
    (capture.fix_checksums). read_ahead: as Replayer's."""
    replayer = Replayer(policy, fix_checksums, read_ahead)
    try:
        progress = Progress(capture_path) if show_progress else None
        result = replayer.run(capture_path, progress)
        if progress:
            progress.finish()
        return result
    finally:
        replayer.close()


class Replayer:
    """The data plane loaded for replay, and what reads its rings: captures
    replay through it one after another (reset() in between).

    Its rings are read straight from their pages (program.MappedRing), the
    events' then the QUIC datagrams', as bcc's ring manager would call their
    callbacks, without a call into bcc or a Python callback per record. As
    they are read after every batch of frames (run_capture), the program
    wakes no reader (ring_wakeups=False: a wakeup would cost more than the
    program's run on a frame)."""

    def __init__(self, policy=None, fix_checksums: bool = False, read_ahead: bool = True):
        """read_ahead: large captures are read by a process of its own
        (capture_reader.py), forked here before the data plane is loaded,
        while the frames run in this one. Not in a process pool's worker,
        which may have no children."""
        self.fix_checksums = fix_checksums
        self.read_ahead = ReadAhead() if read_ahead else None
        self.rings: list[MappedRing] = []
        self.datapath = self.chunk_runner = None
        try:
            self.datapath = Datapath(policy, events=True, ring_wakeups=False)
            self.chunk_runner = ChunkRunner(self.datapath, self.read_rings)
            self.report = FlowReport(policy)
            self.quic = QuicFlows(self.datapath, on_settled=self.report.add_quic_flow, open_ring=False,
                                  on_renamed=self.report.rename_quic_flow)
            self.event_reader = _event_reader(self.datapath.table("event_buffers").sLeaf)
            self.datagram_reader = _datagram_reader(self.datapath.table("quic_datagram_layout").Leaf)
            for name in ("events", "quic_datagrams"):
                self.rings.append(MappedRing(self.datapath.map_fd(name)))
        except BaseException:
            self.close()
            raise
        self.event_ring, self.datagram_ring = self.rings

    def reset(self) -> None:
        """Forget every flow, in the program's tables and in the report: the next capture starts afresh."""
        self.read_rings()               # what a capture given up on midway left there, into the report cleared below
        self.datapath.flow_table().clear()
        delete_entries(self.datapath.table("streams"))
        self.quic.forget_flows()
        self.report.clear()

    def read_rings(self) -> None:
        self.event_ring.read(self._event)
        self.datagram_ring.read(self._datagram)

    def _event(self, buffer, offset: int) -> None:
        head, name_at, provisional_at, key_type = self.event_reader
        key, rule_id, proto, client_is_hi, name_len = head.unpack_from(buffer, offset)
        name_at += offset
        self.report.add_event(_raw_key_parts(key, key_type), rule_id, proto, client_is_hi,
                              buffer[name_at:name_at + name_len], buffer[offset + provisional_at])

    def _datagram(self, buffer, offset: int) -> None:
        key_type, key_at, length_at, bytes_at, capacity = self.datagram_reader
        key = key_type.from_buffer_copy(buffer, offset + key_at)
        length = min(_U32.unpack_from(buffer, offset + length_at)[0], capacity)
        self.quic.add_datagram(key, buffer[offset + bytes_at:offset + bytes_at + length])

    def run(self, capture_path: str, progress: Progress | None = None) -> tuple[list[dict], int]:
        """The capture through the program (run_capture), and a line for each
        flow no event reported (report_unreported); (records, frames)."""
        frames = run_capture(self.chunk_runner, capture_path, progress, self.fix_checksums, self.read_ahead)
        report_unreported(self.datapath, self.report)
        return self.report.records, frames

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        if self.chunk_runner:
            self.chunk_runner.close()
        if self.datapath:
            self.datapath.close()
        if self.read_ahead:
            self.read_ahead.close()


def run_capture(chunk_runner: ChunkRunner, capture_path: str, progress: Progress | None = None,
                fix_checksums: bool = False, read_ahead: ReadAhead | None = None) -> int:
    """Every frame of the capture through the program, a chunk at a time
    (chunk_runner: controller/replay_batch.py), which hands what the
    program sent on its rings to the report; returns the number of frames
    read. read_ahead: a capture large enough (ReadAhead.takes) is read by
    that process (capture_reader.py) while this one runs the frames read
    before."""
    frames = 0
    if read_ahead and read_ahead.takes(capture_path):
        chunks = read_ahead.chunks(capture_path, fix_checksums)
    else:
        chunks = read_here(capture_path, fix_checksums)
    with contextlib.closing(chunks):        # on any way out: the capture unmapped, a reader out of step stopped
        for chunk in chunks:                # capture.Chunk: consecutive frames of the capture
            chunk_runner.run(chunk.buffer, chunk.offsets, chunk.lengths)
            frames += len(chunk.offsets)
            if progress:
                progress.update(chunk.file_end, frames)
    return frames


def report_unreported(datapath, report) -> None:
    """Flows that no event reported get a line too, in the order of their
    flow keys (addresses, ports; a hash map's own order changes with every
    map, so the output would change from run to run): those the capture
    ended on before they were settled, those that sent only decoys (nothing
    the server kept was read), and those `on_evasion: block` blocked, at
    the decoy, before any name was read."""
    unreported = []
    flow_table = datapath.flow_table()
    numbered = flow_table.numbered_keys()
    for ids, flows, count in flow_table.batches():
        # The batch's states and windows read by numpy, its thousands of
        # settled flows not one by one.
        values = numpy.frombuffer(flows, dtype=numpy.uint8).reshape(len(flows), -1)[:count]

        def byte(name: str):                    # a one-byte field, of each flow of the batch
            return values[:, _flow_field(flows._type_, name).start]

        evaded = (byte("receiver") & ABI.SLUICE_RECEIVER_EVASION).astype(bool)
        inspected = (byte("state") == ABI.SLUICE_FLOW_INSPECTING) & ((byte("payload_packets") > 0) | evaded)
        # bpf/receiver.h receiver_block_evasion(): blocked under no rule.
        blocked_for_evasion = ((byte("state") == ABI.SLUICE_FLOW_CLASSIFIED) &
                               (byte("action") == ABI.SLUICE_ACTION_BLOCK) &
                               evaded &
                               ~values[:, _flow_field(flows._type_, "rule_id")].any(1))
        for index in numpy.flatnonzero(inspected | blocked_for_evasion).tolist():
            key = flow_table.flow_key(ids[index], numbered)
            if key is None:
                continue
            flow = flows[index]
            record = _record(_key_parts(key), flow.client_is_hi)
            if blocked_for_evasion[index]:
                record.update(proto=PROTO_NAMES.get(flow.proto), action="block", method="drop")
            unreported.append((bytes(key), record))
    report.records += [record for _key, record in sorted(unreported, key=lambda pair: pair[0])]


@functools.cache
def _flow_field(flow_type, name: str):
    """The bytes of flow_type's field name, as a slice of its value."""
    field = getattr(flow_type, name)
    return slice(field.offset, field.offset + field.size)


def print_records(records: list[dict], as_json: bool, out=None, capture: str | None = None) -> None:
    """capture: name the capture on each line (several were replayed)."""
    for record in records:
        if as_json:
            print(json.dumps({"capture": capture, **record} if capture else record), file=out)
        else:
            print(f"{capture}: {format_text(record)}" if capture else format_text(record), file=out)
