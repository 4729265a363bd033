"""Frames for the packet-level tests: scapy for the headers, and a ClientHello
builder that controls every length field, so that each parser branch can be
reached on purpose."""

import struct
import time

from scapy.all import IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPv6, Raw
from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.data import DLT_EN10MB
from scapy.utils import PcapNgWriter, PcapWriter, RawPcapReader

CLIENT_V4, SERVER_V4 = "192.0.2.2", "198.51.100.2"
CLIENT_V6, SERVER_V6 = "2001:db8:c::2", "2001:db8:5::2"
# Explicit MAC addresses: without them scapy tries to ARP for every frame.
CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
# The ends of the tunnels that encapsulate() builds.
TUNNEL_V4 = ("198.51.100.10", "198.51.100.11")
TUNNEL_V6 = ("2001:db8:e::10", "2001:db8:e::11")
GTPU_PORT, VXLAN_PORT = 2152, 4789
GRE_KEY, GRE_CHECKSUM, GRE_SEQUENCE = 0x2000, 0x8000, 0x1000
ETH_P_IP, ETH_P_IPV6, ETH_P_BRIDGED = 0x0800, 0x86DD, 0x6558
GTPU_G_PDU, GTPU_ECHO_REQUEST = 0xFF, 1
GTPU_PDU_SESSION_CONTAINER = 0x85

GREASE = 0x0A0A
EXT_SERVER_NAME = 0
EXT_SUPPORTED_VERSIONS = 43
EXT_ALPN = 16
EXT_PADDING = 21
EXT_ECH = 0xFE0D


def extension(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(body)) + body


def unknown_extensions(count: int) -> tuple[bytes, ...]:
    """count empty extensions of distinct types no one assigned: a server skips them all."""
    return tuple(extension(0x1000 + i, b"") for i in range(count))


def sni_extension(name: bytes, *, list_len_delta=0, name_len_delta=0, name_type=0) -> bytes:
    entry = struct.pack("!BH", name_type, len(name) + name_len_delta) + name
    body = struct.pack("!H", len(entry) + list_len_delta) + entry
    return extension(EXT_SERVER_NAME, body)


def client_hello(sni: bytes | None = b"example.com", *, session_id: bytes = bytes(32),
                 cipher_suites: bytes = struct.pack("!4H", GREASE, 0x1301, 0x1302, 0xC02F),
                 grease: bool = True, extensions_before: tuple[bytes, ...] = (),
                 extensions_after: tuple[bytes, ...] = (), sni_extension_bytes: bytes | None = None,
                 no_extensions: bool = False, record_version: int = 0x0301,
                 session_id_len: int | None = None, cipher_len_delta: int = 0,
                 extensions_len_delta: int = 0, handshake_len_delta: int = 0,
                 record_len_delta: int = 0) -> bytes:
    """A TLS record holding one ClientHello; the *_delta and *_len arguments
    make the named length field lie by that much."""
    body = struct.pack("!H", 0x0303) + bytes(range(32))
    body += bytes([len(session_id) if session_id_len is None else session_id_len]) + session_id
    body += struct.pack("!H", len(cipher_suites) + cipher_len_delta) + cipher_suites
    body += b"\x01\x00"                                   # one compression method: null
    if not no_extensions:
        extensions = b""
        if grease:
            extensions += extension(GREASE, b"")
        extensions += b"".join(extensions_before)
        if sni_extension_bytes is not None:
            extensions += sni_extension_bytes
        elif sni is not None:
            extensions += sni_extension(sni)
        extensions += extension(EXT_SUPPORTED_VERSIONS, b"\x04\x03\x04\x03\x03")
        extensions += b"".join(extensions_after)
        body += struct.pack("!H", len(extensions) + extensions_len_delta) + extensions
    handshake = b"\x01" + (len(body) + handshake_len_delta).to_bytes(3, "big") + body
    return b"\x16" + struct.pack("!HH", record_version, len(handshake) + record_len_delta) + handshake


def alpn_extension(*ids: bytes) -> bytes:
    """ALPN (RFC 7301): a list of protocol ids, each behind its 1-byte length."""
    listed = b"".join(bytes([len(i)]) + i for i in ids)
    return extension(EXT_ALPN, struct.pack("!H", len(listed)) + listed)


def split_into_records(hello: bytes, at: int) -> bytes:
    """The same handshake carried by two TLS records, split at byte `at` of the handshake."""
    handshake = hello[5:]
    first, second = handshake[:at], handshake[at:]
    header = hello[:3]
    return (header + struct.pack("!H", len(first)) + first +
            header + struct.pack("!H", len(second)) + second)


def http_request(host: str | None = "example.com", *, method="GET", target="/", version="HTTP/1.1",
                 host_header="Host", separator=": ", newline="\r\n", before=(), after=()) -> bytes:
    lines = [f"{method} {target} {version}", *before]
    if host is not None:
        lines.append(f"{host_header}{separator}{host}")
    lines += [*after, "", ""]
    return newline.join(lines).encode()


def ether(vlans=()):
    """Ethernet with optional VLAN tags, e.g. vlans=("ad", "q") for QinQ."""
    frame = Ether(src=CLIENT_MAC, dst=SERVER_MAC)
    for tag in vlans:
        frame = frame / (Dot1AD(vlan=100) if tag == "ad" else Dot1Q(vlan=200))
    return frame


def tcp_frame(payload: bytes = b"", *, sport=40000, dport=443, flags="PA", v6=False, reply=False,
              vlans=(), ip_options=None, ext_headers=(), src=None, dst=None, seq=None, ack=0, ttl=64,
              tcp_options=(), chksum=None, ip_chksum=None, ip_len_extra=0, urgptr=0, ip_version=None) -> bytes:
    """A TCP frame client -> server (or server -> client with reply=True).

    seq defaults to 0 for a SYN and 1 otherwise: a payload that starts the
    stream the SYN opened. ttl is the TTL or hop limit; tcp_options are
    scapy's (name or kind, value) pairs; chksum replaces the TCP checksum,
    ip_chksum the IPv4 header's; ip_len_extra makes the IP length say that
    many bytes more than the frame holds; ip_version replaces the IP
    header's version field. ip_options: scapy's, or the options' bytes as
    sent (with_ipv4_options())."""
    raw_ip_options = ip_options if isinstance(ip_options, bytes) else None
    if seq is None:
        seq = 0 if "S" in flags else 1
    client, server = (CLIENT_V6, SERVER_V6) if v6 else (CLIENT_V4, SERVER_V4)
    client, server = src or client, dst or server
    source, destination = (server, client) if reply else (client, server)
    ports = dict(sport=dport, dport=sport) if reply else dict(sport=sport, dport=dport)
    if v6:
        network = IPv6(src=source, dst=destination, hlim=ttl)
        if ip_version is not None:
            network.version = ip_version
        for header in ext_headers:
            network = network / header
    else:
        network = IP(src=source, dst=destination, options=[] if raw_ip_options else ip_options or [], ttl=ttl)
        if ip_version is not None:
            network.version = ip_version
        if ip_chksum is not None:
            network.chksum = ip_chksum
    tcp = TCP(flags=flags, seq=seq, ack=ack, options=list(tcp_options), urgptr=urgptr, **ports)
    if chksum is not None:
        tcp.chksum = chksum
    frame = bytes(ether(vlans) / network / tcp / Raw(payload))
    if raw_ip_options:
        frame = with_ipv4_options(frame, raw_ip_options)
    return with_ip_len_extra(frame, ip_len_extra)


def with_ipv4_options(frame: bytes, options: bytes) -> bytes:
    """frame's IPv4 header with these option bytes (padded with End of
    Options to a multiple of 4), as sent, however malformed: its length,
    total length and checksum made to match."""
    options += bytes(-len(options) % 4)
    at = len(frame) - len(Ether(frame)[IP])
    header = bytearray(frame[at:at + 20])
    header[0] = (header[0] & 0xF0) | (5 + len(options) // 4)
    header[2:4] = (int.from_bytes(header[2:4], "big") + len(options)).to_bytes(2, "big")
    header[10:12] = bytes(2)
    words = bytes(header) + options
    total = sum(int.from_bytes(words[i:i + 2], "big") for i in range(0, len(words), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
    return frame[:at] + bytes(header) + options + frame[at + 20:]


def with_ip_len_extra(frame: bytes, extra: int) -> bytes:
    """frame, its IP length saying `extra` bytes more than it holds (its
    other checksums as they were): a receiver drops it as truncated."""
    if not extra:
        return frame
    packet = Ether(frame)
    if IPv6 in packet:
        packet[IPv6].plen += extra
    else:
        packet[IP].len += extra
        if packet[IP].chksum is not None:
            del packet[IP].chksum
    return bytes(packet)


def udp_frame(payload: bytes = b"x", *, sport=40000, dport=443, v6=False, reply=False, src=None,
              dst=None) -> bytes:
    """A UDP frame client -> server (or server -> client with reply=True)."""
    client, server = (CLIENT_V6, SERVER_V6) if v6 else (CLIENT_V4, SERVER_V4)
    client, server = src or client, dst or server
    source, destination = (server, client) if reply else (client, server)
    ports = dict(sport=dport, dport=sport) if reply else dict(sport=sport, dport=dport)
    network = IPv6(src=source, dst=destination) if v6 else IP(src=source, dst=destination)
    return bytes(ether() / network / UDP(**ports) / Raw(payload))


def ip_fragments(frame: bytes, cuts, *, ident: int = 0x4242, ttl: int = 64, ip_chksum=None,
                 ip_len_extra: int = 0, ip_version: int = 4, hop_by_hop: int = 0) -> list[bytes]:
    """The IP datagram of `frame` as IPv4 fragments or IPv6 Fragment-header
    fragments, as circumvention tools send it. `cuts` is a fragment size (a
    multiple of 8), or the (start, end) ranges of the IP payload that each
    fragment carries, in sending order: they may overlap or repeat. The
    fragment ending at the payload's end is marked the last. ttl: their TTL
    or hop limit (a decoy's is low, to expire before the server);
    ip_chksum: their IPv4 header checksum (a decoy's is wrong); ip_len_extra:
    as tcp_frame's; ip_version: their IPv4 header's version field (a decoy's
    is not 4); hop_by_hop: IPv6 Hop-by-Hop headers before the Fragment
    header (zapret's hopbyhop2 puts two on a decoy: a receiver drops it)."""
    packet = Ether(frame)
    v6 = IPv6 in packet
    network = packet[IPv6] if v6 else packet[IP]
    payload = bytes(network.payload)
    if isinstance(cuts, int):
        cuts = [(start, min(start + cuts, len(payload))) for start in range(0, len(payload), cuts)]
    frames = []
    for start, end in cuts:
        more = end < len(payload)
        if v6:
            header = IPv6(src=network.src, dst=network.dst, hlim=ttl)
            for _ in range(hop_by_hop):
                header = header / IPv6ExtHdrHopByHop()
            header = header / IPv6ExtHdrFragment(nh=network.nh, offset=start // 8, m=int(more), id=ident)
        else:
            header = IP(version=ip_version, src=network.src, dst=network.dst, proto=network.proto, id=ident,
                        ttl=ttl, flags="MF" if more else 0, frag=start // 8, chksum=ip_chksum)
        frames.append(with_ip_len_extra(bytes(ether() / header / Raw(payload[start:end])), ip_len_extra))
    return frames


def gre_header(protocol: int, *, flags: int = 0) -> bytes:
    """A GRE header with the 4-byte fields its flags (GRE_CHECKSUM, GRE_KEY, GRE_SEQUENCE) say follow."""
    fields = b"".join(struct.pack("!I", value) for flag, value in
                      ((GRE_CHECKSUM, 0), (GRE_KEY, 0x1234), (GRE_SEQUENCE, 7)) if flags & flag)
    return struct.pack("!HH", flags, protocol) + fields


def gtpu_header(packet_len: int, *, message_type: int = GTPU_G_PDU, extensions=(), sequence: bool = False,
                teid: int = 0x1001) -> bytes:
    """A GTP-U header (version 1) before packet_len bytes: extensions are
    (type, body) pairs, each body 2 bytes short of a multiple of 4."""
    optional = b""
    flags = 0x30 | (0x04 if extensions else 0) | (0x02 if sequence else 0)
    if extensions or sequence:
        optional = struct.pack("!HBB", 1, 0, extensions[0][0] if extensions else 0)
        for index, (_, body) in enumerate(extensions):
            following = extensions[index + 1][0] if index + 1 < len(extensions) else 0
            optional += bytes([(len(body) + 2) // 4]) + body + bytes([following])
    return struct.pack("!BBHI", flags, message_type, len(optional) + packet_len, teid) + optional


def vxlan_header(vni: int = 42, *, flags: int = 0x08) -> bytes:
    return struct.pack("!B3xI", flags, vni << 8)


def encapsulate(frame: bytes, kind: str, *, outer_v6: bool = False, gre_flags: int = 0,
                gtpu_extensions=(), header: bytes | None = None) -> bytes:
    """The frame as a tunnel carries it. kind: "ipip" (its IP packet in IP:
    4in4, 6in4, or with outer_v6 4in6, 6in6), "gre" (the IP packet, with
    gre_flags' fields), "gre-bridged" (the whole frame), "gtpu" (the IP
    packet, with gtpu_extensions), "vxlan" (the whole frame) or "qinq"
    (802.1ad and 802.1Q tags). header replaces the encapsulation's own."""
    inner = Ether(frame)
    packet = bytes(inner.payload)
    protocol = ETH_P_IPV6 if IPv6 in inner else ETH_P_IP
    if kind == "qinq":
        return bytes(ether(("ad", "q")) / inner.payload)
    outer = IPv6(src=TUNNEL_V6[0], dst=TUNNEL_V6[1]) if outer_v6 else IP(src=TUNNEL_V4[0], dst=TUNNEL_V4[1])
    if kind == "ipip":
        number = 41 if protocol == ETH_P_IPV6 else 4
        transport = Raw(packet)
    elif kind in ("gre", "gre-bridged"):
        number = 47
        bridged = kind == "gre-bridged"
        default = gre_header(ETH_P_BRIDGED if bridged else protocol, flags=gre_flags)
        transport = Raw((default if header is None else header) + (frame if bridged else packet))
    elif kind == "gtpu":
        number = 17
        default = gtpu_header(len(packet), extensions=gtpu_extensions)
        transport = UDP(sport=GTPU_PORT, dport=GTPU_PORT) / Raw((default if header is None else header) + packet)
    elif kind == "vxlan":
        number = 17
        transport = UDP(sport=49152, dport=VXLAN_PORT) / Raw((vxlan_header() if header is None else header) + frame)
    else:
        raise ValueError(kind)
    if outer_v6:
        outer.nh = number
    else:
        outer.proto = number
    return bytes(ether() / outer / transport)



def write_capture(path, frames, *, pcapng: bool = False) -> None:
    """Ethernet frames (bytes) into a capture file, byte for byte, each
    stamped with the time it was written (replay reads no timestamps).

    Never as packets scapy dissected from those bytes (wrpcap of Ether(frame)):
    scapy writes a dissected packet by building it again from its fields, and
    once any module of the run has imported scapy.layers.tls (which binds TLS
    to TCP port 443 for the whole process), a hello it cannot dissect whole
    comes back without its payload. So a test's capture held other frames
    than it built, in whole-suite runs only; build hellos with client_hello().
    """
    writer = (PcapNgWriter if pcapng else PcapWriter)(str(path))
    writer.linktype = DLT_EN10MB
    written = time.time()
    with writer:
        writer.write_header(None)
        for frame in frames:
            writer.write_packet(frame, sec=written)


def read_capture(path) -> list[bytes]:
    """A pcap file's frames as bytes, undissected (see write_capture)."""
    with RawPcapReader(str(path)) as reader:
        return [data for data, _meta in reader]


__all__ = ["encapsulate", "gre_header", "gtpu_header", "vxlan_header", "IPv6ExtHdrDestOpt", "IPv6ExtHdrFragment", "IPv6ExtHdrHopByHop", "IPv6ExtHdrRouting",
           "client_hello", "sni_extension", "extension", "split_into_records", "http_request",
           "tcp_frame", "udp_frame", "ip_fragments", "ether", "EXT_ALPN",
           "write_capture", "read_capture"]
