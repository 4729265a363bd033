# SPDX-License-Identifier: GPL-2.0-only
"""Reading pcap and pcapng captures for `sluice replay`, fast.

The file is mapped into memory (a gzipped one is read into it) and walked
record by record, a chunk of frames at a time; the frames stay where they
are until replay copies the chunk whole into its driver's map
(controller/replay_batch.py). Frames of link types other than Ethernet are
rewritten as Ethernet frames, in a buffer of the chunk's own.
Checksums a capture on the sending host holds half done are filled in
(fill_offloaded_checksum), in the chunk: the file itself is mapped copy on
write. With fix_checksums, every IPv4 header, TCP and UDP checksum is made
right instead (fix_checksums), for captures anonymised without fixing them.
A chunk's frames lie within CHUNK_BYTES of its first one's start, as the
replay driver takes them (controller/replay_batch.py).
"""

import ctypes
import functools
import gzip
import mmap
import os
import struct
from dataclasses import dataclass

import numpy

from .abi import ABI
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
ETHERNET_HEADER = 14
LINKTYPE_NAMES = {LINKTYPE_NULL: "BSD loopback", LINKTYPE_ETHERNET: "Ethernet", LINKTYPE_PPP: "PPP",
                  LINKTYPE_RAW: "raw IP", LINKTYPE_LINUX_SLL: "Linux cooked", LINKTYPE_IPV4: "raw IPv4",
                  LINKTYPE_IPV6: "raw IPv6", LINKTYPE_LINUX_SLL2: "Linux cooked v2"}

# pcap (wiki.wireshark.org/Development/LibpcapFileFormat): a 24-byte file
# header, then records of a 16-byte header (captured length at byte 8) and
# the frame. The magic's byte order is the file's; a second magic means
# nanosecond timestamps, which replay does not read.
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<",
               b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}
PCAP_FILE_HEADER, PCAP_RECORD_HEADER = 24, 16
# pcapng (RFC draft-ietf-opsawg-pcapng): blocks of type, total length, body,
# total length again. A section header's byte-order magic sets the byte order
# of the blocks after it; interface descriptions, numbered from 0 in each
# section, give the link type of the packets that name them.
PCAPNG_SECTION_HEADER = b"\x0a\x0d\x0d\x0a"
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_INTERFACE, PCAPNG_OBSOLETE_PACKET, PCAPNG_SIMPLE_PACKET, PCAPNG_ENHANCED_PACKET = 1, 2, 3, 6
GZIP_MAGIC = b"\x1f\x8b"

# A chunk holds up to CHUNK_FRAMES frames, within CHUNK_BYTES of its first
# one's start: what the replay driver's map holds (bpf/sluice_abi.h).
CHUNK_FRAMES, CHUNK_BYTES = ABI.SLUICE_REPLAY_CHUNK_FRAMES, ABI.SLUICE_REPLAY_CHUNK_BYTES
# A shared capture's memfd holds this many chunks, each copied into the next
# slot round: the reader process stays at most two chunks ahead of the one
# replay runs (capture_reader.py), so a third slot is never one in use.
# Slots used again keep their pages: no page to fault in and zero for
# every chunk, and the memory stays this small whatever the capture's size.
SHARED_SLOTS = 3
# Bytes of each frame gathered once per chunk for the passes over it: an
# Ethernet header, two VLAN tags, an IPv4 header with options (or IPv6's)
# and a TCP header up to its checksum. A pass that reads further gathers
# those bytes from the buffer itself.
HEAD_BYTES = 128

IP_MORE_FRAGMENTS_AND_OFFSET = 0x3FFF
IPPROTO_TCP, IPPROTO_UDP = 6, 17
VLAN_ETHERTYPES = (0x8100, 0x88A8)      # 802.1Q, 802.1ad tags before the IP header
VLAN_TAGS_READ = 2                      # tags the chunk's passes step over (Chunk.network); behind more,
                                        # fill_offloaded_checksum works frame by frame
# Longer frames are cut to this, as a snap length would: the longest IP
# packet behind an Ethernet header and two tags. A test run takes no more
# than a page and MAX_SKB_FRAGS (17) pages of a frame (ENOMEM:
# net/bpf/test_run.c), and only a host's own GRO or BIG TCP packets are longer.
LONGEST_FRAME = ETHERNET_HEADER + 4 * VLAN_TAGS_READ + 65535


class CaptureError(Exception):
    pass


def check_linktype(capture_path: str, linktype: int) -> None:
    if linktype not in LINKTYPE_NAMES:
        supported = ", ".join(f"{number} ({name})" for number, name in LINKTYPE_NAMES.items())
        raise CaptureError(f"{capture_path}: link type {linktype} is not one replay reads; it reads {supported}")


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


@dataclass
class Chunk:
    """Consecutive Ethernet frames of a capture, where they lie in memory,
    and what the passes over them (fill_offloaded_checksums) read, made
    once for all of them: copies, never views of the buffer, since a view
    of a mapped file would keep it from closing."""
    buffer: bytearray | mmap.mmap   # holds the frames
    offsets: numpy.ndarray          # of each frame in buffer (int64)
    lengths: numpy.ndarray
    file_end: int                   # where in the file the chunk's last record ends (for progress)

    @functools.cached_property
    def heads(self) -> numpy.ndarray:
        """Each frame's first HEAD_BYTES (past a frame's end: junk), a row
        per frame; gathered before fill_offloaded_checksums changes any."""
        return _gather(_bytes_of(self.buffer), self.offsets, HEAD_BYTES)

    @functools.cached_property
    def network(self) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Where each frame's network header starts, past up to
        VLAN_TAGS_READ VLAN tags, and the ethertype before it (a VLAN
        ethertype: more tags than that)."""
        ip_start = numpy.full(len(self.offsets), ETHERNET_HEADER, dtype=numpy.int64)
        ethertype = _words(self.heads[:, 12:14])[:, 0]
        more_tags = _vlan(ethertype)
        for _ in range(VLAN_TAGS_READ):
            if not more_tags.any():
                break
            ethertype = numpy.where(more_tags, _words(self.columns(ip_start + 2, 2))[:, 0], ethertype)
            ip_start += more_tags * 4
            more_tags = _vlan(ethertype)
        return ip_start, ethertype

    def columns(self, starts, count: int):
        """count bytes of each frame from its byte starts on (one row each)."""
        if len(starts) and (starts + count <= HEAD_BYTES).all():
            first = int(starts[0])
            if (starts == first).all():         # one layout across the chunk: a view, no copy
                return self.heads[:, first:first + count]
            return _records(self.heads.reshape(-1), numpy.arange(len(starts)) * HEAD_BYTES + starts, count)
        return _gather(_bytes_of(self.buffer), self.offsets + starts, count)


def _bytes_of(buffer):
    return numpy.frombuffer(buffer, dtype=numpy.uint8)


class Capture:
    """A pcap or pcapng file, read a Chunk at a time (`chunks()`)."""

    def __init__(self, path: str, fix_checksums: bool = False, shared: bool = False):
        """fix_checksums: make every checksum right (capture.fix_checksums),
        rather than fill in only the half-done ones. shared: the chunks
        that leave their Ethernet frames where the file has them hold them
        in a memfd of SHARED_SLOTS chunks (self.memfd) instead, each chunk's
        bytes copied into the next slot as it is read, which another process
        maps to see the frames with their checksums filled in
        (capture_reader.py)."""
        self.path, self.fix_checksums, self.memfd, self.next_slot = path, fix_checksums, None, 0
        try:
            with open(path, "rb") as file:
                magic = file.read(4)
                if magic[:2] == GZIP_MAGIC:
                    file.seek(0)
                    self.data = bytearray(gzip.GzipFile(fileobj=file).read())
                elif len(magic) == 4:
                    # Private and writable, so that ctypes can take the frames' addresses.
                    self.data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
                else:
                    self.data = bytearray(magic)
            self.frames = self._shared_memory(SHARED_SLOTS * CHUNK_BYTES) if shared and self.data else self.data
        except OSError as error:
            self.close()
            raise CaptureError(f"{path}: {error.strerror or error}") from None
        self.size = len(self.data)
        head = bytes(self.data[:4])
        if head in PCAP_MAGICS:
            self.format, self.order = "pcap", PCAP_MAGICS[head]
            if self.size < PCAP_FILE_HEADER:
                raise CaptureError(f"{path}: not a pcap or pcapng file (its header is cut short)")
            self.linktype = struct.unpack_from(self.order + "I", self.data, 20)[0]
        elif head == PCAPNG_SECTION_HEADER:
            self.format, self.linktype = "pcapng", None      # pcapng names one per interface
        else:
            self.close()
            raise CaptureError(f"{path}: not a pcap or pcapng file (it begins {head.hex() or 'empty'})")

    def _shared_memory(self, size: int) -> mmap.mmap:
        """A new memfd of size bytes (self.memfd), mapped shared."""
        self.memfd = os.memfd_create("sluice-capture", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, size)
        return mmap.mmap(self.memfd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def close(self) -> None:
        for mapping in (getattr(self, "data", None), getattr(self, "frames", None)):
            if isinstance(mapping, mmap.mmap):
                mapping.close()
        if self.memfd is not None:
            os.close(self.memfd)
            self.memfd = None

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()

    def chunks(self):
        """The capture's frames as Ethernet, a Chunk at a time (up to
        CHUNK_FRAMES, within CHUNK_BYTES), their half-done checksums filled
        in (or all made right)."""
        for chunk in self._pcap_chunks() if self.format == "pcap" else self._pcapng_chunks():
            (fix_all_checksums if self.fix_checksums else fill_offloaded_checksums)(chunk)
            yield chunk

    def _pcapng_chunks(self):
        batch = []
        for record in self._pcapng_records():
            batch.append(record)
            if len(batch) == CHUNK_FRAMES:
                yield from self._rewritten(batch)
                batch = []
        if batch:
            yield from self._rewritten(batch)

    def _pcap_chunks(self):
        """A record cut short by the file's end (a capture still being
        written) ends the capture."""
        check_linktype(self.path, self.linktype)
        data, size, linktype = self.data, self.size, self.linktype
        captured_length = struct.Struct(self.order + "I").unpack_from
        last_header = size - PCAP_RECORD_HEADER        # where the last record that fits in the file can start
        position = PCAP_FILE_HEADER
        while position <= last_header:
            # The walk from record to record is the one step per frame left
            # in Python: it only notes where each record starts. The frames'
            # lengths, the chunk's end and a record cut short are then worked
            # out for all of them at once.
            limit = position + PCAP_RECORD_HEADER + CHUNK_BYTES     # CHUNK_BYTES from the first frame's start
            walk_until = min(limit, last_header)
            records = []
            add_record = records.append
            for _ in range(CHUNK_FRAMES):
                add_record(position)
                position += PCAP_RECORD_HEADER + captured_length(data, position + 8)[0]
                if position > walk_until:
                    break
            offsets = numpy.array(records, dtype=numpy.int64) + PCAP_RECORD_HEADER
            ends = numpy.append(offsets[1:] - PCAP_RECORD_HEADER, position)
            in_file = int(numpy.searchsorted(ends, size, side="right"))    # ends only grow
            count = min(in_file, max(1, int(numpy.searchsorted(ends, limit, side="right"))))
            if count == 0:
                return
            offsets, lengths = offsets[:count], ends[:count] - offsets[:count]
            # A record cut short ends the capture: at the file's end.
            position = size if in_file == count < len(ends) else int(ends[count - 1])
            lengths = numpy.minimum(lengths, LONGEST_FRAME)
            if linktype == LINKTYPE_ETHERNET and lengths.min() >= ETHERNET_HEADER:
                if self.frames is not data:
                    offsets = self._into_slot(offsets, lengths)
                yield Chunk(self.frames, offsets, lengths, position)
            else:
                yield from self._rewritten([(offset, length, offset + length, linktype)
                                            for offset, length in zip(offsets.tolist(), lengths.tolist())])

    def _into_slot(self, offsets: numpy.ndarray, lengths: numpy.ndarray) -> numpy.ndarray:
        """The frames copied from the file into the memfd's next slot (with
        the record headers between them); their offsets there."""
        first = int(offsets[0])
        span = int(offsets[-1] + lengths[-1]) - first      # within CHUNK_BYTES, as a chunk is
        slot = self.next_slot * CHUNK_BYTES
        self.next_slot = (self.next_slot + 1) % SHARED_SLOTS
        with memoryview(self.frames) as frames, memoryview(self.data) as source:
            frames[slot:slot + span] = source[first:first + span]
        return offsets - first + slot

    def _pcapng_records(self):
        """(offset, length, end in the file, link type) of each packet."""
        data, size, position = self.data, self.size, 0
        order, linktypes = "<", []
        while position + 12 <= size:
            block_type = bytes(data[position:position + 4])
            if block_type == PCAPNG_SECTION_HEADER:
                magic = bytes(data[position + 8:position + 12])
                order = "<" if struct.unpack("<I", magic)[0] == PCAPNG_BYTE_ORDER_MAGIC else ">"
                linktypes = []
            kind, total = struct.unpack_from(order + "II", data, position)
            if total < 12 or position + total > size:
                return                      # cut short: the capture ends here
            body = position + 8
            if kind == PCAPNG_INTERFACE:
                linktypes.append(struct.unpack_from(order + "H", data, body)[0])
            elif kind in (PCAPNG_ENHANCED_PACKET, PCAPNG_OBSOLETE_PACKET, PCAPNG_SIMPLE_PACKET):
                if kind == PCAPNG_SIMPLE_PACKET:
                    interface, start = 0, body + 4
                    length = min(struct.unpack_from(order + "I", data, body)[0], total - 16)
                else:
                    interface = struct.unpack_from(order + ("I" if kind == PCAPNG_ENHANCED_PACKET else "H"),
                                                   data, body)[0]
                    length, start = struct.unpack_from(order + "I", data, body + 12)[0], body + 20
                if interface >= len(linktypes):
                    raise CaptureError(f"{self.path}: a packet at byte {position} names interface {interface}, "
                                       "which the capture does not describe")
                check_linktype(self.path, linktypes[interface])
                yield start, length, position + total, linktypes[interface]
            position += total

    def _rewritten(self, records) -> list[Chunk]:
        """records, each (offset, length, end in the file, link type), as
        Chunks of Ethernet frames in buffers of their own, each within
        CHUNK_BYTES; a frame that cannot be rewritten, or is shorter than an
        Ethernet header, is left out."""
        chunks, buffer, offsets, lengths, file_end = [], bytearray(), [], [], records[0][2]
        for offset, length, end, linktype in records:
            frame = to_ethernet(bytes(self.data[offset:offset + length]), linktype)
            if frame is not None and len(frame) >= ETHERNET_HEADER:
                frame = frame[:LONGEST_FRAME]
                if len(buffer) + len(frame) > CHUNK_BYTES:
                    chunks.append(_chunk_of_lists(buffer, offsets, lengths, file_end))
                    buffer, offsets, lengths = bytearray(), [], []
                offsets.append(len(buffer))
                lengths.append(len(frame))
                buffer += frame
            file_end = end
        return chunks + [_chunk_of_lists(buffer, offsets, lengths, file_end)]


def _chunk_of_lists(buffer, offsets: list[int], lengths: list[int], file_end: int) -> Chunk:
    return Chunk(buffer, numpy.array(offsets, dtype=numpy.int64), numpy.array(lengths, dtype=numpy.int64), file_end)


def _gather(data, starts, count: int):
    """count bytes from each of starts in data (one row each): past data's
    end, its last byte. A row that fits is copied whole (_records), without
    the index per byte that the rest need."""
    fits = starts + count <= len(data)
    if fits.all():
        return _records(data, starts, count)
    rows = data[numpy.minimum(starts[:, None] + numpy.arange(count), len(data) - 1)]
    if len(data) >= count:
        rows[fits] = _records(data, starts[fits], count)
    return rows


def _records(data, starts, count: int):
    """The count bytes from each of starts in data (each within it), a row
    each: read as records of count bytes out of a view of data that starts
    one at every byte, so that each row is one copy, several times faster
    than byte by byte out of a sliding window."""
    every_byte = numpy.ndarray(shape=(max(len(data) - count + 1, 0),), dtype=numpy.dtype((numpy.void, count)),
                               buffer=data, strides=(1,))
    return every_byte[starts].view(numpy.uint8).reshape(len(starts), count)


def _ones_sum(data: bytes) -> int:
    """The 16-bit ones' complement sum of data (an odd last byte padded with zero), folded."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _network(frame: bytes) -> tuple[int, int]:
    """(where the IP header starts, its ethertype) past any VLAN tags."""
    offset, ethertype = ETHERNET_HEADER, int.from_bytes(frame[12:14], "big")
    while ethertype in VLAN_ETHERTYPES and len(frame) >= offset + 4:
        ethertype, offset = int.from_bytes(frame[offset + 2:offset + 4], "big"), offset + 4
    return offset, ethertype


def _transport(frame: bytes) -> tuple[int, int, int, bytes] | None:
    """(protocol, where the TCP or UDP header starts, its length with its
    payload by the IP header, the pseudo-header) of a whole datagram straight
    over IPv4 or IPv6 (no extension headers); None for anything else, or a
    segment the frame holds cut short."""
    offset, ethertype = _network(frame)
    if ethertype == ETH_P_IP and len(frame) >= offset + 20:
        header_len, proto = (frame[offset] & 0x0F) * 4, frame[offset + 9]
        if header_len < 20 or int.from_bytes(frame[offset + 6:offset + 8], "big") & IP_MORE_FRAGMENTS_AND_OFFSET:
            return None
        length = int.from_bytes(frame[offset + 2:offset + 4], "big") - header_len
        pseudo = frame[offset + 12:offset + 20] + struct.pack("!BBH", 0, proto, length & 0xFFFF)
        start = offset + header_len
    elif ethertype == ETH_P_IPV6 and len(frame) >= offset + 40:
        proto, length = frame[offset + 6], int.from_bytes(frame[offset + 4:offset + 6], "big")
        pseudo = frame[offset + 8:offset + 40] + struct.pack("!II", length, proto)
        start = offset + 40
    else:
        return None
    header = {IPPROTO_TCP: 20, IPPROTO_UDP: 8}.get(proto)
    if header is None or length < header or len(frame) < start + length:
        return None
    return proto, start, length, pseudo


CHECKSUM_AT = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}     # where the checksum lies in each transport header
IPV4_CHECKSUM_AT = 10


def _ipv4_header(frame: bytes) -> tuple[int, int] | None:
    """(where the IPv4 header starts, its length), if frame holds a whole one."""
    offset, ethertype = _network(frame)
    if ethertype != ETH_P_IP or len(frame) < offset + 20:
        return None
    length = (frame[offset] & 0x0F) * 4
    return (offset, length) if length >= 20 and len(frame) >= offset + length else None


def _with_ipv4_header_checksum(frame: bytes, offset: int, length: int) -> bytes:
    at = offset + IPV4_CHECKSUM_AT
    check = 0xFFFF - _ones_sum(frame[offset:at] + b"\0\0" + frame[at + 2:offset + length])
    return frame[:at] + check.to_bytes(2, "big") + frame[at + 2:]


def _with_transport_checksum(frame: bytes, proto: int, start: int, length: int, pseudo: bytes) -> bytes:
    """frame, its TCP or UDP checksum as RFC 1071 computes it."""
    at = start + CHECKSUM_AT[proto]
    check = 0xFFFF - _ones_sum(pseudo + frame[start:at] + b"\0\0" + frame[at + 2:start + length])
    if proto == IPPROTO_UDP and check == 0:
        check = 0xFFFF                  # 0 says "no checksum" (RFC 768)
    return frame[:at] + check.to_bytes(2, "big") + frame[at + 2:]


def fill_offloaded_checksum(frame: bytes) -> bytes:
    """A capture taken on the sending host holds its packets as the stack
    handed them to a NIC that fills in the checksums: a TCP checksum field
    holds the pseudo-header's sum only, and an IPv4 header's 0 (Windows and
    macOS leave it to the NIC; Linux always sums it). Fill them in, as the
    NIC did, or sluice takes the segment for a decoy the server drops
    (bpf/receiver.h). Any other checksum, right or wrong, is left as
    captured."""
    header = _ipv4_header(frame)
    if header is not None and frame[header[0] + IPV4_CHECKSUM_AT:header[0] + IPV4_CHECKSUM_AT + 2] == b"\0\0":
        frame = _with_ipv4_header_checksum(frame, *header)
    transport = _transport(frame)
    if transport is None or transport[0] != IPPROTO_TCP:
        return frame
    proto, start, length, pseudo = transport
    at = start + CHECKSUM_AT[proto]
    if int.from_bytes(frame[at:at + 2], "big") != _ones_sum(pseudo) or \
            _ones_sum(pseudo + frame[start:start + length]) == 0xFFFF:
        return frame
    return _with_transport_checksum(frame, *transport)


def fix_checksums(frame: bytes) -> bytes:
    """frame with its IPv4 header checksum and its TCP or UDP checksum made
    right (replay --fix-checksums), for captures whose addresses were
    rewritten without fixing them: sluice, as a receiver, would take every
    segment for a decoy (bpf/checksum.h). A fragment's transport checksum,
    which spans the whole datagram, and a UDP checksum left out (0 over
    IPv4) stay as captured."""
    header = _ipv4_header(frame)
    if header is not None:
        frame = _with_ipv4_header_checksum(frame, *header)
    transport = _transport(frame)
    if transport is None:
        return frame
    proto, start, _length, _pseudo = transport
    at = start + CHECKSUM_AT[proto]
    if proto == IPPROTO_UDP and header is not None and frame[at:at + 2] == b"\0\0":
        return frame
    return _with_transport_checksum(frame, *transport)


def _vlan(ethertype):
    return (ethertype == VLAN_ETHERTYPES[0]) | (ethertype == VLAN_ETHERTYPES[1])


def _words(rows):
    """Each row of bytes as big-endian 16-bit words."""
    return rows[:, 0::2].astype(numpy.int64) << 8 | rows[:, 1::2]


def fix_all_checksums(chunk: Chunk) -> None:
    """fix_checksums for each frame of chunk, in its buffer."""
    for start, length in zip(chunk.offsets.tolist(), chunk.lengths.tolist()):
        frame = bytes(chunk.buffer[start:start + length])
        fixed = fix_checksums(frame)
        if fixed != frame:
            chunk.buffer[start:start + length] = fixed


def fill_offloaded_checksums(chunk: Chunk) -> None:
    """fill_offloaded_checksum for each frame of chunk, in its buffer. Summing
    every segment in Python would cost more than running it: numpy picks, for
    the whole chunk at once, the frames whose TCP checksum field holds their
    pseudo-header's sum, or whose IPv4 header checksum is 0 (or that carry
    more VLAN tags than it steps over), and only those go through
    fill_offloaded_checksum."""
    if not len(chunk.offsets):
        return
    ip_start, ethertype = chunk.network
    more_tags = _vlan(ethertype)
    ip = chunk.columns(ip_start, 40)
    ip_words = _words(ip)
    header_len = (ip[:, 0].astype(numpy.int64) & 0x0F) * 4
    ipv4 = (ethertype == ETH_P_IP) & (ip[:, 9] == IPPROTO_TCP) & (ip_words[:, 3] & IP_MORE_FRAGMENTS_AND_OFFSET == 0)
    ipv6 = (ethertype == ETH_P_IPV6) & (ip[:, 6] == IPPROTO_TCP)
    pseudo = numpy.where(ipv4, ip_words[:, 6:10].sum(1) + IPPROTO_TCP + ((ip_words[:, 1] - header_len) & 0xFFFF),
                         ip_words[:, 4:20].sum(1) + IPPROTO_TCP + ip_words[:, 2])
    while (pseudo > 0xFFFF).any():
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
    field = _words(chunk.columns(ip_start + numpy.where(ipv4, header_len, 40) + 16, 2))[:, 0]
    # IPv4 header checksums left 0, summed here for the whole chunk where the
    # header has no options (the rest go through fill_offloaded_checksum).
    ipv4_unsummed = (ethertype == ETH_P_IP) & (ip_words[:, 5] == 0) & (chunk.lengths >= ip_start + header_len)
    plain = ipv4_unsummed & (header_len == 20)
    if plain.any():
        total = ip_words[plain, :10].sum(1)
        for _ in range(2):
            total = (total & 0xFFFF) + (total >> 16)
        check = 0xFFFF - total
        at = chunk.offsets[plain] + ip_start[plain] + IPV4_CHECKSUM_AT
        buffer = _bytes_of(chunk.buffer)
        buffer[at], buffer[at + 1] = check >> 8, check & 0xFF
        del buffer                      # no view of a mapped file may outlive this: it could not close
    for index in numpy.flatnonzero(((ipv4 | ipv6) & (field == pseudo)) | (ipv4_unsummed & ~plain) |
                                   more_tags).tolist():
        start = int(chunk.offsets[index])
        end = start + int(chunk.lengths[index])
        frame = bytes(chunk.buffer[start:end])
        filled = fill_offloaded_checksum(frame)
        if filled != frame:
            chunk.buffer[start:end] = filled


def frame_address(buffer) -> int:
    """Where buffer's bytes lie in memory (for BPF_PROG_TEST_RUN's data_in)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
