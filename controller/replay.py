# SPDX-License-Identifier: GPL-2.0-only
"""`sluice replay`: run the real data plane over a capture, offline.

The frames of a pcap or pcapng file (controller/capture.py reads it) go, in
order, through the same XDP program that runs on interfaces, by
BPF_PROG_TEST_RUN, all but those that cannot change a line (run_capture), many frames a
test run (controller/replay_batch.py). The program reports
each flow it settles on its event ring, and hands over the Initial packets
of QUIC flows, which the controller's own code (controller/quic_flows.py)
settles; replay prints one line per flow.

Only a flow's inspection window decides its line: once the program has
reported a flow settled (classified, or given up on; a QUIC flow once no
hello of another connection could name it any harder: FlowReport.add_quic_flow),
the rest of its packets cannot change the output, so replay keeps those flows in a table of
its own and, once it has read the event (after the batch that sent it), runs their
packets no more, except a bare SYN, which may open a
new flow on the same addresses and ports (its data at the SYN's stream start
does: bpf/flow.h), so the flow's frames run again from it.

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
import math
import multiprocessing
import os
import socket
import struct
import sys
import time

import numpy

from .abi import ABI, PROTO_NAMES
from .block_methods import effective_method
from .capture import (FRAME_EMPTY_END, FRAME_EMPTY_FROM, FRAME_SHORT_DATAGRAM, FRAME_SYN_BEHIND_TAGS, FRAME_UNREAD,
                      Capture, CaptureError, check_linktype, flow_identity, frame_address)
from .capture_reader import ReadAhead, read_here
from .datapath import Datapath
from .map_batches import delete_entries
from .program import MappedRing
from .quic_flows import QuicFlows, strictness
from .replay_batch import FrameBatch

IPV4_MAPPED = bytes(10) + b"\xff\xff"
_U32 = struct.Struct("=I")
# A flow's quiet segments run at least this many times per idle timeout,
# to keep it from idling out (run_capture): far more often than the
# program's own refresh (idle >> FLOW_REFRESH_SHIFT, bpf/flow.h) needs.
QUIET_SEGMENTS_PER_IDLE = 32
NO_FLOW = -1                # capture_reader.Batch.flows of a frame frame_flows cannot sort into a flow
PROGRESS_AFTER_S = 3.0      # a capture replayed faster than this shows no progress bar
PROGRESS_EVERY = 4096       # frames between looks at the clock
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


class SettledFlows:
    """The flows the program has settled, by the number frame_flows gives
    each flow: a byte per flow, which the frame loop reads at list speed;
    which end of each is its client, as its bare SYN said; the UDP flows
    the program has handed a QUIC datagram of over (and so made an entry
    for); and when a frame of each flow last ran (time.monotonic())."""

    def __init__(self):
        self.numbers: dict[bytes, int] = {}      # flow identity -> number
        self.flags = bytearray()                 # by number: 1 settled
        self.clients = bytearray()               # by number: 0 no SYN seen, else the end that sent it
                                                 # (capture.FRAME_SYN_FROM), FRAME_SYN_BEHIND_TAGS: either
        self.quic = bytearray()                  # by number: 1 a QUIC datagram of the flow was handed over
        self.last_run: list[float] = []          # by number

    def add(self, identity: bytes) -> None:
        self.flags[self._number(identity)] = 1

    def add_quic(self, identity: bytes) -> None:
        self.quic[self._number(identity)] = 1

    def _number(self, identity: bytes) -> int:
        number = self.numbers.setdefault(identity, len(self.numbers))
        if number >= len(self.flags):
            self.make_room()
        return number

    def make_room(self) -> None:
        """Room for every numbered flow (frame_flows numbers new ones)."""
        self.flags.extend(bytes(len(self.numbers) - len(self.flags)))
        self.clients.extend(bytes(len(self.numbers) - len(self.clients)))
        self.quic.extend(bytes(len(self.numbers) - len(self.quic)))
        self.last_run.extend([-math.inf] * (len(self.numbers) - len(self.last_run)))

    def clear(self) -> None:
        self.numbers.clear()
        self.flags.clear()
        self.clients.clear()
        self.quic.clear()
        self.last_run.clear()


class FlowReport:
    """Turns classification events into the documented records, and keeps
    the flows they settled."""

    def __init__(self, policy):
        self.policy = policy
        self.records: list[dict] = []
        self.settled = SettledFlows()
        self.provisional: dict[bytes, int] = {}     # flow identity -> its record, named from its SYN's data
        self.quic_records: dict[bytes, int] = {}    # flow identity -> the record of its latest QUIC life
        # No hello names a QUIC flow held this hard any harder (rename_quic_flow).
        self.strictest = max((strictness(rule) for rule in policy.rules), default=0) if policy else 0

    def add_event(self, parts, rule_id: int, proto: int, client_is_hi: int, name: bytes, provisional: int) -> None:
        """A classification event's fields (parts: its key's, as _key_parts()
        gives them). A flow named from its SYN's data stays open: its next
        segment may undo that name (bpf/receiver.h), and its next event
        replaces it."""
        key = flow_identity(*parts)             # as frame_flows numbers the flow
        rule = self.policy.rule_by_id(rule_id) if self.policy and rule_id else None
        record = _record(parts, client_is_hi, PROTO_NAMES.get(proto),
                         name.decode("ascii", "backslashreplace") if name else None, rule)
        if key in self.provisional:
            self.records[self.provisional.pop(key)] = record
        else:
            self.records.append(record)
        if provisional:
            self.provisional[key] = len(self.records) - 1
        else:
            self.settled.add(key)

    def add_quic_flow(self, key, client_is_hi, hello, rule) -> None:
        """A QUIC flow the controller settled. Unless it gave up or is held
        as hard as any rule of the policy holds, an Initial of another
        connection may still name it again (rename_quic_flow): its frames
        keep running."""
        parts = _key_parts(key)
        identity = flow_identity(*parts)
        self.quic_records[identity] = len(self.records)
        self.records.append(_record(parts, client_is_hi, "quic", hello.sni if hello else None, rule))
        if hello is None or strictness(rule) >= self.strictest:
            self.settled.add(identity)

    def rename_quic_flow(self, key, client_is_hi, hello, rule) -> None:
        """A stricter hello of another connection names the flow again: its line says so, in its place."""
        parts = _key_parts(key)
        identity = flow_identity(*parts)
        self.records[self.quic_records[identity]] = _record(parts, client_is_hi, "quic", hello.sni, rule)
        if strictness(rule) >= self.strictest:
            self.settled.add(identity)

    def clear(self) -> None:
        """Forget every flow and record: the next capture starts afresh."""
        self.records = []
        self.settled.clear()
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


def replay(capture_path: str, policy=None, skip_settled: bool = True,
           show_progress: bool = True, fix_checksums: bool = False,
           read_ahead: bool = True) -> tuple[list[dict], int]:
    """Run the capture through the data plane; returns (records, frames).

    skip_settled=False runs every frame through the program, settled or not
    (tests compare the two). fix_checksums: every checksum made right
    first (capture.fix_checksums). read_ahead: as Replayer's."""
    replayer = Replayer(policy, fix_checksums, read_ahead)
    try:
        progress = Progress(capture_path) if show_progress else None
        result = replayer.run(capture_path, skip_settled, progress)
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
        self.datapath = self.frame_batch = None
        try:
            self.datapath = Datapath(policy, events=True, ring_wakeups=False)
            self.frame_batch = FrameBatch(self.datapath, self.read_rings)
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
        self.frame_batch.discard()
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
        self.report.settled.add_quic(flow_identity(*_key_parts(key)))
        self.quic.add_datagram(key, buffer[offset + bytes_at:offset + bytes_at + length])

    def run(self, capture_path: str, skip_settled: bool = True,
            progress: Progress | None = None) -> tuple[list[dict], int]:
        """The capture through the program (run_capture), and a line for each
        flow no event reported (report_unreported); (records, frames)."""
        frames = run_capture(self.datapath, self.frame_batch, capture_path,
                             self.report.settled if skip_settled else None, progress, self.fix_checksums,
                             self.read_ahead)
        report_unreported(self.datapath, self.report)
        return self.report.records, frames

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        if self.frame_batch:
            self.frame_batch.close()
        if self.datapath:
            self.datapath.close()
        if self.read_ahead:
            self.read_ahead.close()


def run_capture(datapath, frame_batch: FrameBatch, capture_path: str,
                settled: SettledFlows | None = None, progress: Progress | None = None,
                fix_checksums: bool = False, read_ahead: ReadAhead | None = None) -> int:
    """The capture's frames through the program, but for those that cannot
    change a line; returns the number of frames read. The frames run in
    batches (frame_batch: controller/replay_batch.py), which hand what the
    program sent on its rings to the report. With settled None, every
    frame runs.

    Left out: frames of flows in settled (which the rings fill as they are
    read) other than a bare SYN, which may open a new flow on the same
    addresses and ports, and the frames after it; and quiet segments of the others, but for one per
    quiet_every. Quiet: TCP without payload, FIN or RST, not a bare SYN, of
    a flow whose SYN was not seen or sent by its client. A quiet segment
    does not reach the inspection (bpf/sluice_xdp.c inspect_tcp_segment:
    only a payload or a bare SYN goes on), nor tells the program the
    server's sequence numbers (note_server_segment: only the server's
    segments of a flow its SYN opened do, the SYN-ACK first, which is why
    the server's run); its only effect on a flow is to refresh
    its idle clock (bpf/flow.h flow_touch), which one such segment per
    quiet_every, far less than the idle timeout, keeps doing (and, in a
    flow judged at its opening packet, to be counted under that judgement,
    which prints no line). Left out too: UDP datagrams too short to be a
    QUIC client's Initial (capture.FRAME_SHORT_DATAGRAM) of a flow the
    program has handed no QUIC datagram of over: it has no entry for such
    a flow, makes none, and passes the datagram untouched (bpf/quic.h
    quic_judge_udp), unless rules for any flow judge each UDP flow at its
    first datagram (SLUICE_CFG_OPENING_RULES). And frames the program
    does not read (capture.FRAME_UNREAD: ARP, ICMP, ...), which it passes
    untouched.

    A batch is run and read in full before a bare SYN of a flow with frames
    in it (or with a frame frame_flows names no flow of: a tunnel's, a
    fragment's, which may be any flow's), which must find the flow's
    earlier life settled before it opens a new one. Within a batch, a flow
    settled by one of its frames has the frames after it run too, which
    changes no line; so do the short datagrams of a UDP flow with frames in
    it (or after a frame of no flow), whose QUIC datagram, if one of them
    hands it over, is read only where the batch stops for it. Events are
    read in the order they were sent.

    read_ahead: a capture large enough (ReadAhead.takes) is read by that
    process (capture_reader.py) while this one runs the frames read before;
    with settled None, never."""
    clock = time.monotonic
    config = datapath.config()
    quiet_every = config.flow_idle_jiffies * config.jiffy_ns / 1e9 / QUIET_SEGMENTS_PER_IDLE
    short_datagrams_open_no_flow = not config.flags & ABI.SLUICE_CFG_OPENING_RULES
    frames = 0
    # The flows with frames in the batch, whose events are not read yet;
    # NO_FLOW among them: a frame of a flow frame_flows cannot name (a
    # tunnel's, a fragment's), which may be any flow's.
    in_batch: set[int] = set()
    identities = settled.numbers if settled is not None else None
    if read_ahead and settled is not None and read_ahead.takes(capture_path):
        batches = read_ahead.batches(capture_path, fix_checksums, identities)
    else:
        batches = read_here(capture_path, fix_checksums, identities)

    def run_batch() -> None:
        frame_batch.run()
        in_batch.clear()

    with contextlib.closing(batches):       # on any way out: the capture unmapped, a reader out of step stopped
        for chunk in batches:              # capture_reader.Batch: a chunk of the capture's frames
            count = len(chunk.offsets)
            if not count:
                continue
            if settled is not None:
                settled.make_room()
                flags, clients, quic, last_run = settled.flags, settled.clients, settled.quic, settled.last_run
            base = frame_address(chunk.buffer)
            with memoryview(chunk.buffer) as frames_in_chunk:
                for offset, length, flow, kind in zip(*frames_to_look_at(chunk, settled)):
                    if flow >= 0:
                        if 0 < kind <= FRAME_SYN_BEHIND_TAGS:           # a bare SYN
                            if flow in in_batch or NO_FLOW in in_batch:
                                run_batch()
                            flags[flow] = 0
                            # Two SYNs from either end, or one behind tags: either end may be its server.
                            clients[flow] = kind if clients[flow] in (0, kind) else FRAME_SYN_BEHIND_TAGS
                        elif flags[flow]:
                            continue
                        elif kind == FRAME_SHORT_DATAGRAM:
                            if (short_datagrams_open_no_flow and not quic[flow] and flow not in in_batch
                                    and NO_FLOW not in in_batch):
                                continue
                        elif kind in FRAME_EMPTY_FROM:
                            quiet = clients[flow] in (0, kind - FRAME_EMPTY_END)
                            if quiet and clock() - last_run[flow] < quiet_every:
                                continue
                        last_run[flow] = clock()
                    in_batch.add(flow)
                    if frame_batch.add(frames_in_chunk, offset, length, base + offset):
                        in_batch.clear()
            frames += count
            if progress:
                progress.update(chunk.file_end, frames)
    run_batch()
    return frames


def frames_to_look_at(chunk, settled: SettledFlows | None) -> tuple[list[int], list[int], list[int], list[int]]:
    """The offsets, lengths, flows and kinds of the frames of chunk (a
    capture_reader.Batch) that the
    frame loop must look at: all but those it leaves out whatever the frames
    before them do, found by numpy rather than a Python step per frame.
    These are frames the program does not read, and those of flows settled
    already, unless a bare SYN of the chunk opens the flow again. settled:
    with room for every flow of the chunk (make_room())."""
    flows, kinds = chunk.flows, chunk.kinds
    look = kinds != FRAME_UNREAD
    if settled is not None and len(settled.flags):
        known = flows >= 0
        numbers = numpy.where(known, flows, 0)
        reopened = numpy.zeros(len(settled.flags), dtype=bool)
        reopened[flows[known & (kinds > 0) & (kinds <= FRAME_SYN_BEHIND_TAGS)]] = True
        # A copy: a view would keep the bytearray from growing.
        settled_now = numpy.frombuffer(bytes(settled.flags), dtype=numpy.uint8).astype(bool)
        look &= ~(known & settled_now[numbers] & ~reopened[numbers])
    chosen = numpy.flatnonzero(look)
    return (chunk.offsets[chosen].tolist(), chunk.lengths[chosen].tolist(), flows[chosen].tolist(),
            kinds[chosen].tolist())


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
