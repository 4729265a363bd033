# SPDX-License-Identifier: GPL-2.0-only
"""`sluice replay`: run the real data plane over a capture, offline.

Every frame of a pcap or pcapng file goes, in order, through the same XDP
program that runs on interfaces, by BPF_PROG_TEST_RUN. The program reports
each flow it settles on its event ring, and hands over the Initial packets
of QUIC flows, which the controller's own code (controller/quic_flows.py)
settles; replay prints one line per flow.

Only a flow's inspection window decides its line: once the program has
reported a flow settled (classified, or given up on), the rest of its
packets cannot change the output, so replay keeps those flows in a table of
its own and runs their packets no more, except a bare SYN, which opens a new
flow on the same addresses and ports.

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

import ctypes
import ipaddress
import json
import os
import struct
import sys
import time

from scapy.utils import RawPcapReader

from .abi import ABI, PROTO_NAMES
from .block_methods import effective_method
from .datapath import Datapath
from .quic_flows import QuicFlows
from .testrun import run_xdp

# Link types (tcpdump.org/linktypes.html) whose frames replay can turn into
# the Ethernet frames the XDP program expects.
LINKTYPE_NULL = 0          # BSD loopback: a 4-byte address family in the capturing host's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PPP_ADDRESS_CONTROL = b"\xff\x03"   # HDLC framing, left out by some links (RFC 1662 section 3.2)
PPP_TO_ETHERTYPE = {0x0021: ETH_P_IP, 0x0057: ETH_P_IPV6}    # RFC 1332, RFC 5072
FAKE_MACS = bytes(12)
LINKTYPE_NAMES = {LINKTYPE_NULL: "BSD loopback", LINKTYPE_ETHERNET: "Ethernet", LINKTYPE_PPP: "PPP",
                  LINKTYPE_RAW: "raw IP", LINKTYPE_LINUX_SLL: "Linux cooked", LINKTYPE_IPV4: "raw IPv4",
                  LINKTYPE_IPV6: "raw IPv6", LINKTYPE_LINUX_SLL2: "Linux cooked v2"}

IPV4_MAPPED = bytes(10) + b"\xff\xff"
IP_MORE_FRAGMENTS_AND_OFFSET = 0x3FFF
IPPROTO_TCP, IPPROTO_UDP = 6, 17
VLAN_ETHERTYPES = (0x8100, 0x88A8)      # 802.1Q, 802.1ad tags before the IP header
TCP_SYN_ACK, TCP_SYN = 0x12, 0x02
PROGRESS_AFTER_S = 3.0      # a capture replayed faster than this shows no progress bar
PROGRESS_EVERY = 4096       # frames between looks at the clock
PROGRESS_WIDTH = 30


class CaptureError(Exception):
    pass


def open_capture(capture_path: str) -> RawPcapReader:
    try:
        return RawPcapReader(capture_path)
    except OSError as error:
        raise CaptureError(f"{capture_path}: {error.strerror}") from None
    except Exception as error:       # scapy raises Scapy_Exception for bad magic
        raise CaptureError(f"{capture_path}: not a pcap or pcapng file ({error})") from None


def check_linktype(capture_path: str, linktype: int) -> None:
    if linktype not in LINKTYPE_NAMES:
        supported = ", ".join(f"{number} ({name})" for number, name in LINKTYPE_NAMES.items())
        raise CaptureError(f"{capture_path}: link type {linktype} is not one replay reads; it reads {supported}")


def check_capture(capture_path: str) -> None:
    """Refuse (CaptureError) a file that is not a capture replay can read,
    as far as its header tells, before any program is loaded."""
    with open_capture(capture_path) as reader:
        linktype = getattr(reader, "linktype", None)
        if linktype is not None:          # pcap: one link type; pcapng names one per interface
            check_linktype(capture_path, linktype)


def to_ethernet(frame: bytes, linktype: int) -> bytes | None:
    """The frame as Ethernet, or None for a link type replay cannot read."""
    if linktype == LINKTYPE_ETHERNET:
        return frame
    if linktype == LINKTYPE_NULL:
        # The family's number differs by system (IPv6 is 10, 24, 28 or 30):
        # the IP header's version says as much.
        frame, linktype = frame[4:], LINKTYPE_RAW
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not frame:
            return None
        ethertype = ETH_P_IPV6 if frame[0] >> 4 == 6 else ETH_P_IP
        return FAKE_MACS + struct.pack("!H", ethertype) + frame
    if linktype == LINKTYPE_LINUX_SLL and len(frame) >= 16:
        return FAKE_MACS + frame[14:16] + frame[16:]
    if linktype == LINKTYPE_LINUX_SLL2 and len(frame) >= 20:
        return FAKE_MACS + frame[0:2] + frame[20:]
    if linktype == LINKTYPE_PPP:
        frame = frame.removeprefix(PPP_ADDRESS_CONTROL)
        ethertype = PPP_TO_ETHERTYPE.get(int.from_bytes(frame[:2], "big"))
        return FAKE_MACS + ethertype.to_bytes(2, "big") + frame[2:] if ethertype else None
    return None


def _address(raw) -> str:
    address = ipaddress.IPv6Address(bytes(raw))
    return str(address.ipv4_mapped or address)


def _port(raw: int) -> int:
    """A port as stored in the flow key: network byte order."""
    return struct.unpack("!H", struct.pack("=H", raw))[0]


def client_and_server(key, client_is_hi: int) -> tuple[tuple[str, int], tuple[str, int]]:
    lo = (_address(key.addr_lo), _port(key.port_lo))
    hi = (_address(key.addr_hi), _port(key.port_hi))
    return (hi, lo) if client_is_hi else (lo, hi)


def _record(key, client_is_hi, proto=None, name=None, rule=None) -> dict:
    client, server = client_and_server(key, client_is_hi)
    return {"client": client[0], "client_port": client[1],
            "server": server[0], "server_port": server[1],
            "proto": proto, "name": name,
            "rule": rule.name if rule else None,
            "action": ("monitor" if rule.monitor else rule.action) if rule else None,
            "method": (effective_method(rule, proto) if rule and rule.action == "block" and not rule.monitor
                       else None)}


def settled_key(key) -> tuple:
    """A flow key (struct flow_key) as the table of settled flows holds it."""
    return flow_identity(key.l4proto, bytes(key.addr_lo), struct.pack("=H", key.port_lo),
                         bytes(key.addr_hi), struct.pack("=H", key.port_hi))


def flow_identity(proto: int, address_a: bytes, port_a: bytes, address_b: bytes, port_b: bytes) -> tuple:
    """The same for both directions: (proto, lower end, higher end), each end
    a 16-byte address (IPv4 mapped) and a port as it is on the wire."""
    a, b = (address_a, port_a), (address_b, port_b)
    return (proto, a, b) if a < b else (proto, b, a)


def frame_flow(frame: bytes) -> tuple[tuple, bool] | None:
    """(flow identity, is a bare SYN) of an Ethernet frame carrying TCP or
    UDP straight over IPv4 or IPv6, unfragmented; None for anything else
    (which the program runs as it always does)."""
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00" and len(frame) >= 34:
        if int.from_bytes(frame[20:22], "big") & IP_MORE_FRAGMENTS_AND_OFFSET:
            return None
        proto, l4 = frame[23], 14 + (frame[14] & 15) * 4
        source, destination = IPV4_MAPPED + frame[26:30], IPV4_MAPPED + frame[30:34]
    elif ethertype == b"\x86\xdd" and len(frame) >= 54:
        proto, l4 = frame[20], 54
        source, destination = frame[22:38], frame[38:54]
    else:
        return None
    if proto == IPPROTO_TCP and len(frame) >= l4 + 14:
        bare_syn = frame[l4 + 13] & TCP_SYN_ACK == TCP_SYN
    elif proto == IPPROTO_UDP and len(frame) >= l4 + 8:
        bare_syn = False
    else:
        return None
    return flow_identity(proto, source, frame[l4:l4 + 2], destination, frame[l4 + 2:l4 + 4]), bare_syn


class FlowReport:
    """Turns classification events into the documented records, and keeps
    the flows they settled."""

    def __init__(self, policy):
        self.policy = policy
        self.records: list[dict] = []
        self.settled: set[tuple] = set()
        self.provisional: dict[tuple, int] = {}     # flow -> its record, named from its SYN's data

    def add_event(self, event) -> None:
        """A flow named from its SYN's data stays open: its next segment may
        undo that name (bpf/receiver.h), and its next event replaces it."""
        key = settled_key(event.key)
        rule = self.policy.rule_by_id(event.rule_id) if self.policy and event.rule_id else None
        name = bytes(event.name[:event.name_len]).decode("ascii", "backslashreplace") \
            if event.name_len else None
        record = _record(event.key, event.client_is_hi, PROTO_NAMES.get(event.proto), name, rule)
        if key in self.provisional:
            self.records[self.provisional.pop(key)] = record
        else:
            self.records.append(record)
        if event.provisional:
            self.provisional[key] = len(self.records) - 1
        else:
            self.settled.add(key)


    def add_quic_flow(self, key, client_is_hi, name, rule) -> None:
        self.settled.add(settled_key(key))
        self.records.append(_record(key, client_is_hi, "quic", name, rule))


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

    def __init__(self, capture_path: str, out=sys.stderr):
        self.capture_path, self.out = capture_path, out
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


def replay(capture_path: str, policy=None, skip_settled: bool = True) -> tuple[list[dict], int]:
    """Run the capture through the data plane; returns (records, frames).

    skip_settled=False runs every frame through the program, settled or not
    (tests compare the two)."""
    datapath = Datapath(policy, events=True)
    report = FlowReport(policy)
    event_type = ctypes.POINTER(datapath.table("event_buffers").sLeaf)
    datapath.table("events").open_ring_buffer(
        lambda _ctx, data, _size: report.add_event(ctypes.cast(data, event_type).contents))
    QuicFlows(datapath, on_settled=report.add_quic_flow)
    try:
        progress = Progress(capture_path)
        frames = run_capture(datapath, capture_path, report.settled if skip_settled else None, progress)
        progress.finish()
        report_unsettled(datapath, report)
    finally:
        datapath.close()
    return report.records, frames


def _ones_sum(data: bytes) -> int:
    """The 16-bit ones' complement sum of data (an odd last byte padded with zero), folded."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def fill_offloaded_checksum(frame: bytes) -> bytes:
    """A capture taken on the sending host holds its TCP segments as the
    stack handed them to a NIC that fills in the checksum: the field holds
    the pseudo-header's sum only. Fill it in, as the NIC did, or sluice takes
    the segment for a decoy the server drops (bpf/receiver.h). Any other
    checksum, right or wrong, is left as captured."""
    offset, ethertype = 14, int.from_bytes(frame[12:14], "big")
    while ethertype in VLAN_ETHERTYPES and len(frame) >= offset + 4:
        ethertype, offset = int.from_bytes(frame[offset + 2:offset + 4], "big"), offset + 4
    if ethertype == ETH_P_IP and len(frame) >= offset + 20:
        header_len = (frame[offset] & 0x0F) * 4
        if frame[offset + 9] != IPPROTO_TCP or \
                int.from_bytes(frame[offset + 6:offset + 8], "big") & IP_MORE_FRAGMENTS_AND_OFFSET:
            return frame
        tcp_len = int.from_bytes(frame[offset + 2:offset + 4], "big") - header_len
        pseudo = frame[offset + 12:offset + 20] + struct.pack("!BBH", 0, IPPROTO_TCP, tcp_len & 0xFFFF)
        start = offset + header_len
    elif ethertype == ETH_P_IPV6 and len(frame) >= offset + 40 and frame[offset + 6] == IPPROTO_TCP:
        tcp_len = int.from_bytes(frame[offset + 4:offset + 6], "big")
        pseudo = frame[offset + 8:offset + 40] + struct.pack("!II", tcp_len, IPPROTO_TCP)
        start = offset + 40
    else:
        return frame
    segment = frame[start:start + tcp_len]
    if tcp_len < 20 or len(segment) != tcp_len or \
            int.from_bytes(segment[16:18], "big") != _ones_sum(pseudo) or _ones_sum(pseudo + segment) == 0xFFFF:
        return frame
    check = 0xFFFF - _ones_sum(pseudo + segment[:16] + b"\0\0" + segment[18:])
    return frame[:start + 16] + check.to_bytes(2, "big") + frame[start + 18:]


def run_capture(datapath, capture_path: str, settled: set | None = None, progress: Progress | None = None) -> int:
    """The capture's frames through the program, but for those of flows in
    settled (which the rings fill as they are read, after every frame run);
    returns the number of frames read."""
    frames = 0
    with open_capture(capture_path) as reader:
        for data, metadata in reader:
            linktype = getattr(metadata, "linktype", None) or reader.linktype
            check_linktype(capture_path, linktype)
            frame = to_ethernet(bytes(data), linktype)
            if frame is None or len(frame) < 14:
                continue
            frame = fill_offloaded_checksum(frame)
            frames += 1
            if progress and frames % PROGRESS_EVERY == 0:
                progress.update(reader.f.tell(), frames)
            if settled:
                flow = frame_flow(frame)
                if flow and flow[0] in settled:
                    if not flow[1]:
                        continue
                    settled.discard(flow[0])
            run_xdp(datapath.function.fd, frame)
            # At once, so that the flow this frame settled is skipped from
            # its next frame (reading an empty ring costs no system call).
            datapath.consume_rings()
    return frames


def report_unsettled(datapath, report) -> None:
    """Flows the capture ended on before they were settled get a line too."""
    for key, flow in datapath.table("flows").items():
        if flow.state == ABI.SLUICE_FLOW_INSPECTING and flow.payload_packets:
            report.records.append(_record(key, flow.client_is_hi))


def print_records(records: list[dict], as_json: bool, out=sys.stdout) -> None:
    for record in records:
        print(json.dumps(record) if as_json else format_text(record), file=out)
