# SPDX-License-Identifier: GPL-2.0-only
"""Client classes: named sets of IPv4 and IPv6 prefixes.

A client belongs to the class of the most specific prefix that holds its
address, as the data plane's LPM trie (client_classes in bpf/maps.h)
decides. Prefixes are kept as the trie's own keys (struct client_prefix:
prefix length, then the address with IPv4 as ::ffff:a.b.c.d), in numpy
arrays, because a class file may list a million of them.
"""

import ipaddress
import socket
from dataclasses import dataclass

import numpy

IPV4_MAPPED = bytes(10) + b"\xff\xff"
IPV4_MAPPED_BITS = 96
PREFIX_DTYPE = numpy.dtype([("prefixlen", "<u4"), ("addr", "u1", (16,))])


def parse_prefix(text: str) -> tuple[int, bytes]:
    """'198.51.100.0/24' -> (96 + 24, ::ffff:198.51.100.0); raises ValueError saying why.

    Written with inet_pton rather than ipaddress: a million prefixes load in
    seconds instead of a minute."""
    address, slash, length = text.partition("/")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        packed = socket.inet_pton(family, address)
    except OSError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 prefix (e.g. 198.51.100.0/24, 2001:db8::/32)")
    bits = len(packed) * 8
    if not slash:
        prefixlen = bits
    elif length.isdigit() and int(length) <= bits:
        prefixlen = int(length)
    else:
        raise ValueError(f"{text!r}: the prefix length must be 0 to {bits}")
    value = int.from_bytes(packed, "big")
    if value & ((1 << (bits - prefixlen)) - 1):
        raise ValueError(f"{text!r} has bits set past its /{prefixlen}: "
                         f"write the network address")
    if family == socket.AF_INET:
        return IPV4_MAPPED_BITS + prefixlen, IPV4_MAPPED + packed
    return prefixlen, packed


def address_bytes(address: str) -> bytes:
    """An address as the data plane stores it (IPv4 as ::ffff:a.b.c.d)."""
    if ":" in address:
        return socket.inet_pton(socket.AF_INET6, address)
    return IPV4_MAPPED + socket.inet_pton(socket.AF_INET, address)


def format_prefix(prefixlen: int, addr: bytes) -> str:
    if addr[:12] == IPV4_MAPPED:
        return f"{socket.inet_ntop(socket.AF_INET, addr[12:])}/{prefixlen - IPV4_MAPPED_BITS}"
    return f"{socket.inet_ntop(socket.AF_INET6, addr)}/{prefixlen}"


@dataclass(frozen=True)
class ClientClass:
    id: int                  # 1-based, in file order; 0 means "in no class"
    name: str
    line: int


class ClientClasses:
    """Every class's prefixes, and the class of an address."""

    def __init__(self, classes: list[ClientClass], prefixes: numpy.ndarray, class_ids: numpy.ndarray):
        self.classes = classes
        self.by_name = {c.name: c for c in classes}
        self.prefixes = prefixes              # PREFIX_DTYPE
        self.class_ids = class_ids            # uint32, parallel to prefixes
        words = numpy.frombuffer(prefixes["addr"].tobytes(), dtype=">u8").reshape(-1, 2)
        self._high, self._low = words[:, 0].astype(numpy.uint64), words[:, 1].astype(numpy.uint64)

    @classmethod
    def empty(cls) -> "ClientClasses":
        return cls([], numpy.empty(0, PREFIX_DTYPE), numpy.empty(0, numpy.uint32))

    def __len__(self) -> int:
        return len(self.prefixes)

    def classify(self, address: str) -> tuple[ClientClass | None, str | None]:
        """The class of address and the prefix that put it there, or (None, None)."""
        if not len(self.prefixes):
            return None, None
        addr = address_bytes(address)
        high, low = (numpy.uint64(int.from_bytes(addr[i:i + 8], "big")) for i in (0, 8))
        lengths = self.prefixes["prefixlen"].astype(numpy.int64)
        # Compare the first prefixlen bits of each half with the address's.
        high_bits = numpy.minimum(lengths, 64)
        low_bits = numpy.maximum(lengths - 64, 0)
        with numpy.errstate(over="ignore"):
            high_mask = numpy.where(high_bits == 0, numpy.uint64(0),
                                    ~numpy.uint64(0) << (64 - high_bits).astype(numpy.uint64))
            low_mask = numpy.where(low_bits == 0, numpy.uint64(0),
                                   ~numpy.uint64(0) << (64 - low_bits).astype(numpy.uint64))
        hits = ((high & high_mask) == self._high) & ((low & low_mask) == self._low)
        if not hits.any():
            return None, None
        best = int(numpy.flatnonzero(hits)[numpy.argmax(lengths[hits])])
        class_id = int(self.class_ids[best])
        prefix = format_prefix(int(self.prefixes["prefixlen"][best]), self.prefixes["addr"][best].tobytes())
        return self.classes[class_id - 1], prefix


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw[12:] if raw[:12] == IPV4_MAPPED else raw))


def flow_server(key, flow) -> str:
    """The server address of a flow table entry."""
    return _address(bytes(key.addr_lo if flow.client_is_hi else key.addr_hi))


def flow_client(key, flow) -> tuple[str, int, bool]:
    """(client address, server port, opened by the client) of a flow table entry."""
    hi = flow.client_is_hi
    address = _address(bytes(key.addr_hi if hi else key.addr_lo))
    server_port = socket.ntohs(key.port_lo if hi else key.port_hi)
    return address, server_port, bool(flow.opened_by_client)
