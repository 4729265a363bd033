# SPDX-License-Identifier: GPL-2.0-only
"""QUIC Initial packets: the server name in a client's first flight, read in user space.

A QUIC client's first packets carry its handshake in the clear or under keys
that anyone on the path can derive from the packet itself (RFC 9001 section
5.2). The data plane cannot decrypt, so it hands the first datagrams of an
unknown UDP flow to the controller, which here:

1. reads the version of each datagram and looks it up in VERSIONS, the table
   of every version seen in the wild: IETF drafts 22-34, v1 (RFC 9000), v2
   (RFC 9369), Facebook's mvfst, and Google QUIC (Q039/Q043 with the public
   header, Q046 with its own long header, Q050 and T050/T051 with IETF long
   headers and their own Initial salts). Each entry names its header form,
   its Initial protection, its frame encoding and its handshake;
2. walks the packets of the datagram in that header form (IETF long headers
   coalesce, RFC 9000 section 12.2), opening each client Initial: header
   protection and AEAD under keys from a salt and labels (RFC 9001 section
   5), or the FNV-1a hash of Google QUIC's plaintext packets;
3. gathers each connection's handshake stream (CRYPTO frames, or the data
   of Google QUIC's crypto stream 1) in any order, overlapping or
   duplicated, across any number of datagrams: browsers spread a 1.5-2 KB
   ClientHello over two datagrams in many small frames, and Chrome shuffles
   them;
4. once the stream holds a whole handshake message (a TLS ClientHello, or
   Google QUIC's CHLO), reads its server name and, for TLS, whether it offers
   Encrypted Client Hello.

A version not in the table (grease versions 0x?a?a?a?a, RFC 9000 section
15, that clients send to exercise version negotiation, and anything new) and
Version Negotiation packets (version 0) are recognised and counted by
family() but never read: their layout past the version is unknown.

Errors: input that is not a client Initial of a version in the table yields
None, as there is nothing to read. Input that claims to be one but cannot be
(truncated, failing authentication, malformed frames or handshake,
conflicting stream data, a connection past the bounds below) raises QuicError,
which the caller counts. No other exception escapes.
"""

import hashlib
import hmac
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, ClassVar, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .abi import ABI
from .names import normalise

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF
VERSION_NEGOTIATION = 0x00000000

MAX_CRYPTO_BYTES = 16 * 1024   # a ClientHello with post-quantum key shares takes about 2 KB
MAX_DATAGRAMS = 8              # per connection: browsers need two; the rest leaves room for retransmissions
MAX_STREAMS = 8                # connections a flow gathers the hellos of at once: the real one beside fakes
MAX_FLOW_DATAGRAMS = MAX_STREAMS * MAX_DATAGRAMS   # datagrams read per flow: each stream's count, for the most streams
HELLO_BYTES_SAFE = 4 * 1024    # a stream holding no more (a post-quantum hello twice over) never gives way to bytes
# The stream buffers of a flow: one stream of the largest size, and every other holding HELLO_BYTES_SAFE.
MAX_FLOW_CRYPTO_BYTES = MAX_CRYPTO_BYTES + (MAX_STREAMS - 1) * HELLO_BYTES_SAFE
DIGEST_LEN = 16                # of a datagram read, to know its repeats without keeping it
# What a flow's reassembly holds besides its streams' buffers, so the
# controller can bound all of them at once by bytes (quic_flows.py) without
# tracemalloc: tracemalloc's figures (CPython 3.11, 64-bit) rounded up, as
# the budget must not count less than is held. A stream: its object, key
# and buffers' headers, about 480; a digest in the set of those read, 80 to
# 150 as the set grows; the reassembler itself with its flow's key and entry
# among the pending flows, about 600.
STREAM_OVERHEAD_BYTES = 640
DIGEST_OVERHEAD_BYTES = 128
FLOW_OVERHEAD_BYTES = 1024
# Why the controller dropped a flow's reassembly for others' (quic_flows.py):
# over its bound on pending flows, or on the bytes they hold. Here, beside
# FAMILIES, so the metrics read them without the data path.
EVICTION_REASONS = ("count", "memory")
MAX_CID_LEN = 20               # RFC 9000 section 17.2
KEY_CACHE_SIZE = 256           # flows in flight at once whose keys are kept derived

LONG_HEADER = 0x80             # IETF long headers and Google's Q046 long header
FIXED_BIT = 0x40               # set in a client's Initials (RFC 9000 section 17.2), but not in a VN's
LONG_TYPE_SHIFT = 4
LONG_TYPE_MASK = 0b11
VERSION_OFFSET, VERSION_LEN = 1, 4
HP_FIRST_BYTE_MASK = 0x0F      # header protection covers the low 4 bits of a long header's first byte
PN_LEN_MASK = 0x03
PN_MAX_LEN = 4                 # the sample starts as if the packet number took 4 bytes
SAMPLE_LEN = 16
KEY_LEN, IV_LEN, SECRET_LEN = 16, 12, 32

# Google QUIC's public header (up to Q043): flags, connection ID, version.
PUBLIC_FLAG_VERSION = 0x01
PUBLIC_FLAG_CID = 0x08         # with 0x04, the old spelling of the same 8-byte ID, which clients still send
PUBLIC_FLAG_RESERVED = 0xC0    # multipath and reserved bits: clear in a client's first packet
PUBLIC_FLAGS_CLIENT_MASK = PUBLIC_FLAG_RESERVED | PUBLIC_FLAG_VERSION | PUBLIC_FLAG_CID
PUBLIC_FLAGS_CLIENT = PUBLIC_FLAG_VERSION | PUBLIC_FLAG_CID
PUBLIC_PN_SHIFT = 4
PUBLIC_PN_LENS = (1, 2, 4, 6)
PUBLIC_CID_LEN = 8
PUBLIC_VERSION_OFFSET = 1 + PUBLIC_CID_LEN
GQUIC_HASH_LEN = 12            # FNV-1a 128 truncated to 96 bits (Google's NullEncrypter)
GQUIC_CRYPTO_STREAM = 1

FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CONNECTION_CLOSE = 0x1C
PADDING_RUN = re.compile(b"\x00*")     # PADDING frames, one byte each: a run is skipped at once, not copied
GQUIC_FRAME_PING = 0x07
GQUIC_FRAME_CRYPTO = 0x08      # Q050 and T05x carry the handshake in these
GQUIC_FRAME_STREAM = 0x80      # 1fdooos s: fin, data length present, offset length, stream id length
GQUIC_STREAM_HAS_LENGTH = 0x20
GQUIC_STREAM_OFFSET_SHIFT = 2
GQUIC_STREAM_OFFSET_MASK = 0x07
GQUIC_STREAM_ID_MASK = 0x03

HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_HEADER_LEN = 4       # type (1) and length (3)
TLS_RANDOM_LEN = 32
EXT_SERVER_NAME = 0x0000
EXT_ECH = 0xFE0D               # encrypted_client_hello, draft-ietf-tls-esni
EXT_ALPN = 0x0010              # application_layer_protocol_negotiation, RFC 7301
SNI_HOST_NAME = 0

CHLO_TAG = b"CHLO"             # Google QUIC crypto's client hello: tag, count, then (tag, end offset) pairs
CHLO_HEADER_LEN = 8            # message tag (4), number of entries (2, little endian), padding (2)
CHLO_ENTRY_LEN = 8             # tag (4), end offset of its value (4, little endian)
CHLO_SNI_TAG = b"SNI\x00"


class QuicError(ValueError):
    """A datagram or flow that claims to be a QUIC client Initial but cannot be one."""


@dataclass(frozen=True)
class ClientHelloInfo:
    sni: str | None      # normalised as the data plane does: lower case, no trailing dot
    ech: bool            # the ClientHello offers Encrypted Client Hello: sni is then the outer name
    version: int         # the QUIC version of the Initials that carried it
    alpn: tuple[str, ...] = ()   # the protocol ids it offers (ALPN), in its order


@dataclass(frozen=True)
class InitialKeys:
    secret: bytes        # client_initial_secret
    key: bytes
    iv: bytes
    hp: bytes


@dataclass(frozen=True)
class _Packet:
    """One client Initial in a datagram, as its header form locates it."""
    data: bytes          # the packet, header included
    pn_offset: int       # where the packet number starts
    dcid: bytes
    pn_len: int | None   # known from the header when it is not protected


class _Reader:
    """Fields read front to back; running past the end is a QuicError naming ``what``."""

    def __init__(self, data: bytes, what: str):
        self.data, self.what, self.pos = data, what, 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int) -> bytes:
        start = self.pos
        end = start + count
        if end > len(self.data):
            raise QuicError(f"{self.what} truncated")
        self.pos = end
        return self.data[start:end]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def varint(self) -> int:
        """A QUIC variable-length integer (RFC 9000 section 16): the first
        byte's top two bits give its length, 1, 2, 4 or 8 bytes. A Chrome
        Initial holds a hundred frames and more (chaos protection), each a
        few of these: the one-byte form is read without a call."""
        data, start = self.data, self.pos
        if start >= len(data):
            raise QuicError(f"{self.what} truncated")
        first = data[start]
        if first < 0x40:
            self.pos = start + 1
            return first
        size = 1 << (first >> 6)
        return int.from_bytes(self.take(size), "big") & (1 << 8 * size - 2) - 1

    def vector(self, length_size: int) -> bytes:
        return self.take(self.uint(length_size))

    def varint_vector(self) -> bytes:
        return self.take(self.varint())


# --- header forms: where the client Initials of a datagram are ---------------------

def ietf_long_initials(datagram: bytes, version: "QuicVersion") -> Iterator[_Packet]:
    """IETF long headers (RFC 9000 section 17.2, drafts 22 on): coalesced packets
    share the version and connection ID of the first (section 12.2); anything
    else ends the walk. A short header has no length and so always comes
    last, as does trailing junk."""
    first_dcid = None
    rest = datagram
    version_field = datagram[VERSION_OFFSET:VERSION_OFFSET + VERSION_LEN]
    while rest and rest[0] & LONG_HEADER and rest[VERSION_OFFSET:VERSION_OFFSET + VERSION_LEN] == version_field:
        reader = _Reader(rest, "long-header packet")
        reader.take(VERSION_OFFSET + VERSION_LEN)
        dcid, scid = reader.vector(1), reader.vector(1)
        if len(dcid) > MAX_CID_LEN or len(scid) > MAX_CID_LEN:
            raise QuicError("connection ID longer than 20 bytes")
        if first_dcid is not None and dcid != first_dcid:
            return
        first_dcid = dcid
        packet_type = rest[0] >> LONG_TYPE_SHIFT & LONG_TYPE_MASK
        if packet_type == version.retry_type:       # a server's packet, and without a Length
            return
        if packet_type == version.initial_type:
            reader.varint_vector()                  # token
        length = reader.varint()
        pn_offset = reader.pos
        if length > reader.left:
            raise QuicError("packet runs past the datagram")
        if packet_type == version.initial_type:
            yield _Packet(rest[:pn_offset + length], pn_offset, dcid, None)
        rest = rest[pn_offset + length:]


def gquic_long_initial(datagram: bytes, version: "QuicVersion") -> Iterator[_Packet]:
    """Google's long header of Q046: first byte, version, one byte of two
    connection ID lengths (4 bits each, 0 or 3 more than written), the IDs,
    the packet number. No token and no Length: the packet fills the datagram."""
    if datagram[0] >> LONG_TYPE_SHIFT & LONG_TYPE_MASK != version.initial_type:
        return
    reader = _Reader(datagram, "Q046 header")
    reader.take(VERSION_OFFSET + VERSION_LEN)
    lengths = reader.uint(1)
    dcid_len, scid_len = (n + 3 if n else 0 for n in (lengths >> 4, lengths & 0x0F))
    dcid = reader.take(dcid_len)
    reader.take(scid_len)
    pn_len = (datagram[0] & PN_LEN_MASK) + 1
    yield _Packet(datagram, reader.pos, dcid, pn_len)


def gquic_public_initial(datagram: bytes, _version: "QuicVersion") -> Iterator[_Packet]:
    """Google QUIC's public header (up to Q043): flags, an 8-byte connection
    ID, the version, the packet number (1-6 bytes, by the flags); a
    datagram_version() has checked the flags."""
    flags = datagram[0]
    pn_len = PUBLIC_PN_LENS[flags >> PUBLIC_PN_SHIFT & 0b11]
    dcid = datagram[1:1 + PUBLIC_CID_LEN]
    yield _Packet(datagram, PUBLIC_VERSION_OFFSET + VERSION_LEN, dcid, pn_len)


# --- Initial protection ------------------------------------------------------------

def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label with an empty context (RFC 8446 section 7.1)."""
    full_label = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full_label)]) + full_label + b"\x00"
    return HKDFExpand(SHA256(), length, info).derive(secret)


@dataclass(frozen=True)
class InitialSecret:
    """Initial packets sealed with AES-128-GCM under keys from HKDF over the
    client's first Destination Connection ID (RFC 9001 section 5)."""
    salt: bytes
    label: bytes         # prefix of the key, iv and hp labels: "quic", or "quicv2" (RFC 9369 section 3.3.2)
    keyed_by_dcid: ClassVar[bool] = True     # another connection's keys do not open a packet

    def keys(self, dcid: bytes) -> InitialKeys:
        initial_secret = hmac.digest(self.salt, dcid, "sha256")       # HKDF-Extract
        secret = _expand_label(initial_secret, b"client in", SECRET_LEN)
        return InitialKeys(secret=secret,
                           key=_expand_label(secret, self.label + b" key", KEY_LEN),
                           iv=_expand_label(secret, self.label + b" iv", IV_LEN),
                           hp=_expand_label(secret, self.label + b" hp", KEY_LEN))

    def open(self, packet: _Packet, key_dcid: bytes, version: int) -> bytes:
        """The plaintext payload (RFC 9001 sections 5.3 and 5.4)."""
        keys = client_initial_keys(key_dcid, version)
        data, pn_offset = packet.data, packet.pn_offset
        sample = data[pn_offset + PN_MAX_LEN:pn_offset + PN_MAX_LEN + SAMPLE_LEN]
        if len(sample) < SAMPLE_LEN:
            raise QuicError("Initial packet too short to sample")
        mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor().update(sample)
        first = data[0] ^ (mask[0] & HP_FIRST_BYTE_MASK)
        pn_len = (first & PN_LEN_MASK) + 1
        pn = bytes(byte ^ m for byte, m in zip(data[pn_offset:pn_offset + pn_len], mask[1:]))
        header = bytes([first]) + data[1:pn_offset] + pn
        # A client numbers its first packets from 0, so the truncated packet
        # number is the whole one (RFC 9000 appendix A.3, nothing received yet).
        nonce = (int.from_bytes(keys.iv, "big") ^ int.from_bytes(pn, "big")).to_bytes(IV_LEN, "big")
        try:
            return AESGCM(keys.key).decrypt(nonce, data[pn_offset + pn_len:], header)
        except InvalidTag:
            raise QuicError("Initial packet fails authentication") from None


FNV128_OFFSET = 0x6C62272E07BB014262B821756295C58D
FNV128_PRIME = 0x0000000001000000000000000000013B
MASK128 = (1 << 128) - 1


def fnv1a_128(data: bytes) -> int:
    value = FNV128_OFFSET
    for byte in data:
        value = ((value ^ byte) * FNV128_PRIME) & MASK128
    return value


@dataclass(frozen=True)
class NullEncryption:
    """Google QUIC's unencrypted packets: the payload follows a 12-byte
    FNV-1a 128 hash of the header, the payload and the sender's side, which a
    server checks; a packet whose hash is wrong is one the server never
    reads, so neither do we."""
    sender: bytes = b"Client"      # hashed after the payload from Q037 on, nothing before
    keyed_by_dcid: ClassVar[bool] = False    # a packet opens, or not, whatever the connection

    def open(self, packet: _Packet, _key_dcid: bytes, _version: int) -> bytes:
        hash_offset = packet.pn_offset + packet.pn_len
        header, hashed = packet.data[:hash_offset], packet.data[hash_offset:hash_offset + GQUIC_HASH_LEN]
        payload = packet.data[hash_offset + GQUIC_HASH_LEN:]
        if len(hashed) < GQUIC_HASH_LEN:
            raise QuicError("Google QUIC packet truncated")
        digest = fnv1a_128(header + payload + self.sender)
        # Low 64 bits, then the next 32, each little endian (Google's SerializeUint128Short).
        expected = (digest & (1 << 64) - 1).to_bytes(8, "little") + (digest >> 64 & (1 << 32) - 1).to_bytes(4, "little")
        if not hmac.compare_digest(hashed, expected):
            raise QuicError("Google QUIC packet fails its hash")
        return payload


# --- frames: the handshake stream's pieces in a packet's payload ---------------------

def _ietf_frames(payload: bytes) -> list[tuple[int, bytes]]:
    """The (offset, data) of the CRYPTO frames in an IETF Initial packet (RFC 9000 section 19)."""
    reader = _Reader(payload, "frame")
    frames = []
    while reader.left:
        frame_type = reader.varint()
        if frame_type == FRAME_PADDING:
            # Padding fills most of a 1200-byte Initial: skip the run at once.
            reader.pos = PADDING_RUN.match(payload, reader.pos).end()
        elif frame_type == FRAME_PING:
            pass
        elif frame_type in (FRAME_ACK, FRAME_ACK_ECN):
            reader.varint(), reader.varint()        # largest acknowledged, ack delay
            ranges = reader.varint()
            reader.varint()                         # first range
            for _ in range(ranges):                 # each takes bytes, so a huge count runs out
                reader.varint(), reader.varint()    # gap, range length
            if frame_type == FRAME_ACK_ECN:
                reader.varint(), reader.varint(), reader.varint()
        elif frame_type == FRAME_CRYPTO:
            offset = reader.varint()
            frames.append((offset, reader.varint_vector()))
        elif frame_type == FRAME_CONNECTION_CLOSE:
            reader.varint(), reader.varint()        # error code, frame type
            reader.varint_vector()                  # reason phrase
        else:
            # No other frame may appear in an Initial packet (RFC 9000
            # section 12.4), and its length is unknown: keep what came before.
            break
    return frames


@dataclass(frozen=True)
class GquicFrames:
    """The handshake pieces in a Google QUIC packet: STREAM frames of the
    crypto stream (up to Q046), or CRYPTO frames with variable-length
    integers (Q050, T050, T051). Frames whose length this does not read
    (ACK, STOP_WAITING, ...) end the walk, keeping what came before."""
    byte_order: str = "big"          # of STREAM frame fields: little endian before Q039
    private_flags: bool = False      # a byte of flags opens the payload before Q034
    padding_fills_packet: bool = False   # before Q038; from then on each 0x00 is a frame of its own
    crypto_frames: bool = False      # the handshake is in CRYPTO frames (Q050, T05x), not stream 1

    def __call__(self, payload: bytes) -> list[tuple[int, bytes]]:
        reader = _Reader(payload, "frame")
        if self.private_flags:
            reader.take(1)
        frames = []
        while reader.left:
            frame_type = reader.uint(1)
            if frame_type == FRAME_PADDING:
                if self.padding_fills_packet:
                    break
                reader.pos = PADDING_RUN.match(payload, reader.pos).end()
            elif frame_type == GQUIC_FRAME_PING:
                pass
            elif frame_type == GQUIC_FRAME_CRYPTO and self.crypto_frames:
                offset = reader.varint()
                frames.append((offset, reader.varint_vector()))
            elif frame_type & GQUIC_FRAME_STREAM:
                stream_id = self._uint(reader, (frame_type & GQUIC_STREAM_ID_MASK) + 1)
                offset_len = frame_type >> GQUIC_STREAM_OFFSET_SHIFT & GQUIC_STREAM_OFFSET_MASK
                offset = self._uint(reader, offset_len + 1) if offset_len else 0
                has_length = frame_type & GQUIC_STREAM_HAS_LENGTH
                data = reader.take(self._uint(reader, 2) if has_length else reader.left)
                if stream_id == GQUIC_CRYPTO_STREAM and not self.crypto_frames:
                    frames.append((offset, data))
            else:
                break
        return frames

    def _uint(self, reader: _Reader, size: int) -> int:
        return int.from_bytes(reader.take(size), self.byte_order)


# --- handshakes: when the stream holds a whole message, and its name -----------------

def _server_name(extension: bytes) -> str:
    """The host name in a server_name extension (RFC 6066 section 3), read as the data plane does."""
    reader = _Reader(extension, "server_name")
    names = _Reader(reader.vector(2), "server_name list")
    if reader.left:
        raise QuicError("bytes after the server_name list")
    name_type, name = names.uint(1), names.vector(2)
    if name_type != SNI_HOST_NAME:
        raise QuicError("server_name is not a host name")
    return _host_name(name)


def _alpn(extension: bytes) -> tuple[str, ...]:
    """The protocol ids of an ALPN extension (RFC 7301 section 3.1)."""
    reader = _Reader(extension, "ALPN")
    ids = _Reader(reader.vector(2), "ALPN protocol list")
    offered = []
    while ids.left:
        offered.append(ids.vector(1).decode("ascii", "replace"))
    return tuple(offered)


def _host_name(name: bytes) -> str:
    if not 0 < len(name) <= ABI.SLUICE_NAME_MAX or not name.isascii():
        raise QuicError("server_name is not a host name")
    return normalise(name).decode("ascii")


class TlsClientHello:
    """TLS 1.3 in CRYPTO frames (RFC 9001 section 4): a ClientHello handshake message."""

    @staticmethod
    def length(stream: bytes) -> int | None:
        """The message's whole length, once the stream holds enough to tell."""
        if len(stream) < HANDSHAKE_HEADER_LEN:
            return None
        if stream[0] != HANDSHAKE_CLIENT_HELLO:
            raise QuicError("CRYPTO stream does not start with a ClientHello")
        return HANDSHAKE_HEADER_LEN + int.from_bytes(stream[1:HANDSHAKE_HEADER_LEN], "big")

    @staticmethod
    def parse(message: bytes) -> tuple[str | None, bool, tuple[str, ...]]:
        """Server name, ECH and ALPN of a ClientHello (RFC 8446 section 4.1.2)."""
        reader = _Reader(message[HANDSHAKE_HEADER_LEN:], "ClientHello")
        reader.take(2 + TLS_RANDOM_LEN)                 # legacy_version, random
        reader.vector(1)                                # legacy_session_id
        reader.vector(2)                                # cipher_suites
        reader.vector(1)                                # legacy_compression_methods
        sni, ech, alpn = None, False, ()
        extensions = _Reader(reader.vector(2) if reader.left else b"", "extensions")
        if reader.left:
            raise QuicError("bytes after the ClientHello's extensions")
        seen = set()
        while extensions.left:
            ext_type, ext_body = extensions.uint(2), extensions.vector(2)
            # Two server names would leave the choice to the server (RFC 8446 section 4.2 forbids it).
            if ext_type in seen:
                raise QuicError(f"extension {ext_type:#06x} appears twice")
            seen.add(ext_type)
            if ext_type == EXT_SERVER_NAME:
                sni = _server_name(ext_body)
            elif ext_type == EXT_ECH:
                ech = True
            elif ext_type == EXT_ALPN:
                alpn = _alpn(ext_body)
        return sni, ech, alpn


class GoogleChlo:
    """Google QUIC crypto's client hello: "CHLO", a count of entries, then
    each entry's tag and the end offset of its value, tags ascending, then
    the values; the server name is the value of the SNI tag."""

    @staticmethod
    def length(stream: bytes) -> int | None:
        if len(stream) < CHLO_HEADER_LEN:
            return None
        if stream[:len(CHLO_TAG)] != CHLO_TAG:
            raise QuicError("crypto stream does not start with a CHLO")
        entries = int.from_bytes(stream[4:6], "little")
        values = CHLO_HEADER_LEN + entries * CHLO_ENTRY_LEN
        if len(stream) < values:
            return None
        last_end = int.from_bytes(stream[values - 4:values], "little") if entries else 0
        return values + last_end

    @staticmethod
    def parse(message: bytes) -> tuple[str | None, bool, tuple[str, ...]]:
        entries = int.from_bytes(message[4:6], "little")
        values = CHLO_HEADER_LEN + entries * CHLO_ENTRY_LEN
        sni, previous_tag, start = None, -1, 0
        for index in range(entries):
            entry = message[CHLO_HEADER_LEN + index * CHLO_ENTRY_LEN:][:CHLO_ENTRY_LEN]
            tag, end = entry[:4], int.from_bytes(entry[4:], "little")
            # Tags ascend (as little-endian numbers) and values follow one another:
            # a server refuses anything else, so a second SNI cannot hide.
            if int.from_bytes(tag, "little") <= previous_tag or end < start:
                raise QuicError("CHLO entries out of order")
            if tag == CHLO_SNI_TAG:
                sni = _host_name(message[values + start:values + end])
            previous_tag, start = int.from_bytes(tag, "little"), end
        return sni, False, ()


# --- the table of versions --------------------------------------------------------

@dataclass(frozen=True)
class QuicVersion:
    name: str
    family: str          # a metrics label: ietf-draft, v1, v2, mvfst, gquic
    packets: Callable[[bytes, "QuicVersion"], Iterator[_Packet]]    # the header form
    protection: InitialSecret | NullEncryption
    frames: Callable[[bytes], list[tuple[int, bytes]]]    # the pieces of the handshake stream in a payload
    handshake: type[TlsClientHello] | type[GoogleChlo]
    initial_type: int = 0b00     # long-header packet types of Initial and Retry packets
    retry_type: int = 0b11


# The Initial salts: each draft's section 5.2 of draft-ietf-quic-tls, RFC 9001
# and RFC 9369; Google's for Q050 and T05x (Chromium's quic_crypto_utils).
SALT_DRAFT_22 = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")
SALT_DRAFT_23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")   # drafts 23-28
SALT_DRAFT_29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")   # drafts 29-32
SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")         # drafts 33-34, v1
SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
SALT_Q050 = bytes.fromhex("504574efd066fe2f9d945cfcdbd3a7f0d3b56b45")
SALT_T050 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
SALT_T051 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")


def _ietf(name: str, family: str, salt: bytes) -> QuicVersion:
    return QuicVersion(name, family, ietf_long_initials, InitialSecret(salt, b"quic"), _ietf_frames, TlsClientHello)


def _draft_salt(draft: int) -> bytes:
    return (SALT_DRAFT_22 if draft == 22 else SALT_DRAFT_23 if draft <= 28 else
            SALT_DRAFT_29 if draft <= 32 else SALT_V1)


def _gquic_version(name: str) -> int:
    return int.from_bytes(name.encode("ascii"), "big")


def _gquic_public(name: str, protection: NullEncryption, frames: GquicFrames) -> QuicVersion:
    return QuicVersion(name, "gquic", gquic_public_initial, protection, frames, GoogleChlo)


VERSIONS: dict[int, QuicVersion] = {
    **{0xFF000000 + draft: _ietf(f"draft-{draft}", "ietf-draft", _draft_salt(draft)) for draft in range(22, 35)},
    QUIC_V1: _ietf("v1", "v1", SALT_V1),
    # RFC 9369 sections 3.2 and 3.3: new salt, labels and packet type numbers
    QUIC_V2: QuicVersion("v2", "v2", ietf_long_initials, InitialSecret(SALT_V2, b"quicv2"), _ietf_frames,
                         TlsClientHello, initial_type=0b01, retry_type=0b00),
    # mvfst's own numbers for the drafts it implemented: 22, 27, and its experimental 27
    0xFACEB001: _ietf("mvfst-22", "mvfst", SALT_DRAFT_22),
    0xFACEB002: _ietf("mvfst-27", "mvfst", SALT_DRAFT_23),
    0xFACEB00E: _ietf("mvfst-exp", "mvfst", SALT_DRAFT_23),
    # Google QUIC: hashes without the sender's side up to Q035, STREAM frames
    # in little endian and padding to the end up to Q037, a private flags byte up to Q033.
    **{_gquic_version(name): _gquic_public(name, NullEncryption(b""), GquicFrames("little", private_flags=True,
                                                                                   padding_fills_packet=True))
       for name in ("Q024", "Q025", "Q030", "Q033")},
    **{_gquic_version(name): _gquic_public(name, NullEncryption(b""), GquicFrames("little", padding_fills_packet=True))
       for name in ("Q034", "Q035")},
    _gquic_version("Q037"): _gquic_public("Q037", NullEncryption(), GquicFrames("little", padding_fills_packet=True)),
    **{_gquic_version(name): _gquic_public(name, NullEncryption(), GquicFrames()) for name in ("Q039", "Q043")},
    _gquic_version("Q046"): QuicVersion("Q046", "gquic", gquic_long_initial, NullEncryption(), GquicFrames(),
                                        GoogleChlo),
    _gquic_version("Q050"): QuicVersion("Q050", "gquic", ietf_long_initials, InitialSecret(SALT_Q050, b"quic"),
                                        GquicFrames(crypto_frames=True), GoogleChlo),
    _gquic_version("T050"): QuicVersion("T050", "gquic", ietf_long_initials, InitialSecret(SALT_T050, b"quic"),
                                        GquicFrames(crypto_frames=True), TlsClientHello),
    _gquic_version("T051"): QuicVersion("T051", "gquic", ietf_long_initials, InitialSecret(SALT_T051, b"quic"),
                                        GquicFrames(crypto_frames=True), TlsClientHello),
}

GREASE_MASK, GREASE_PATTERN = 0x0F0F0F0F, 0x0A0A0A0A     # RFC 9000 section 15
# What family() may answer, for counters that start at zero.
FAMILIES = (*dict.fromkeys(version.family for version in VERSIONS.values()), "grease", "unknown", "negotiation")


def datagram_version(datagram: bytes) -> int | None:
    """The version a datagram's first packet carries, in either header
    form; None if it has none (a short header, or not QUIC)."""
    if len(datagram) < VERSION_OFFSET + VERSION_LEN:
        return None
    if datagram[0] & LONG_HEADER:
        version = int.from_bytes(datagram[VERSION_OFFSET:VERSION_OFFSET + VERSION_LEN], "big")
        # Without the fixed bit it is RTP, say, whose first byte is 0x80 (as bpf/quic.h checks).
        return version if datagram[0] & FIXED_BIT or version == VERSION_NEGOTIATION else None
    version_field = datagram[PUBLIC_VERSION_OFFSET:PUBLIC_VERSION_OFFSET + VERSION_LEN]
    # Only Google QUIC had a public header, and its versions start with Q (as bpf/quic.h checks).
    if (datagram[0] & PUBLIC_FLAGS_CLIENT_MASK == PUBLIC_FLAGS_CLIENT and len(version_field) == VERSION_LEN
            and version_field.startswith(b"Q")):
        return int.from_bytes(version_field, "big")
    return None


def family(datagram: bytes) -> str | None:
    """What a datagram is, for the counters: its version's family,
    "negotiation", "grease", "unknown", or None when it has no version."""
    version = datagram_version(datagram)
    if version is None:
        return None
    if version in VERSIONS:
        return VERSIONS[version].family
    if version == VERSION_NEGOTIATION:
        return "negotiation"
    return "grease" if version & GREASE_MASK == GREASE_PATTERN else "unknown"


@lru_cache(maxsize=KEY_CACHE_SIZE)
def client_initial_keys(dcid: bytes, version: int) -> InitialKeys:
    """The keys protecting a client's Initial packets sent to ``dcid`` (RFC 9001 section 5.2)."""
    return VERSIONS[version].protection.keys(dcid)


# --- one flow ---------------------------------------------------------------------

class _HandshakeStream:
    """One connection's handshake stream, its CRYPTO data gathered in any order."""

    def __init__(self, handshake: type[TlsClientHello] | type[GoogleChlo]):
        self.handshake = handshake      # what the stream carries, and when it is whole
        self.data = bytearray()         # the stream received so far...
        self.filled = bytearray()       # ...and 1 for each of its bytes that arrived
        self.datagrams = 0
        self.finished = False           # its message read, or the stream refused: nothing more of it is read

    def add(self, frames: list[tuple[int, bytes]]) -> bytes | None:
        """One datagram's pieces; the whole handshake message once the stream
        holds it, else None. A QuicError finishes the stream."""
        self.datagrams += 1
        try:
            for offset, data in frames:
                self._store(offset, data)
            message = self._message()
            if message is None and self.datagrams >= MAX_DATAGRAMS:
                raise QuicError(f"no whole handshake message in {MAX_DATAGRAMS} datagrams")
        except QuicError:
            self._finish()
            raise
        if message is not None:
            self._finish()
        return message

    def _finish(self) -> None:
        self.finished = True
        self.data, self.filled = bytearray(), bytearray()

    def _store(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > MAX_CRYPTO_BYTES:
            raise QuicError(f"CRYPTO data past {MAX_CRYPTO_BYTES} bytes")
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
            self.filled.extend(bytes(end - len(self.filled)))
        # Walk runs of received and missing bytes. Retransmissions repeat the
        # same bytes; different ones would let the server and us read different
        # ClientHellos, so they condemn the stream.
        pos = offset
        while pos < end:
            received = self.filled[pos]
            run_end = self.filled.find(0 if received else 1, pos, end)
            run_end = end if run_end == -1 else run_end
            piece = data[pos - offset:run_end - offset]
            if received and self.data[pos:run_end] != piece:
                raise QuicError("CRYPTO frames disagree on the same bytes")
            self.data[pos:run_end] = piece
            self.filled[pos:run_end] = b"\x01" * (run_end - pos)
            pos = run_end

    def _message(self) -> bytes | None:
        """The handshake message once the stream holds all of it, else None."""
        contiguous = self.filled.find(0)
        contiguous = len(self.filled) if contiguous == -1 else contiguous
        end = self.handshake.length(bytes(self.data[:contiguous]))
        if end is not None and end > MAX_CRYPTO_BYTES:
            raise QuicError(f"handshake message longer than {MAX_CRYPTO_BYTES} bytes")
        if end is None or contiguous < end:
            return None
        return bytes(self.data[:end])


class InitialReassembler:
    """One flow's client Initial datagrams, fed in arrival order: the handshake of each connection on it.

    A flow's addresses and ports may carry the Initials of several
    connections, each under the keys of its own first Destination Connection
    ID: zapret's fakes, whole or half a hello or a hello that disagrees,
    before the real one or between the datagrams of a real hello of two
    (Chrome's post-quantum hellos take two, their CRYPTO frames shuffled
    across both). A server keeps each connection's handshake apart, and
    garbage of one never touches another; so does this. Each connection
    (version and key DCID) has a stream of its own, which a datagram joins
    if that DCID's keys open it: the packet's own DCID's, as a client writes
    its first DCID until the server answers, or another stream's, as a
    client that moved to the server's chosen ID keeps its first DCID's keys
    (RFC 9001 section 5.2). After a Retry, or a Version Negotiation, the
    client sends its hello again from its start under a new DCID or
    version: a new stream.

    feed() returns a connection's ClientHelloInfo once, with the datagram
    that makes its hello whole, and None otherwise; the flow goes on reading
    other connections, as the strictest of their hellos rules the flow
    (controller/quic_flows.py). A QuicError refuses a broken datagram,
    which leaves no trace, or ends one connection's stream (conflicting or
    excess stream data, a bad handshake message, MAX_DATAGRAMS of its own
    without one), after which its datagrams are not read: the others' go on.

    An adversary may open connections without end: the flow gathers at most
    MAX_STREAMS at once (a finished one gives way to a new one, else the
    oldest, so fakes sent ahead cannot crowd out the real hello), holds at
    most MAX_FLOW_CRYPTO_BYTES of their streams, and reads at most
    MAX_FLOW_DATAGRAMS datagrams, after which it is ``done`` and ignores
    what follows. A datagram that repeats one already read, byte for
    byte (a retransmission, or a fake sent again and again), is not read
    again nor counted.

    ``held`` is the bytes the flow's reassembly holds (its buffers, digests
    and objects), as of the last datagram fed: what the controller's budget
    for all pending flows counts.
    """

    def __init__(self):
        self._streams: dict[tuple[int, bytes], _HandshakeStream] = {}    # by (version, key DCID), oldest first
        self._read: set[bytes] = set()      # digests of the datagrams read
        self.fed = 0                        # datagrams fed, read or not
        self.done = False
        self.held = FLOW_OVERHEAD_BYTES

    @property
    def gathering(self) -> bool:
        """Is a connection's hello begun and not yet whole?"""
        return not self.done and not all(stream.finished for stream in self._streams.values())

    def feed(self, datagram: bytes) -> ClientHelloInfo | None:
        self.fed += 1
        if self.done:
            return None
        try:
            return self._read_datagram(datagram)
        finally:
            # Streams grow, give way and finish only while a datagram is read:
            # counted here, at most MAX_STREAMS of them, held stays true.
            self.held = (FLOW_OVERHEAD_BYTES + DIGEST_OVERHEAD_BYTES * len(self._read)
                         + sum(STREAM_OVERHEAD_BYTES + len(stream.data) + len(stream.filled)
                               for stream in self._streams.values()))

    def _read_datagram(self, datagram: bytes) -> ClientHelloInfo | None:
        datagram = bytes(datagram)                       # a ring buffer may hand out other buffers
        version = datagram_version(datagram)
        if version not in VERSIONS:
            return None
        digest = hashlib.blake2b(datagram, digest_size=DIGEST_LEN).digest()
        if digest in self._read:
            return None
        self._read.add(digest)
        self.done = len(self._read) >= MAX_FLOW_DATAGRAMS
        quic_version = VERSIONS[version]
        packets = list(quic_version.packets(datagram, quic_version))
        if not packets:
            return None
        # Read every frame before storing any, so a broken datagram leaves no trace.
        key_dcid, payloads = self._open(version, packets)
        frames = [frame for payload in payloads for frame in quic_version.frames(payload)]
        stream = self._stream(version, key_dcid)
        if stream.finished:
            return None
        self._make_room(stream, frames)
        message = stream.add(frames)
        if message is None:
            return None
        sni, ech, alpn = stream.handshake.parse(message)
        return ClientHelloInfo(sni=sni, ech=ech, version=version, alpn=alpn)

    def _open(self, version: int, packets: list[_Packet]) -> tuple[bytes, list[bytes]]:
        """The DCID whose keys open the datagram, and its packets' payloads.
        Coalesced packets share one DCID and so one connection's keys: the
        first packet tells whose."""
        protection = VERSIONS[version].protection
        first = packets[0]
        candidates = [first.dcid]
        if protection.keyed_by_dcid:
            candidates += [dcid for stream_version, dcid in self._streams
                           if stream_version == version and dcid != first.dcid]
        refusal = None
        for key_dcid in candidates:
            try:
                payload = protection.open(first, key_dcid, version)
            except QuicError as error:
                refusal = refusal or error
                continue
            return key_dcid, [payload, *(protection.open(packet, key_dcid, version) for packet in packets[1:])]
        raise refusal

    def _stream(self, version: int, key_dcid: bytes) -> _HandshakeStream:
        """The connection's stream, a new one if the flow has none yet."""
        key = (version, key_dcid)
        if key not in self._streams:
            if len(self._streams) >= MAX_STREAMS:
                # A finished stream has nothing left to read; else the oldest gives way.
                finished = next((known for known, stream in self._streams.items() if stream.finished), None)
                del self._streams[finished or next(iter(self._streams))]
            self._streams[key] = _HandshakeStream(VERSIONS[version].handshake)
        return self._streams[key]

    def _make_room(self, stream: _HandshakeStream, frames: list[tuple[int, bytes]]) -> None:
        """Keep the flow's buffers within MAX_FLOW_CRYPTO_BYTES once ``stream``
        holds ``frames``. A buffer runs to the highest offset received, so one
        small datagram can claim MAX_CRYPTO_BYTES: the other streams that hold
        the most give way, never one that holds HELLO_BYTES_SAFE or less."""
        held = {key: len(other.data) for key, other in self._streams.items() if other is not stream and other.data}
        grown = max([len(stream.data), *(offset + len(data) for offset, data in frames)])
        excess = sum(held.values()) + min(grown, MAX_CRYPTO_BYTES) - MAX_FLOW_CRYPTO_BYTES
        for key in sorted(held, key=held.__getitem__, reverse=True):
            if excess <= 0:
                return
            excess -= held[key]
            del self._streams[key]


def client_hello_from_datagram(datagram: bytes) -> ClientHelloInfo | None:
    """The ClientHello of a single datagram, for clients whose ClientHello fits in one."""
    return InitialReassembler().feed(datagram)
