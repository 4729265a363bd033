# SPDX-License-Identifier: GPL-2.0-only
"""Rollout shares: which clients a rule applies to when it names a percentage.

A client's place in every rollout is 32 bits of SipHash-2-4, under the
policy's rollout key, of its IPv4 address (as ::ffff:a.b.c.d) or of its IPv6
/64 (one device holds a whole /64, and should not be in and out at once). A
rule for N% applies to a client whose value is below N% of 2^32, so the same
client is always in or always out, and raising N keeps everyone already in.
bpf/siphash.h and bpf/client_match.h compute the same in the kernel.
"""

import hashlib
import ipaddress
import struct
from decimal import Decimal

MASK64 = (1 << 64) - 1
SIPHASH_INIT = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573)
ROLLOUT_SPACE = 1 << 32          # SLUICE_ROLLOUT_ALL: the threshold of 100%
IPV6_DEVICE_PREFIX_BYTES = 8
DEFAULT_ROLLOUT_KEY = "sluice"


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & MASK64


def siphash24(key: bytes, message: bytes) -> int:
    """SipHash-2-4 (Aumasson and Bernstein) of message under a 16-byte key."""
    k0, k1 = struct.unpack("<QQ", key)
    v = [k0 ^ SIPHASH_INIT[0], k1 ^ SIPHASH_INIT[1], k0 ^ SIPHASH_INIT[2], k1 ^ SIPHASH_INIT[3]]

    def rounds(n: int) -> None:
        for _ in range(n):
            v[0] = (v[0] + v[1]) & MASK64; v[1] = _rotl(v[1], 13) ^ v[0]; v[0] = _rotl(v[0], 32)
            v[2] = (v[2] + v[3]) & MASK64; v[3] = _rotl(v[3], 16) ^ v[2]
            v[0] = (v[0] + v[3]) & MASK64; v[3] = _rotl(v[3], 21) ^ v[0]
            v[2] = (v[2] + v[1]) & MASK64; v[1] = _rotl(v[1], 17) ^ v[2]; v[2] = _rotl(v[2], 32)

    tail = len(message) % 8
    last = int.from_bytes(message[len(message) - tail:], "little") | ((len(message) & 0xFF) << 56)
    words = [int.from_bytes(message[i:i + 8], "little") for i in range(0, len(message) - tail, 8)]
    for word in words + [last]:
        v[3] ^= word
        rounds(2)
        v[0] ^= word
    v[2] ^= 0xFF
    rounds(4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def rollout_key(text: str) -> bytes:
    """The 16-byte SipHash key a policy's rollout_key names."""
    return hashlib.sha256(text.encode()).digest()[:16]


def client_bytes(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """What the rollout hashes: IPv4 as ::ffff:a.b.c.d, IPv6 cut to its /64."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return bytes(10) + b"\xff\xff" + ip.packed
    return ip.packed[:IPV6_DEVICE_PREFIX_BYTES] + bytes(16 - IPV6_DEVICE_PREFIX_BYTES)


def rollout_value(key: bytes, address) -> int:
    """The client's place in every rollout, 0 .. 2^32 - 1."""
    return siphash24(key, client_bytes(address)) >> 32


def threshold(percent: Decimal) -> int:
    """The rollout_threshold of a share: clients below it are in."""
    return int((percent * ROLLOUT_SPACE / 100).to_integral_value())


def in_rollout(key: bytes, address, percent: Decimal) -> bool:
    limit = threshold(percent)
    return limit >= ROLLOUT_SPACE or rollout_value(key, address) < limit
