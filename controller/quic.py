"""QUIC Initial packets: the server name in a client's first flight, read in user space.

A QUIC client's first packets are Initial packets, protected with keys that
derive from their Destination Connection ID alone (RFC 9001 section 5.2), so
anyone on the path can read them. The data plane cannot decrypt, so it hands
the first datagrams of an unknown UDP flow to the controller, which here:

1. walks the long-header packets coalesced in each datagram (RFC 9000
   section 12.2) and keeps the Initial packets of QUIC v1 (RFC 9000) and
   QUIC v2 (RFC 9369), skipping the others by their Length field;
2. derives the client Initial keys, removes header protection and decrypts
   (RFC 9001 section 5);
3. gathers the CRYPTO frames into one stream, in any order, overlapping or
   duplicated: browsers spread a ClientHello of 1.5-2 KB over two datagrams
   in many small frames, and Chrome shuffles them;
4. once the stream holds a whole ClientHello, reads its server name and
   whether it offers Encrypted Client Hello.

Errors: input that is not a v1 or v2 Initial at all (another UDP protocol, a
short header, an unknown version) yields None, as there is nothing to count.
Input that claims to be one but cannot be (truncated, failing
authentication, malformed frames or ClientHello, conflicting CRYPTO data, a
flow past the bounds below) raises QuicError, which the caller counts. No
other exception escapes.
"""

import hmac
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .abi import ABI
from .names import normalise

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF

MAX_CRYPTO_BYTES = 16 * 1024   # a ClientHello with post-quantum key shares takes about 2 KB
MAX_DATAGRAMS = 8              # browsers need two; the rest leaves room for retransmissions
MAX_CID_LEN = 20               # RFC 9000 section 17.2
KEY_CACHE_SIZE = 256           # flows in flight at once whose keys are kept derived

LONG_HEADER = 0x80
VERSION_OFFSET, VERSION_LEN = 1, 4
HP_FIRST_BYTE_MASK = 0x0F      # header protection covers the low 4 bits of a long header's first byte
PN_LEN_MASK = 0x03
PN_MAX_LEN = 4                 # the sample starts as if the packet number took 4 bytes
SAMPLE_LEN = 16
KEY_LEN, IV_LEN, SECRET_LEN = 16, 12, 32

FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CONNECTION_CLOSE = 0x1C

HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_HEADER_LEN = 4       # type (1) and length (3)
TLS_RANDOM_LEN = 32
EXT_SERVER_NAME = 0x0000
EXT_ECH = 0xFE0D               # encrypted_client_hello, draft-ietf-tls-esni
SNI_HOST_NAME = 0


class QuicError(ValueError):
    """A datagram or flow that claims to be a QUIC client Initial but cannot be one."""


@dataclass(frozen=True)
class ClientHelloInfo:
    sni: str | None      # normalised as the data plane does: lower case, no trailing dot
    ech: bool            # the ClientHello offers Encrypted Client Hello: sni is then the outer name
    version: int         # QUIC_V1 or QUIC_V2


@dataclass(frozen=True)
class InitialKeys:
    secret: bytes        # client_initial_secret
    key: bytes
    iv: bytes
    hp: bytes


@dataclass(frozen=True)
class _Version:
    salt: bytes
    label: bytes         # prefix of the key, iv and hp labels
    initial_type: int    # long-header packet type of Initial and Retry packets
    retry_type: int


_VERSIONS = {
    # RFC 9001 section 5.2
    QUIC_V1: _Version(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), b"quic", 0b00, 0b11),
    # RFC 9369 sections 3.2 and 3.3: new salt, labels and packet type numbers
    QUIC_V2: _Version(bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), b"quicv2", 0b01, 0b00),
}


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label with an empty context (RFC 8446 section 7.1)."""
    full_label = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full_label)]) + full_label + b"\x00"
    return HKDFExpand(SHA256(), length, info).derive(secret)


@lru_cache(maxsize=KEY_CACHE_SIZE)
def client_initial_keys(dcid: bytes, version: int) -> InitialKeys:
    """The keys protecting a client's Initial packets sent to ``dcid`` (RFC 9001 section 5.2)."""
    params = _VERSIONS[version]
    initial_secret = hmac.digest(params.salt, dcid, "sha256")       # HKDF-Extract
    secret = _expand_label(initial_secret, b"client in", SECRET_LEN)
    return InitialKeys(secret=secret,
                       key=_expand_label(secret, params.label + b" key", KEY_LEN),
                       iv=_expand_label(secret, params.label + b" iv", IV_LEN),
                       hp=_expand_label(secret, params.label + b" hp", KEY_LEN))


class _Reader:
    """Fields read front to back; running past the end is a QuicError naming ``what``."""

    def __init__(self, data: bytes, what: str):
        self.data, self.what, self.pos = data, what, 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int) -> bytes:
        if count > self.left:
            raise QuicError(f"{self.what} truncated")
        self.pos += count
        return self.data[self.pos - count:self.pos]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def varint(self) -> int:
        """A QUIC variable-length integer (RFC 9000 section 16)."""
        first = self.uint(1)
        value = first & 0x3F
        for byte in self.take((1 << (first >> 6)) - 1):
            value = value << 8 | byte
        return value

    def vector(self, length_size: int) -> bytes:
        return self.take(self.uint(length_size))

    def varint_vector(self) -> bytes:
        return self.take(self.varint())


def _decrypt(packet: bytes, pn_offset: int, dcid: bytes, version: int) -> bytes:
    """The plaintext payload of one client Initial packet (RFC 9001 sections 5.3 and 5.4)."""
    keys = client_initial_keys(dcid, version)
    sample = packet[pn_offset + PN_MAX_LEN:pn_offset + PN_MAX_LEN + SAMPLE_LEN]
    if len(sample) < SAMPLE_LEN:
        raise QuicError("Initial packet too short to sample")
    mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor().update(sample)
    first = packet[0] ^ (mask[0] & HP_FIRST_BYTE_MASK)
    pn_len = (first & PN_LEN_MASK) + 1
    pn = bytes(byte ^ m for byte, m in zip(packet[pn_offset:pn_offset + pn_len], mask[1:]))
    header = bytes([first]) + packet[1:pn_offset] + pn
    # A client numbers its first packets from 0, so the truncated packet
    # number is the whole one (RFC 9000 appendix A.3, nothing received yet).
    nonce = (int.from_bytes(keys.iv, "big") ^ int.from_bytes(pn, "big")).to_bytes(IV_LEN, "big")
    try:
        return AESGCM(keys.key).decrypt(nonce, packet[pn_offset + pn_len:], header)
    except InvalidTag:
        raise QuicError("Initial packet fails authentication") from None


def _initial_payloads(datagram: bytes) -> tuple[int, list[bytes]] | None:
    """The QUIC version and decrypted Initial payloads of one datagram; None if it has none."""
    version_field = datagram[VERSION_OFFSET:VERSION_OFFSET + VERSION_LEN]
    version = int.from_bytes(version_field, "big")
    params = _VERSIONS.get(version)
    if len(version_field) < VERSION_LEN or not datagram[0] & LONG_HEADER or params is None:
        return None
    payloads: list[bytes] = []
    first_dcid = None
    rest = datagram
    # Coalesced packets share the version and connection ID of the first
    # (RFC 9000 section 12.2); anything else ends the walk. A short header has
    # no length and so always comes last, as does trailing junk.
    while rest and rest[0] & LONG_HEADER and rest[VERSION_OFFSET:VERSION_OFFSET + VERSION_LEN] == version_field:
        reader = _Reader(rest, "long-header packet")
        reader.take(VERSION_OFFSET + VERSION_LEN)
        dcid, scid = reader.vector(1), reader.vector(1)
        if len(dcid) > MAX_CID_LEN or len(scid) > MAX_CID_LEN:
            raise QuicError("connection ID longer than 20 bytes")
        if first_dcid is not None and dcid != first_dcid:
            break
        first_dcid = dcid
        packet_type = rest[0] >> 4 & 0b11
        if packet_type == params.retry_type:        # a server's packet, and without a Length
            break
        if packet_type == params.initial_type:
            reader.varint_vector()                  # token
        length = reader.varint()
        pn_offset = reader.pos
        if length > reader.left:
            raise QuicError("packet runs past the datagram")
        if packet_type == params.initial_type:
            payloads.append(_decrypt(rest[:pn_offset + length], pn_offset, dcid, version))
        rest = rest[pn_offset + length:]
    return (version, payloads) if payloads else None


def _crypto_frames(payload: bytes) -> list[tuple[int, bytes]]:
    """The (offset, data) of the CRYPTO frames in an Initial packet's payload."""
    reader = _Reader(payload, "frame")
    frames = []
    while reader.left:
        frame_type = reader.varint()
        if frame_type == FRAME_PADDING:
            # Padding fills most of a 1200-byte Initial: skip the run at once.
            reader.pos = len(payload) - len(payload[reader.pos:].lstrip(b"\x00"))
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


def _server_name(extension: bytes) -> str:
    """The host name in a server_name extension (RFC 6066 section 3), read as the data plane does."""
    reader = _Reader(extension, "server_name")
    names = _Reader(reader.vector(2), "server_name list")
    if reader.left:
        raise QuicError("bytes after the server_name list")
    name_type, name = names.uint(1), names.vector(2)
    if name_type != SNI_HOST_NAME or not 0 < len(name) <= ABI.SLUICE_NAME_MAX or not name.isascii():
        raise QuicError("server_name is not a host name")
    return normalise(name).decode("ascii")


def _parse_client_hello(body: bytes, version: int) -> ClientHelloInfo:
    """Server name and ECH of a ClientHello's body (RFC 8446 section 4.1.2)."""
    reader = _Reader(body, "ClientHello")
    reader.take(2 + TLS_RANDOM_LEN)                 # legacy_version, random
    reader.vector(1)                                # legacy_session_id
    reader.vector(2)                                # cipher_suites
    reader.vector(1)                                # legacy_compression_methods
    sni, ech = None, False
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
    return ClientHelloInfo(sni=sni, ech=ech, version=version)


class InitialReassembler:
    """One flow's client Initial datagrams, fed in arrival order, until its ClientHello is whole.

    feed() returns the ClientHelloInfo once, with the datagram that completes
    it, and None before. A QuicError for a broken datagram drops that datagram
    only; one for the flow itself (conflicting or excess CRYPTO data, a bad
    ClientHello, MAX_DATAGRAMS without one) finishes the flow. A finished
    flow (``done``) ignores what follows.
    """

    def __init__(self):
        self._data = bytearray()         # the CRYPTO stream received so far...
        self._filled = bytearray()       # ...and 1 for each of its bytes that arrived
        self._datagrams = 0
        self._version: int | None = None
        self.done = False

    def feed(self, datagram: bytes) -> ClientHelloInfo | None:
        if self.done:
            return None
        initial = _initial_payloads(bytes(datagram))     # a ring buffer may hand out other buffers
        if initial is None:
            return None
        version, payloads = initial
        # Read every frame before storing any, so a broken datagram leaves no trace.
        frames = [frame for payload in payloads for frame in _crypto_frames(payload)]
        if self._version is None:
            self._version = version
        self._datagrams += 1
        try:
            for offset, data in frames:
                self._store(offset, data)
            body = self._client_hello_body()
            if body is None and self._datagrams >= MAX_DATAGRAMS:
                raise QuicError(f"no whole ClientHello in {MAX_DATAGRAMS} datagrams")
        except QuicError:
            self.done = True
            raise
        if body is None:
            return None
        self.done = True
        return _parse_client_hello(body, self._version)

    def _store(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > MAX_CRYPTO_BYTES:
            raise QuicError(f"CRYPTO data past {MAX_CRYPTO_BYTES} bytes")
        if end > len(self._data):
            self._data.extend(bytes(end - len(self._data)))
            self._filled.extend(bytes(end - len(self._filled)))
        # Walk runs of received and missing bytes. Retransmissions repeat the
        # same bytes; different ones would let the server and us read different
        # ClientHellos, so they condemn the flow.
        pos = offset
        while pos < end:
            received = self._filled[pos]
            run_end = self._filled.find(0 if received else 1, pos, end)
            run_end = end if run_end == -1 else run_end
            piece = data[pos - offset:run_end - offset]
            if received and self._data[pos:run_end] != piece:
                raise QuicError("CRYPTO frames disagree on the same bytes")
            self._data[pos:run_end] = piece
            self._filled[pos:run_end] = b"\x01" * (run_end - pos)
            pos = run_end

    def _client_hello_body(self) -> bytes | None:
        """The ClientHello's body once the stream holds all of it, else None."""
        contiguous = self._filled.find(0)
        contiguous = len(self._filled) if contiguous == -1 else contiguous
        if contiguous < HANDSHAKE_HEADER_LEN:
            return None
        if self._data[0] != HANDSHAKE_CLIENT_HELLO:
            raise QuicError("CRYPTO stream does not start with a ClientHello")
        end = HANDSHAKE_HEADER_LEN + int.from_bytes(self._data[1:HANDSHAKE_HEADER_LEN], "big")
        if end > MAX_CRYPTO_BYTES:
            raise QuicError(f"ClientHello longer than {MAX_CRYPTO_BYTES} bytes")
        if contiguous < end:
            return None
        return bytes(self._data[HANDSHAKE_HEADER_LEN:end])


def client_hello_from_datagram(datagram: bytes) -> ClientHelloInfo | None:
    """The ClientHello of a single datagram, for clients whose ClientHello fits in one."""
    return InitialReassembler().feed(datagram)
