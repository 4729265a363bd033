"""QUIC client Initial packets for tests/test_quic.py: frames, and the sealing
of every version in controller/quic.py's table.

The encryptor is the mirror of controller/quic.py's decryption (RFC 9001
section 5); test_quic.py checks it against the RFC's and draft-29's protected
packets before trusting it with packets of its own. Google QUIC's plaintext
packets carry an FNV-1a hash, checked against the FNV reference values.
"""

import random
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sluice.quic import (MAX_DATAGRAMS, QUIC_V1, QUIC_V2, VERSIONS, GoogleChlo, GquicFrames, InitialSecret,
                             client_initial_keys, fnv1a_128, gquic_long_initial)
from packets import client_hello, extension

RFC_DCID = bytes.fromhex("8394c8f03e515708")    # RFC 9001 and RFC 9369 appendix A
HANDSHAKE_TYPE = {QUIC_V1: 0b10, QUIC_V2: 0b11}
TAG_LEN = 16
DATAGRAM_MIN = 1200                               # RFC 9000 section 14.1

PING = b"\x01"
FRAME_CRYPTO, FRAME_ACK, FRAME_ACK_ECN, FRAME_CONNECTION_CLOSE = 0x06, 0x02, 0x03, 0x1C


def varint(value: int, size: int | None = None) -> bytes:
    """A QUIC variable-length integer, in the shortest encoding unless ``size`` is given."""
    if size is None:
        size = next(s for s in (1, 2, 4, 8) if value < 1 << (8 * s - 2))
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[size] << (8 * size - 2)
    return (prefix | value).to_bytes(size, "big")


def crypto_frame(offset: int, data: bytes) -> bytes:
    return varint(FRAME_CRYPTO) + varint(offset) + varint(len(data)) + data


def ack_frame(*, ecn: bool = False) -> bytes:
    """An ACK of packets 0-5 and 8-9, with two ranges (and ECN counts)."""
    frame = varint(FRAME_ACK_ECN if ecn else FRAME_ACK) + varint(9) + varint(300) + varint(1) + varint(1)
    frame += varint(1) + varint(5)                  # gap, range length: packets 0-5
    if ecn:
        frame += varint(4) + varint(0) + varint(70000)
    return frame


def connection_close(reason: bytes = b"bye") -> bytes:
    return varint(FRAME_CONNECTION_CLOSE) + varint(0x0A) + varint(0) + varint(len(reason)) + reason


def handshake_client_hello(sni: bytes | None = b"example.com", **options) -> bytes:
    """A ClientHello as a CRYPTO stream carries it: the handshake message, no TLS record."""
    return client_hello(sni, **options)[5:]


def split_crypto(stream: bytes, rng, *, largest: int = 40, overlap: bool = True, frame=crypto_frame) -> list[bytes]:
    """``stream`` as CRYPTO frames (or ``frame(offset, data)``) of random sizes;
    with ``overlap``, some reach back over bytes already sent and some are sent twice."""
    frames, pos = [], 0
    while pos < len(stream):
        start = max(0, pos - rng.randrange(0, 8)) if overlap else pos
        end = min(len(stream), pos + rng.randrange(1, largest))
        frames.append(frame(start, stream[start:end]))
        pos = end
    if overlap:
        frames += rng.sample(frames, len(frames) // 5)
    return frames


def initial_packet(frames: bytes, *, dcid: bytes = RFC_DCID, scid: bytes = b"", version: int = QUIC_V1,
                   pn: int = 0, pn_len: int = 4, token: bytes = b"", size: int | None = None,
                   packet_type: int | None = None, key_dcid: bytes | None = None) -> bytes:
    """A protected client Initial packet (or another long-header type) carrying
    ``frames``, padded with PADDING frames to at least ``size`` bytes if given;
    sealed with the keys of ``key_dcid`` (a client's first DCID) if given, else of ``dcid``."""
    packet_type = VERSIONS[version].initial_type if packet_type is None else packet_type
    keys = client_initial_keys(dcid if key_dcid is None else key_dcid, version)
    head = bytes([0xC0 | packet_type << 4 | (pn_len - 1)]) + version.to_bytes(4, "big")
    head += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if packet_type == VERSIONS[version].initial_type:
        head += varint(len(token)) + token
    length_size = 2                                 # as clients write it, so the size is known up front
    if size is not None:
        frames += bytes(max(0, size - len(head) - length_size - pn_len - len(frames) - TAG_LEN))
    frames += bytes(max(0, 4 - pn_len - len(frames)))   # enough to take a header protection sample
    header = head + varint(pn_len + len(frames) + TAG_LEN, length_size) + pn.to_bytes(pn_len, "big")
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, frames, header)
    sample = sealed[4 - pn_len:4 - pn_len + 16]
    mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor().update(sample)
    protected = bytes([header[0] ^ (mask[0] & 0x0F)]) + header[1:-pn_len]
    protected += bytes(b ^ m for b, m in zip(header[-pn_len:], mask[1:]))
    return protected + sealed


def two_datagrams_of_shuffled_pieces(stream: bytes, seed: int, **options) -> list[bytes]:
    """A Chrome-like first flight: ``stream`` as many small CRYPTO frames, some
    overlapping or repeated, shuffled with PING and PADDING frames, over two
    padded datagrams (``options``: initial_packet's)."""
    rng = random.Random(seed)
    frames = split_crypto(stream, rng) + [PING] * 5 + [b"\x00" * 3] * 5
    rng.shuffle(frames)
    half = len(frames) // 2
    return [initial_packet(b"".join(frames[:half]), pn=0, size=DATAGRAM_MIN, **options),
            initial_packet(b"".join(frames[half:]), pn=1, size=DATAGRAM_MIN, **options)]


def two_datagram_hello(sni: bytes, dcid: bytes, seed: int = 0) -> list[bytes]:
    """A post-quantum-sized ClientHello (about 1.5 KB) for ``sni`` over two
    datagrams of the connection ``dcid``, its pieces shuffled across both."""
    hello = handshake_client_hello(sni, extensions_after=(extension(0x0015, bytes(1200)),))
    return two_datagrams_of_shuffled_pieces(hello, seed, dcid=dcid)


def broken_fakes(sni: bytes) -> list[bytes]:
    """Fake Initials for ``sni`` that never make a whole hello, each datagram
    distinct (repeats are read once): half a hello over and over in one
    connection, more datagrams of it than a connection may take; half a
    hello in two more connections; and a hello whose CRYPTO frames disagree
    with each other in a fourth. Twelve datagrams, room for a real hello in
    the default inspection window of 20."""
    hello = handshake_client_hello(sni, extensions_after=(extension(0x0015, bytes(400)),))
    half = crypto_frame(0, hello[:len(hello) // 2])
    liar = crypto_frame(0, hello[:40]) + crypto_frame(20, b"evil" + hello[24:40])
    return ([initial_packet(half, dcid=b"\xf0" * 8, pn=pn, size=DATAGRAM_MIN) for pn in range(MAX_DATAGRAMS + 1)]
            + [initial_packet(half, dcid=bytes([0xf1 + index]) * 8, size=DATAGRAM_MIN) for index in range(2)]
            + [initial_packet(liar, dcid=b"\xf3" * 8, size=DATAGRAM_MIN)])


def short_header_packet(payload: bytes = b"\x42" * 40) -> bytes:
    return bytes([0x40 | 0x03]) + RFC_DCID + payload


# --- Google QUIC -----------------------------------------------------------------

GQUIC_CID = bytes.fromhex("e83c77bd8f8915f9")
GQUIC_PUBLIC_FLAGS = 0x0D          # version, 8-byte connection ID (old spelling 0x0C), 1-byte packet number
GQUIC_Q046_FIRST_BYTE = 0xC3       # long header, Initial, 4-byte packet number
GQUIC_Q046_CID_LENGTHS = 0x50      # destination 5 + 3 = 8 bytes, no source
CHLO_MIN = 1024                    # Google pads a CHLO to this (kClientHelloMinimumSize)


def gquic_version(name: str) -> int:
    return int.from_bytes(name.encode("ascii"), "big")


def chlo(sni: bytes | None = b"example.com", *, extra: dict[bytes, bytes] | None = None,
         pad_to: int = CHLO_MIN) -> bytes:
    """A Google QUIC crypto client hello: "CHLO", the number of entries, two
    bytes of padding, each tag with its value's end offset (little endian,
    tags ascending), then the values; a PAD entry makes it ``pad_to`` long."""
    entries = dict(extra or {})
    if sni is not None:
        entries[b"SNI\x00"] = sni
    entries.setdefault(b"VER\x00", b"Q043")
    size = 8 + 8 * (len(entries) + 1) + sum(map(len, entries.values()))
    entries[b"PAD\x00"] = b"-" * max(0, pad_to - size)
    return chlo_entries(sorted(entries.items(), key=lambda entry: int.from_bytes(entry[0], "little")))


def chlo_entries(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A CHLO with these entries in this order, however wrong."""
    index, values, end = b"", b"", 0
    for tag, value in entries:
        end += len(value)
        index += tag + struct.pack("<I", end)
        values += value
    return b"CHLO" + struct.pack("<HH", len(entries), 0) + index + values


def gquic_stream_frame(offset: int, data: bytes, *, byte_order: str = "big", stream_id: int = 1) -> bytes:
    """A Google QUIC STREAM frame with a 1-byte stream ID, an offset (2 or 8 bytes) and a length."""
    offset_len = 0 if offset == 0 else 2 if offset < 1 << 16 else 8
    frame_type = 0x80 | 0x20 | (offset_len - 1 if offset_len else 0) << 2
    return (bytes([frame_type, stream_id]) + offset.to_bytes(offset_len, byte_order)
            + len(data).to_bytes(2, byte_order) + data)


def gquic_crypto_frame(offset: int, data: bytes) -> bytes:
    """Q050 and T05x carry the handshake in CRYPTO frames of type 0x08."""
    return bytes([0x08]) + varint(offset) + varint(len(data)) + data


def gquic_hash(data: bytes) -> bytes:
    """Google's NullEncrypter: FNV-1a 128, low 96 bits, low 64 then next 32, little endian."""
    digest = fnv1a_128(data)
    return (digest & (1 << 64) - 1).to_bytes(8, "little") + (digest >> 64 & (1 << 32) - 1).to_bytes(4, "little")


def gquic_plaintext_packet(frames: bytes, version: int, *, cid: bytes = GQUIC_CID, pn: int = 1,
                           size: int = DATAGRAM_MIN, sender: bytes | None = None) -> bytes:
    """A Google QUIC packet in the clear: the public header (up to Q043) or
    Q046's long header, the hash, the frames, PADDING to ``size``."""
    params = VERSIONS[version]
    if params.packets is gquic_long_initial:
        header = bytes([GQUIC_Q046_FIRST_BYTE]) + version.to_bytes(4, "big") + bytes([GQUIC_Q046_CID_LENGTHS])
        header += cid + pn.to_bytes(4, "big")
    else:
        header = bytes([GQUIC_PUBLIC_FLAGS]) + cid + version.to_bytes(4, "big") + pn.to_bytes(1, "big")
    payload = (b"\x00" if params.frames.private_flags else b"") + frames
    payload += bytes(max(0, size - len(header) - 12 - len(payload)))
    sender = params.protection.sender if sender is None else sender
    return header + gquic_hash(header + payload + sender) + payload


# --- any version of the table ------------------------------------------------------

def handshake_message(version: int, sni: bytes | None, **options) -> bytes:
    """What the version's handshake stream starts with: a TLS ClientHello or a CHLO."""
    if VERSIONS[version].handshake is GoogleChlo:
        return chlo(sni, **options)
    return handshake_client_hello(sni, **options)


def stream_frame(version: int, offset: int, data: bytes) -> bytes:
    """A piece of the handshake stream in the version's frame encoding."""
    frames = VERSIONS[version].frames
    if not isinstance(frames, GquicFrames):
        return crypto_frame(offset, data)
    if frames.crypto_frames:
        return gquic_crypto_frame(offset, data)
    return gquic_stream_frame(offset, data, byte_order=frames.byte_order)


def client_initial(version: int, frames: bytes, *, pn: int = 0, dcid: bytes = RFC_DCID, **options) -> bytes:
    """One client Initial datagram of ``version`` carrying ``frames``, padded to 1200 bytes."""
    if isinstance(VERSIONS[version].protection, InitialSecret):
        return initial_packet(frames, version=version, pn=pn, dcid=dcid, size=DATAGRAM_MIN, **options)
    return gquic_plaintext_packet(frames, version, pn=pn + 1, cid=dcid, **options)


def long_header_datagram(version: int, *, dcid: bytes = RFC_DCID, rest: bytes = bytes(DATAGRAM_MIN)) -> bytes:
    """A client's long-header datagram of a version nobody reads (a grease one): header, then anything."""
    return bytes([0xC0]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid + b"\x00" + rest


def version_negotiation(versions=(QUIC_V1, QUIC_V2), *, dcid: bytes = b"", scid: bytes = RFC_DCID) -> bytes:
    """A server's Version Negotiation packet (RFC 9000 section 17.2.1): version 0, the versions it speaks."""
    return (bytes([0x80 | 0x2A]) + bytes(4) + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
            + b"".join(version.to_bytes(4, "big") for version in versions))
