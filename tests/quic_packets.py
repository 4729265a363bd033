"""QUIC client Initial packets for tests/test_quic.py: frames, and an encryptor.

The encryptor is the mirror of controller/quic.py's decryption (RFC 9001
section 5); test_quic.py checks it against the RFC's protected packets before
trusting it with packets of its own.
"""

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controller.quic import QUIC_V1, QUIC_V2, client_initial_keys
from packets import client_hello

RFC_DCID = bytes.fromhex("8394c8f03e515708")    # RFC 9001 and RFC 9369 appendix A
INITIAL_TYPE = {QUIC_V1: 0b00, QUIC_V2: 0b01}
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


def split_crypto(stream: bytes, rng, *, largest: int = 40, overlap: bool = True) -> list[bytes]:
    """``stream`` as CRYPTO frames of random sizes; with ``overlap``, some reach
    back over bytes already sent and some are sent twice."""
    frames, pos = [], 0
    while pos < len(stream):
        start = max(0, pos - rng.randrange(0, 8)) if overlap else pos
        end = min(len(stream), pos + rng.randrange(1, largest))
        frames.append(crypto_frame(start, stream[start:end]))
        pos = end
    if overlap:
        frames += rng.sample(frames, len(frames) // 5)
    return frames


def initial_packet(frames: bytes, *, dcid: bytes = RFC_DCID, scid: bytes = b"", version: int = QUIC_V1,
                   pn: int = 0, pn_len: int = 4, token: bytes = b"", size: int | None = None,
                   packet_type: int | None = None) -> bytes:
    """A protected client Initial packet (or another long-header type) carrying
    ``frames``, padded with PADDING frames to at least ``size`` bytes if given."""
    packet_type = INITIAL_TYPE[version] if packet_type is None else packet_type
    keys = client_initial_keys(dcid, version)
    head = bytes([0xC0 | packet_type << 4 | (pn_len - 1)]) + version.to_bytes(4, "big")
    head += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if packet_type == INITIAL_TYPE[version]:
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


def short_header_packet(payload: bytes = b"\x42" * 40) -> bytes:
    return bytes([0x40 | 0x03]) + RFC_DCID + payload
