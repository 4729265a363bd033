"""QUIC Initial packets: RFC vectors, a real client's datagrams, and hostile ones."""

import random
import struct
import tracemalloc

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, UDP, Raw

from helpers import HOOKS, AtHook, classify, needs_root
from sluice.policy import DEFAULT_WINDOW_PACKETS
from sluice.quic_flows import QuicFlows
from sluice.testrun import run_xdp

from sluice.quic import (HELLO_BYTES_SAFE, MAX_CRYPTO_BYTES, MAX_DATAGRAMS, MAX_FLOW_CRYPTO_BYTES, MAX_FLOW_DATAGRAMS,
                             MAX_STREAMS, QUIC_V1, QUIC_V2, VERSIONS, ClientHelloInfo, GoogleChlo, InitialReassembler,
                             QuicError, client_hello_from_datagram, client_initial_keys, family, fnv1a_128)
from packets import CLIENT_V4, SERVER_V4, ether, extension, sni_extension, udp_frame
from quic_packets import (DATAGRAM_MIN, HANDSHAKE_TYPE, PING, RFC_DCID, ack_frame, broken_fakes, chlo, chlo_entries,
                          client_initial, connection_close, crypto_frame, gquic_plaintext_packet, gquic_stream_frame,
                          gquic_version, handshake_client_hello, handshake_message, initial_packet,
                          long_header_datagram, short_header_packet, split_crypto, stream_frame,
                          two_datagram_hello, two_datagrams_of_shuffled_pieces, varint, version_negotiation)

EXT_ECH = 0xFE0D
PADDING_EXTENSION = extension(0x0015, bytes(400))       # RFC 7685

# RFC 9001 appendix A.2 and RFC 9369 appendix A.2: the CRYPTO frame of the
# client's Initial (a ClientHello for example.com), padded to 1162 bytes.
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff")
RFC_PAYLOAD = RFC_CRYPTO_FRAME + bytes(1162 - len(RFC_CRYPTO_FRAME))
RFC_PN = 2

# RFC 9001 appendix A.2: the protected client Initial packet.
RFC9001_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934")

# RFC 9369 appendix A.2: the same Initial, protected as QUIC version 2.
RFC9369_CLIENT_INITIAL = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc")

# RFC 9001 A.2's ClientHello offers one ALPN id, "alpn".
EXAMPLE_COM_V1 = ClientHelloInfo(sni="example.com", ech=False, version=QUIC_V1, alpn=("alpn",))


def feed_all(datagrams: list[bytes]) -> list[ClientHelloInfo | None]:
    flow = InitialReassembler()
    return [flow.feed(datagram) for datagram in datagrams]


def datagram(frames: bytes, **options) -> bytes:
    """One padded client Initial datagram carrying ``frames``."""
    return initial_packet(frames, size=DATAGRAM_MIN, **options)


# --- RFC vectors -------------------------------------------------------------

def test_rfc9001_a1_client_initial_keys():
    keys = client_initial_keys(RFC_DCID, QUIC_V1)
    assert keys.secret.hex() == "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"
    assert keys.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert keys.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert keys.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


def test_rfc9369_a1_client_initial_keys():
    keys = client_initial_keys(RFC_DCID, QUIC_V2)
    assert keys.secret.hex() == "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b"
    assert keys.key.hex() == "8b1a0bc121284290a29e0971b5cd045d"
    assert keys.iv.hex() == "91f73e2351d8fa91660e909f"
    assert keys.hp.hex() == "45b95e15235d6f45a6b19cbcb0294ba9"


@pytest.mark.parametrize("packet, version", [(RFC9001_CLIENT_INITIAL, QUIC_V1),
                                             (RFC9369_CLIENT_INITIAL, QUIC_V2)],
                         ids=["rfc9001-a2", "rfc9369-a2"])
def test_rfc_a2_client_initial_gives_example_com(packet, version):
    assert len(packet) == DATAGRAM_MIN
    assert client_hello_from_datagram(packet) == ClientHelloInfo(sni="example.com", ech=False, version=version,
                                                                 alpn=("alpn",))


@pytest.mark.parametrize("packet, version", [(RFC9001_CLIENT_INITIAL, QUIC_V1),
                                             (RFC9369_CLIENT_INITIAL, QUIC_V2)],
                         ids=["rfc9001-a2", "rfc9369-a2"])
def test_the_test_encryptor_reproduces_the_rfc_packets(packet, version):
    """The other tests build their packets with this encryptor: it must be exact."""
    assert initial_packet(RFC_PAYLOAD, version=version, pn=RFC_PN) == packet


# --- a real client: aioquic --------------------------------------------------

def aioquic_datagrams(server_name: str, version: int = QUIC_V1, alpn: tuple[str, ...] = ("h3",)) -> list[bytes]:
    """The datagrams of a fresh aioquic client's first flight, with no network."""
    configuration = QuicConfiguration(is_client=True, server_name=server_name, alpn_protocols=list(alpn),
                                      original_version=version, supported_versions=[version])
    connection = QuicConnection(configuration=configuration)
    connection.connect(("192.0.2.1", 443), now=0.0)
    return [data for data, _address in connection.datagrams_to_send(now=0.0)]


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2], ids=["v1", "v2"])
def test_aioquic_client_initial(version):
    datagrams = aioquic_datagrams("www.Example.ORG", version)
    assert len(datagrams) == 1
    assert client_hello_from_datagram(datagrams[0]) == ClientHelloInfo("www.example.org", False, version, ("h3",))


def test_aioquic_name_with_a_trailing_dot_is_normalised():
    (first,) = aioquic_datagrams("Media.Example.NET.")
    assert client_hello_from_datagram(first).sni == "media.example.net"


@pytest.mark.parametrize("order", ["in-order", "reversed"])
@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2], ids=["v1", "v2"])
def test_aioquic_client_hello_spanning_datagrams(version, order):
    # Long ALPN names make the ClientHello outgrow one datagram, as
    # post-quantum key shares do for browsers.
    alpn = ("h3", *(f"proto-{i:02d}-" + "x" * 190 for i in range(8)))
    datagrams = aioquic_datagrams("big.example.com", version, alpn=alpn)
    assert len(datagrams) >= 2
    assert client_hello_from_datagram(datagrams[0]) is None        # the first alone is not enough
    if order == "reversed":
        datagrams.reverse()
    results = feed_all(datagrams)
    assert results[:-1] == [None] * (len(datagrams) - 1)
    assert results[-1] == ClientHelloInfo("big.example.com", False, version, alpn)


# --- reassembly ----------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_many_small_shuffled_overlapping_crypto_frames_over_two_datagrams(seed):
    hello = handshake_client_hello(b"shuffled.example.com", extensions_after=(extension(0x0015, bytes(1200)),))
    assert len(hello) > 1300
    first, second = two_datagrams_of_shuffled_pieces(hello, seed)
    expected = ClientHelloInfo("shuffled.example.com", False, QUIC_V1)
    assert feed_all([first, second]) == [None, expected]
    assert feed_all([second, first]) == [None, expected]


def test_crypto_frames_split_into_single_bytes_in_reverse():
    hello = handshake_client_hello(b"bytes.example.com")
    frames = b"".join(crypto_frame(i, hello[i:i + 1]) for i in reversed(range(len(hello))))
    assert client_hello_from_datagram(datagram(frames)).sni == "bytes.example.com"


def test_frames_an_initial_may_carry_are_stepped_over():
    hello = handshake_client_hello(b"frames.example.com")
    frames = (PING + ack_frame() + crypto_frame(0, hello[:50]) + ack_frame(ecn=True) + b"\x00" * 7
              + crypto_frame(50, hello[50:]) + connection_close())
    assert client_hello_from_datagram(datagram(frames)).sni == "frames.example.com"


def test_an_unknown_frame_ends_the_packet_but_keeps_what_came_before():
    hello = handshake_client_hello(b"stream.example.com")
    stream_frame = b"\x08\x00" + b"junk"
    assert client_hello_from_datagram(datagram(crypto_frame(0, hello) + stream_frame)).sni == "stream.example.com"
    assert client_hello_from_datagram(datagram(stream_frame + crypto_frame(0, hello))) is None


def test_coalesced_packets_skip_other_types_and_other_connection_ids():
    hello = handshake_client_hello(b"coalesced.example.com")
    handshake = initial_packet(PING * 30, packet_type=HANDSHAKE_TYPE[QUIC_V1])
    first_half = initial_packet(crypto_frame(0, hello[:100]), pn=0)
    second_half = initial_packet(crypto_frame(100, hello[100:]), pn=1)
    together = handshake + first_half + second_half + bytes(40)     # trailing zeros: no packet
    assert client_hello_from_datagram(together).sni == "coalesced.example.com"
    # Packets after one for another connection ID are not this connection's.
    stranger = initial_packet(crypto_frame(100, hello[100:]), dcid=bytes(8))
    assert client_hello_from_datagram(first_half + stranger + second_half) is None


def test_ech_is_reported_with_the_outer_name_or_none():
    ech = extension(EXT_ECH, bytes(200))
    with_name = handshake_client_hello(b"public.example.com", extensions_after=(ech,))
    assert client_hello_from_datagram(datagram(crypto_frame(0, with_name))) == \
        ClientHelloInfo("public.example.com", True, QUIC_V1)
    without_name = handshake_client_hello(None, extensions_after=(ech,))
    assert client_hello_from_datagram(datagram(crypto_frame(0, without_name))) == ClientHelloInfo(None, True, QUIC_V1)


def test_a_client_hello_without_extensions_has_no_name():
    hello = handshake_client_hello(None, no_extensions=True)
    assert client_hello_from_datagram(datagram(crypto_frame(0, hello))) == ClientHelloInfo(None, False, QUIC_V1)


def test_each_connections_hello_comes_once_and_the_flow_reads_on():
    flow = InitialReassembler()
    assert flow.feed(RFC9001_CLIENT_INITIAL) == EXAMPLE_COM_V1
    assert flow.feed(RFC9001_CLIENT_INITIAL) is None                 # a repeat
    assert flow.feed(initial_packet(RFC_PAYLOAD, pn=RFC_PN + 1)) is None    # a retransmission, in a new packet
    other = datagram(crypto_frame(0, handshake_client_hello(b"other.example")), dcid=b"\x0c" * 8)
    assert flow.feed(other).sni == "other.example"
    assert not flow.done


def test_a_broken_datagram_is_dropped_and_the_flow_goes_on():
    hello = handshake_client_hello(b"resilient.example.com", extensions_after=(PADDING_EXTENSION,))
    flow = InitialReassembler()
    assert flow.feed(datagram(crypto_frame(0, hello[:200]))) is None
    forged = bytearray(datagram(crypto_frame(200, b"\xff" * (len(hello) - 200))))
    forged[-1] ^= 1
    with pytest.raises(QuicError, match="authentication"):
        flow.feed(bytes(forged))
    assert not flow.done
    assert flow.feed(datagram(crypto_frame(200, hello[200:]), pn=1)).sni == "resilient.example.com"


def test_a_ring_buffer_may_hand_over_a_bytearray():
    assert InitialReassembler().feed(bytearray(RFC9001_CLIENT_INITIAL)) == EXAMPLE_COM_V1


# --- what is not a client Initial: None -----------------------------------------

@pytest.mark.parametrize("data", [
    b"", b"\xc0", b"\xc0\x00\x00\x00",
    short_header_packet(),
    b"\x00" * 1200,                                                  # DNS, WireGuard, ... start low
    b"\xc0\x1a\x2a\x3a\x4a" + RFC9001_CLIENT_INITIAL[5:],            # a grease version: not read
    b"\xc0\x00\x00\x00\x00" + RFC9001_CLIENT_INITIAL[5:],            # version negotiation
    initial_packet(crypto_frame(0, handshake_client_hello()), packet_type=HANDSHAKE_TYPE[QUIC_V1]),
], ids=["empty", "one-byte", "no-version", "short-header", "zeros", "grease", "version-0", "handshake-only"])
def test_what_is_not_a_client_initial_gives_none(data):
    assert client_hello_from_datagram(data) is None


def test_a_v2_packet_labelled_v1_fails_authentication():
    # v1 numbers the Initial type 0b00: keep the protected low bits of the first byte.
    first = 0xC0 | RFC9369_CLIENT_INITIAL[0] & 0x0F
    relabelled = bytes([first]) + QUIC_V1.to_bytes(4, "big") + RFC9369_CLIENT_INITIAL[5:]
    with pytest.raises(QuicError):
        client_hello_from_datagram(relabelled)


# --- what claims to be one but is broken: QuicError ------------------------------

def test_every_truncation_of_the_rfc_packet_is_refused():
    for cut in range(5, len(RFC9001_CLIENT_INITIAL)):
        with pytest.raises(QuicError):
            client_hello_from_datagram(RFC9001_CLIENT_INITIAL[:cut])


def test_every_single_byte_change_is_refused_or_ignored():
    """Authentication leaves two outcomes: QuicError, or None where the change
    makes the packet something else (another version or packet type)."""
    for position in range(len(RFC9001_CLIENT_INITIAL)):
        changed = bytearray(RFC9001_CLIENT_INITIAL)
        changed[position] ^= 0x21
        try:
            assert client_hello_from_datagram(bytes(changed)) is None, position
        except QuicError:
            pass


@pytest.mark.parametrize("hello, message", [
    (b"\x02\x00\x00\x04abcd", "does not start with a ClientHello"),
    (handshake_client_hello(b"a.example", extensions_after=(sni_extension(b"b.example"),)), "appears twice"),
    (handshake_client_hello(None, extensions_after=(sni_extension(b"a.example", name_type=1),)), "not a host name"),
    (handshake_client_hello(None, extensions_after=(sni_extension(b"caf\xc3\xa9.example"),)), "not a host name"),
    (handshake_client_hello(None, extensions_after=(sni_extension(b""),)), "not a host name"),
    (handshake_client_hello(b"a.example", extensions_len_delta=-1), "truncated|after"),
    (handshake_client_hello(None, extensions_after=(sni_extension(b"a.example", list_len_delta=1),)), "truncated"),
], ids=["server-hello", "two-names", "name-type", "not-ascii", "empty-name", "extensions-length", "list-length"])
def test_malformed_client_hellos_are_refused_and_end_their_connection(hello, message):
    flow = InitialReassembler()
    with pytest.raises(QuicError, match=message):
        flow.feed(datagram(crypto_frame(0, hello)))
    assert flow.feed(RFC9001_CLIENT_INITIAL) is None                 # the same connection (RFC_DCID): ended
    assert flow.feed(datagram(crypto_frame(0, handshake_client_hello()), dcid=b"\x0c" * 8)).sni == "example.com"


@pytest.mark.parametrize("fake", ["a-partial-hello", "a-hello-that-disagrees"])
def test_initials_of_another_connection_before_the_real_one_are_no_part_of_its_stream(fake):
    """zapret's fake Initials carry a DCID of their own, repeated byte for
    byte (--dpi-desync-repeats): whole (the next test module's concern),
    or, from a blob of a browser's first datagram, half a hello, or one
    that disagrees with the real one. The real Initial, under its own
    DCID's keys, has a stream of its own; the repeats count once."""
    real = handshake_client_hello(b"real.example", extensions_after=(PADDING_EXTENSION,))
    decoy = handshake_client_hello(b"www.google.com", extensions_after=(PADDING_EXTENSION,))
    fake_stream = decoy[:len(decoy) // 2] if fake == "a-partial-hello" else decoy[:40]
    fake_datagram = datagram(crypto_frame(0, fake_stream), dcid=b"\x0f" * 8)
    flow = InitialReassembler()
    for _ in range(MAX_DATAGRAMS + 3):
        assert flow.feed(fake_datagram) is None
    assert flow.feed(datagram(crypto_frame(0, real[:300]), dcid=b"\xa1" * 8)) is None
    assert flow.feed(datagram(crypto_frame(300, real[300:]), dcid=b"\xa1" * 8, pn=1)).sni == "real.example"


@pytest.mark.parametrize("fake", ["a-partial-hello", "a-hello-that-disagrees", "a-whole-hello"])
@pytest.mark.parametrize("seed", range(2))
def test_an_initial_of_another_connection_between_the_datagrams_of_a_hello_is_no_part_of_it(fake, seed):
    """Chrome's post-quantum hello takes two datagrams, its CRYPTO frames
    shuffled across both; a fake of another DCID between them (or a real
    second connection's Initial) has its own stream, and a whole one its own
    name, which comes first: the flow weighs both (quic_flows.py)."""
    first, second = two_datagram_hello(b"real.example", b"\xa1" * 8, seed)
    decoy = handshake_client_hello(b"www.google.com", extensions_after=(PADDING_EXTENSION,))
    fake_stream = {"a-partial-hello": decoy[:len(decoy) // 2], "a-hello-that-disagrees": decoy[:40],
                   "a-whole-hello": decoy}[fake]
    between = datagram(crypto_frame(0, fake_stream), dcid=b"\x0f" * 8)
    fake_hello = ClientHelloInfo("www.google.com", False, QUIC_V1) if fake == "a-whole-hello" else None
    assert feed_all([first, between, second]) == [None, fake_hello, ClientHelloInfo("real.example", False, QUIC_V1)]


def test_broken_fakes_ahead_of_a_two_datagram_hello_end_only_their_own_connections():
    """More broken fake datagrams than a connection may take (half a hello
    over and over, a hello that disagrees with itself), then the real
    hello of two datagrams, a fake between them."""
    fakes = broken_fakes(b"www.google.com")
    assert len(set(fakes)) > MAX_DATAGRAMS
    first, second = two_datagram_hello(b"real.example", b"\xa1" * 8)
    flow = InitialReassembler()
    for fake in fakes:
        try:
            assert flow.feed(fake) is None
        except QuicError:
            pass
    assert flow.feed(first) is None
    assert flow.feed(fakes[-1]) is None
    assert flow.feed(second).sni == "real.example"


def test_fakes_of_more_connections_than_a_flow_gathers_give_way_oldest_first():
    """Half hellos of MAX_STREAMS connections ahead of the real one, and of
    MAX_STREAMS - 1 more between its datagrams: the oldest gives way each
    time, and the real hello is the oldest only after the last of them."""
    decoy = handshake_client_hello(b"www.google.com", extensions_after=(PADDING_EXTENSION,))
    fakes = [datagram(crypto_frame(0, decoy[:100]), dcid=bytes([0xe0 + index]) * 8)
             for index in range(2 * MAX_STREAMS - 1)]
    first, second = two_datagram_hello(b"real.example", b"\xa1" * 8)
    results = feed_all([*fakes[:MAX_STREAMS], first, *fakes[MAX_STREAMS:], second])
    assert results[-1].sni == "real.example"
    assert results[:-1] == [None] * (len(results) - 1)
    # One more connection between, and the real hello has given way.
    assert feed_all([first, *fakes[:MAX_STREAMS], second])[-1] is None


def test_fakes_claiming_the_most_bytes_give_way_and_a_flows_buffers_stay_bounded():
    """One byte of CRYPTO data at the end of a stream's room claims all of
    it: fakes of that kind between the datagrams of a hello hold memory
    without sending it. The largest give way (never the real hello's
    little), and the flow's buffers stay within MAX_FLOW_CRYPTO_BYTES, for
    the data and which bytes arrived."""
    first, second = two_datagram_hello(b"real.example", b"\xa1" * 8)
    hoarders = [datagram(crypto_frame(MAX_CRYPTO_BYTES - 1, b"x"), dcid=bytes([0xd0 + index]) * 8)
                for index in range(MAX_STREAMS - 1)]
    flow = InitialReassembler()
    tracemalloc.start()
    try:
        assert [flow.feed(datagram_) for datagram_ in [first, *hoarders]] == [None] * MAX_STREAMS
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * MAX_FLOW_CRYPTO_BYTES + 16 * 1024          # objects, digests and keys besides
    assert flow.feed(second).sni == "real.example"


def worst_flow(index: int) -> list[bytes]:
    """A flow's Initials within the default window that make it hold the
    most: one connection claiming MAX_CRYPTO_BYTES, the others
    HELLO_BYTES_SAFE each (one byte at the end of the room), and the rest of
    the window's datagrams read, spread over them so that none ends."""
    dcids = [bytes([0xd0 + stream]) + index.to_bytes(7, "big") for stream in range(MAX_STREAMS)]
    claims = [datagram(crypto_frame((MAX_CRYPTO_BYTES if stream == 0 else HELLO_BYTES_SAFE) - 1, b"x"), dcid=dcid)
              for stream, dcid in enumerate(dcids)]
    return claims + [datagram(crypto_frame(0, b"\x01"), dcid=dcids[pn % MAX_STREAMS], pn=pn + 1)
                     for pn in range(DEFAULT_WINDOW_PACKETS - MAX_STREAMS)]


def half_sent_browser_hello(index: int) -> list[bytes]:
    """The first datagram of a browser's (post-quantum) hello of two."""
    return two_datagram_hello(b"www.example.com", index.to_bytes(8, "big"), seed=index)[:1]


@pytest.mark.parametrize("make_flow, measured", [(worst_flow, 97_500), (half_sent_browser_hello, 3_700)],
                         ids=["worst", "half-sent-browser-hello"])
def test_a_reassembler_counts_the_bytes_it_holds(make_flow, measured):
    """``held``, what the controller's budget for pending flows adds up
    (quic_flows.PENDING_BYTES_MAX), is what tracemalloc finds the
    reassembly holds, or a little more, never less; ``measured`` is
    tracemalloc's figure per flow, given in docs/operations.md."""
    flows = [make_flow(index) for index in range(100)]
    keys = [index.to_bytes(40, "big") for index in range(len(flows))]
    tracemalloc.start()
    try:
        pending = {}
        for key, datagrams in zip(keys, flows):
            reassembler = pending[key] = InitialReassembler()
            assert [reassembler.feed(datagram_) for datagram_ in datagrams] == [None] * len(datagrams)
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    counted = sum(reassembler.held for reassembler in pending.values())
    assert 0.95 * measured < held / len(flows) < 1.05 * measured
    assert held <= counted < 1.25 * held


def test_after_a_retry_the_client_sends_its_hello_again_under_the_new_id():
    """A Retry (RFC 9000 section 8.1) answers the first datagram of a hello
    of two: the client sends both again, to the Retry's ID, with its token,
    under that ID's keys."""
    hello = handshake_client_hello(b"retried.example", extensions_after=(extension(0x0015, bytes(1200)),))
    before_retry, _lost = two_datagrams_of_shuffled_pieces(hello, 0, dcid=b"\x0a" * 8)
    again = two_datagrams_of_shuffled_pieces(hello, 1, dcid=b"\x0b" * 8, token=b"retry-token")
    assert feed_all([before_retry, *again]) == [None, None, ClientHelloInfo("retried.example", False, QUIC_V1)]


def test_crypto_frames_that_disagree_end_their_connection():
    hello = handshake_client_hello(b"honest.example.com")
    liar = hello[:20] + b"evil" + hello[24:40]
    flow = InitialReassembler()
    assert flow.feed(datagram(crypto_frame(0, hello[:40]))) is None
    with pytest.raises(QuicError, match="disagree"):
        flow.feed(datagram(crypto_frame(0, liar) + crypto_frame(40, hello[40:]), pn=1))
    assert flow.feed(datagram(crypto_frame(40, hello[40:]), pn=2)) is None
    assert flow.feed(datagram(crypto_frame(0, hello), dcid=b"\x0c" * 8)).sni == "honest.example.com"


def test_crypto_data_past_the_bound_ends_its_connection():
    flow = InitialReassembler()
    with pytest.raises(QuicError, match="past 16384"):
        flow.feed(datagram(crypto_frame(MAX_CRYPTO_BYTES - 2, b"abc")))
    assert flow.feed(datagram(crypto_frame(0, handshake_client_hello()), pn=1)) is None
    assert not flow.done
    with pytest.raises(QuicError, match="longer than 16384"):
        client_hello_from_datagram(datagram(crypto_frame(0, b"\x01\x00\x40\x00")))


def test_a_connection_without_a_whole_client_hello_is_given_up():
    hello = handshake_client_hello(b"slow.example.com")
    flow = InitialReassembler()
    for pn in range(MAX_DATAGRAMS - 1):
        assert flow.feed(datagram(crypto_frame(0, hello[:10]), pn=pn)) is None
    with pytest.raises(QuicError, match=f"in {MAX_DATAGRAMS} datagrams"):
        flow.feed(datagram(crypto_frame(0, hello[:10]), pn=MAX_DATAGRAMS))
    assert flow.feed(datagram(crypto_frame(10, hello[10:]), pn=MAX_DATAGRAMS + 1)) is None
    assert not flow.gathering and not flow.done


def test_a_flow_reads_a_bounded_number_of_datagrams_then_is_done():
    """An adversary's connections have no end; the work on one flow has."""
    flow = InitialReassembler()
    for index in range(MAX_FLOW_DATAGRAMS - 1):
        fake = datagram(crypto_frame(0, b"\x01\x00\x01\x00"), dcid=index.to_bytes(8, "big"))
        assert flow.feed(fake) is None
        assert flow.feed(fake) is None                              # repeats are not counted
    assert not flow.done
    assert flow.feed(RFC9001_CLIENT_INITIAL) == EXAMPLE_COM_V1       # the last one read
    assert flow.done
    assert flow.feed(datagram(crypto_frame(0, handshake_client_hello()), dcid=b"\x0c" * 8)) is None


@pytest.mark.parametrize("frames", [
    varint(0x06) + varint(0) + varint(500) + b"short",              # CRYPTO longer than the packet
    varint(0x02) + varint(1) + varint(0) + varint(2**40) + varint(0),   # ACK with endless ranges
    varint(0x1C) + varint(0) + varint(0) + varint(3000),            # CONNECTION_CLOSE reason too long
], ids=["crypto", "ack", "connection-close"])
def test_frames_running_past_the_packet_are_refused(frames):
    packet = initial_packet(frames)
    with pytest.raises(QuicError, match="frame truncated"):
        client_hello_from_datagram(packet)


# --- random input: None or QuicError, never a name ----------------------------------

def none_or_quic_error(data: bytes) -> None:
    try:
        assert client_hello_from_datagram(data) is None
    except QuicError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes(data):
    none_or_quic_error(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([QUIC_V1, QUIC_V2]), st.integers(0, 3), st.binary(max_size=1500))
def test_random_bytes_behind_a_long_header_of_a_known_version(version, packet_type, rest):
    none_or_quic_error(bytes([0xC0 | packet_type << 4]) + version.to_bytes(4, "big") + rest)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=1200))
def test_random_frames_in_a_genuine_packet(frames):
    # Garbage that authenticates: only the frame and ClientHello parsers stand guard.
    none_or_quic_error(initial_packet(frames))


# --- every version of the table -------------------------------------------------------

DRAFT_23, DRAFT_28, DRAFT_29, DRAFT_33 = 0xFF000017, 0xFF00001C, 0xFF00001D, 0xFF000021
Q043, Q046 = gquic_version("Q043"), gquic_version("Q046")
ALL_VERSIONS = sorted(VERSIONS)
VERSION_NAMES = [VERSIONS[version].name for version in ALL_VERSIONS]


@pytest.mark.parametrize("version, secret, key, iv, hp", [
    # draft-ietf-quic-tls-23 (to -28) appendix A.1: the salt of drafts 23-28
    (DRAFT_23, "fda3953aecc040e48b34e27ef87de3a6098ecf0e38b7e032c5c57bcbd5975b84",
     "af7fd7efebd21878ff66811248983694", "8681359410a70bb9c92f0420", "a980b8b4fb7d9fbc13e814c23164253d"),
    # draft-ietf-quic-tls-29 appendix A.1: the salt of drafts 29-32
    (DRAFT_29, "0088119288f1d866733ceeed15ff9d50902cf82952eee27e9d4d4918ea371d87",
     "175257a31eb09dea9366d8bb79ad80ba", "6b26114b9cba2b63a9e8dd4f", "9ddd12c994c0698b89374a9c077a3077"),
], ids=["draft-23", "draft-29"])
def test_draft_a1_client_initial_keys(version, secret, key, iv, hp):
    keys = client_initial_keys(RFC_DCID, version)
    assert (keys.secret.hex(), keys.key.hex(), keys.iv.hex(), keys.hp.hex()) == (secret, key, iv, hp)


# draft-ietf-quic-tls-29 appendix A.2: a client Initial for "server", padded to 1200 bytes.
DRAFT29_PAYLOAD = bytes.fromhex(
    "060040c4010000c003036660261ff947cea49cce6cfad687f457cf1b14531ba1"
    "4131a0e8f309a1d0b9c4000006130113031302010000910000000b0009000006"
    "736572766572ff01000100000a00140012001d00170018001901000101010201"
    "03010400230000003300260024001d00204cfdfcd178b784bf328cae793b136f"
    "2aedce005ff183d7bb1495207236647037002b0003020304000d0020001e0403"
    "05030603020308040805080604010501060102010402050206020202002d0002"
    "0101001c00024001") + bytes(962)
DRAFT29_CLIENT_INITIAL = bytes.fromhex(
    "c5ff00001d088394c8f03e5157080000449e4a95245bfb66bc5f93032b7ddd89"
    "fe0ff15d9c4f7050fccdb71c1cd80512d4431643a53aafa1b0b518b44968b18b"
    "8d3e7a4d04c30b3ed9410325b2abb2dafb1c12f8b70479eb8df98abcaf95dd8f"
    "3d1c78660fbc719f88b23c8aef6771f3d50e10fdfb4c9d92386d44481b6c52d5"
    "9e5538d3d3942de9f13a7f8b702dc31724180da9df22714d01003fc5e3d165c9"
    "50e630b8540fbd81c9df0ee63f94997026c4f2e1887a2def79050ac2d86ba318"
    "e0b3adc4c5aa18bcf63c7cf8e85f569249813a2236a7e72269447cd1c755e451"
    "f5e77470eb3de64c8849d292820698029cfa18e5d66176fe6e5ba4ed18026f90"
    "900a5b4980e2f58e39151d5cd685b10929636d4f02e7fad2a5a458249f5c0298"
    "a6d53acbe41a7fc83fa7cc01973f7a74d1237a51974e097636b6203997f921d0"
    "7bc1940a6f2d0de9f5a11432946159ed6cc21df65c4ddd1115f86427259a196c"
    "7148b25b6478b0dc7766e1c4d1b1f5159f90eabc61636226244642ee148b464c"
    "9e619ee50a5e3ddc836227cad938987c4ea3c1fa7c75bbf88d89e9ada642b2b8"
    "8fe8107b7ea375b1b64889a4e9e5c38a1c896ce275a5658d250e2d76e1ed3a34"
    "ce7e3a3f383d0c996d0bed106c2899ca6fc263ef0455e74bb6ac1640ea7bfedc"
    "59f03fee0e1725ea150ff4d69a7660c5542119c71de270ae7c3ecfd1af2c4ce5"
    "51986949cc34a66b3e216bfe18b347e6c05fd050f85912db303a8f054ec23e38"
    "f44d1c725ab641ae929fecc8e3cefa5619df4231f5b4c009fa0c0bbc60bc75f7"
    "6d06ef154fc8577077d9d6a1d2bd9bf081dc783ece60111bea7da9e5a9748069"
    "d078b2bef48de04cabe3755b197d52b32046949ecaa310274b4aac0d008b1948"
    "c1082cdfe2083e386d4fd84c0ed0666d3ee26c4515c4fee73433ac703b690a9f"
    "7bf278a77486ace44c489a0c7ac8dfe4d1a58fb3a730b993ff0f0d61b4d89557"
    "831eb4c752ffd39c10f6b9f46d8db278da624fd800e4af85548a294c1518893a"
    "8778c4f6d6d73c93df200960104e062b388ea97dcf4016bced7f62b4f062cb6c"
    "04c20693d9a0e3b74ba8fe74cc01237884f40d765ae56a51688d985cf0ceaef4"
    "3045ed8c3f0c33bced08537f6882613acd3b08d665fce9dd8aa73171e2d3771a"
    "61dba2790e491d413d93d987e2745af29418e428be34941485c93447520ffe23"
    "1da2304d6a0fd5d07d0837220236966159bef3cf904d722324dd852513df39ae"
    "030d8173908da6364786d3c1bfcb19ea77a63b25f1e7fc661def480c5d00d444"
    "56269ebd84efd8e3a8b2c257eec76060682848cbf5194bc99e49ee75e4d0d254"
    "bad4bfd74970c30e44b65511d4ad0e6ec7398e08e01307eeeea14e46ccd87cf3"
    "6b285221254d8fc6a6765c524ded0085dca5bd688ddf722e2c0faf9d0fb2ce7a"
    "0c3f2cee19ca0ffba461ca8dc5d2c8178b0762cf67135558494d2a96f1a139f0"
    "edb42d2af89a9c9122b07acbc29e5e722df8615c343702491098478a389c9872"
    "a10b0c9875125e257c7bfdf27eef4060bd3d00f4c14fd3e3496c38d3c5d1a566"
    "8c39350effbc2d16ca17be4ce29f02ed969504dda2a8c6b9ff919e693ee79e09"
    "089316e7d1d89ec099db3b2b268725d888536a4b8bf9aee8fb43e82a4d919d48"
    "43b1ca70a2d8d3f725ead1391377dcc0")


def test_draft29_a2_client_initial_gives_its_server_name():
    assert client_hello_from_datagram(DRAFT29_CLIENT_INITIAL) == ClientHelloInfo("server", False, DRAFT_29)
    assert initial_packet(DRAFT29_PAYLOAD, version=DRAFT_29, pn=2) == DRAFT29_CLIENT_INITIAL


@pytest.mark.parametrize("other", [DRAFT_28, DRAFT_33], ids=["draft-28", "draft-33"])
def test_a_draft29_packet_labelled_with_a_draft_of_another_salt_fails_authentication(other):
    relabelled = DRAFT29_CLIENT_INITIAL[:1] + other.to_bytes(4, "big") + DRAFT29_CLIENT_INITIAL[5:]
    with pytest.raises(QuicError, match="authentication"):
        client_hello_from_datagram(relabelled)


def test_fnv1a_128_reference_values():
    """The FNV reference values (the hash of Google QUIC's plaintext packets)."""
    assert fnv1a_128(b"") == 0x6C62272E07BB014262B821756295C58D
    assert fnv1a_128(b"a") == 0xD228CB696F1A8CAF78912B704E4A8964
    assert fnv1a_128(b"foobar") == 0x343E1662793C64BF6F0D3597BA446F18


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=VERSION_NAMES)
def test_a_client_initial_of_every_version_is_named(version):
    datagram_ = client_initial(version, stream_frame(version, 0, handshake_message(version, b"Www.Example.ORG.")))
    assert family(datagram_) == VERSIONS[version].family
    assert client_hello_from_datagram(datagram_) == ClientHelloInfo("www.example.org", False, version)


def large_handshake(version: int, name: bytes) -> bytes:
    """A handshake message of about 2.5 KB, as post-quantum key shares make them."""
    if VERSIONS[version].handshake is GoogleChlo:
        return chlo(name, pad_to=2500)
    return handshake_client_hello(name, extensions_after=(extension(0x0015, bytes(2300)),))


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=VERSION_NAMES)
@pytest.mark.parametrize("seed", range(2))
def test_handshake_pieces_shuffled_across_three_datagrams_of_every_version(version, seed):
    """Chrome's first flight: many small overlapping pieces, some repeated,
    shuffled and spread over three datagrams that arrive in any order."""
    rng = random.Random(seed)
    message = large_handshake(version, b"pieces.example.com")
    frames = split_crypto(message, rng, largest=120, frame=lambda offset, data: stream_frame(version, offset, data))
    rng.shuffle(frames)
    thirds = [frames[i::3] for i in range(3)]
    datagrams = [client_initial(version, b"".join(part), pn=pn) for pn, part in enumerate(thirds)]
    rng.shuffle(datagrams)
    assert feed_all(datagrams) == [None, None, ClientHelloInfo("pieces.example.com", False, version)]


def test_keys_stay_those_of_the_first_destination_connection_id():
    """After the server's first Initial the client writes the server's chosen
    ID, but keeps the keys of its own first one (RFC 9001 section 5.2)."""
    hello = handshake_client_hello(b"moved.example.com", extensions_after=(PADDING_EXTENSION,))
    first = datagram(crypto_frame(0, hello[:300]))
    second = datagram(crypto_frame(300, hello[300:]), pn=1, dcid=bytes.fromhex("f067a5502a4262b5"), key_dcid=RFC_DCID)
    assert feed_all([first, second]) == [None, ClientHelloInfo("moved.example.com", False, QUIC_V1)]


def test_version_negotiation_and_grease_are_counted_not_read_and_the_client_starts_again():
    grease, vn = long_header_datagram(0x1A2A3A4A), version_negotiation()
    unknown = long_header_datagram(0x12345678)
    assert (family(grease), family(vn), family(unknown)) == ("grease", "negotiation", "unknown")
    retry = datagram(crypto_frame(0, handshake_client_hello(b"again.example.com")), dcid=bytes(8))
    assert feed_all([grease, vn, retry]) == [None, None, ClientHelloInfo("again.example.com", False, QUIC_V1)]


def test_a_client_starting_again_in_another_version_starts_a_new_stream():
    hello = handshake_client_hello(b"second.example.com", extensions_after=(PADDING_EXTENSION,))
    draft = client_initial(DRAFT_29, crypto_frame(0, b"\x01\x00\x10\x00" + b"x" * 200))
    assert feed_all([draft, datagram(crypto_frame(0, hello))]) == \
        [None, ClientHelloInfo("second.example.com", False, QUIC_V1)]


@pytest.mark.parametrize("data, kind", [
    (bytes([0x0D]) + bytes(8) + b"Q043", "gquic"),                  # no room for a packet number and hash
    (bytes([0x0D]) + bytes(8) + b"Z043" + bytes(1200), None),       # a public header is Google's: versions Q...
    (bytes([0x4D]) + bytes(8) + b"Q043" + bytes(1200), None),       # multipath bit: not a client's first packet
], ids=["truncated", "not-q", "multipath"])
def test_what_only_looks_like_a_google_public_header(data, kind):
    assert family(data) == kind
    none_or_quic_error(data)


@pytest.mark.parametrize("version", [gquic_version("Q035"), Q043, Q046], ids=["Q035", "Q043", "Q046"])
def test_a_google_packet_with_a_wrong_hash_is_not_read(version):
    """A server drops such a packet unread (zapret's fakes rely on it), so must we."""
    frames = gquic_stream_frame(0, chlo(b"fake.example.com"), byte_order=VERSIONS[version].frames.byte_order)
    forged = bytearray(gquic_plaintext_packet(frames, version))
    forged[-1] ^= 1
    with pytest.raises(QuicError, match="hash"):
        client_hello_from_datagram(bytes(forged))
    as_server = gquic_plaintext_packet(frames, version, sender=b"Server")
    with pytest.raises(QuicError, match="hash"):
        client_hello_from_datagram(as_server)


@pytest.mark.parametrize("message, error", [
    (chlo_entries([(b"SNI\x00", b"a.example"), (b"SNI\x00", b"b.example")]), "out of order"),
    (chlo_entries([(b"VER\x00", b"Q043"), (b"SNI\x00", b"a.example")]), "out of order"),
    (b"REJ\x00" + chlo(b"a.example")[4:], "does not start with a CHLO"),
    (chlo_entries([(b"SNI\x00", b"caf\xc3\xa9.example")]), "not a host name"),
], ids=["two-names", "descending-tags", "not-chlo", "not-ascii"])
def test_malformed_chlos_are_refused(message, error):
    with pytest.raises(QuicError, match=error):
        client_hello_from_datagram(client_initial(Q043, stream_frame(Q043, 0, message)))


def test_a_chlo_without_a_name_has_none():
    assert client_hello_from_datagram(client_initial(Q046, stream_frame(Q046, 0, chlo(None)))) == \
        ClientHelloInfo(None, False, Q046)


def test_google_padding_is_a_frame_of_its_own_from_q038_and_filled_the_packet_before():
    hello = chlo(b"padded.example.com")
    for version, name in ((Q043, "padded.example.com"), (gquic_version("Q035"), None)):
        frames = b"\x00" * 30 + stream_frame(version, 0, hello)
        result = client_hello_from_datagram(client_initial(version, frames))
        assert (result.sni if result else None) == name


def test_google_handshakes_are_read_only_where_their_version_carries_them():
    """Stream 1 up to Q046, CRYPTO frames from Q050: a server reads nothing else as the handshake."""
    hello = chlo(b"where.example.com")
    q050 = gquic_version("Q050")
    assert client_hello_from_datagram(client_initial(Q043, stream_frame(q050, 0, hello))) is None
    assert client_hello_from_datagram(client_initial(q050, stream_frame(Q043, 0, hello))) is None


def test_google_stream_frames_of_other_streams_are_stepped_over():
    hello = chlo(b"stream.example.com")
    frames = gquic_stream_frame(0, b"headers", stream_id=3) + gquic_stream_frame(0, hello)
    assert client_hello_from_datagram(client_initial(Q043, frames)).sni == "stream.example.com"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ALL_VERSIONS), st.binary(max_size=1400))
def test_random_frames_in_a_genuine_packet_of_any_version(version, frames):
    none_or_quic_error(client_initial(version, frames))


# --- the data plane hands every version over: the real XDP program -------------------

QUIC_POLICY = """\
version: 1
rules:
  - {name: block-video, action: block, domains: [video.example]}
"""


def client_frame(payload: bytes, port: int) -> bytes:
    return udp_frame(payload, sport=port)


def server_frame(payload: bytes, port: int) -> bytes:
    return bytes(ether() / IP(src=SERVER_V4, dst=CLIENT_V4) / UDP(sport=443, dport=port) / Raw(payload))


@pytest.fixture(scope="module")
def quic_datapath(make_datapath):
    datapath = make_datapath(QUIC_POLICY, events=True)
    settled = {}
    flows = QuicFlows(datapath, on_settled=lambda key, _hi, hello, rule: settled.update({hello and hello.sni: rule}))
    return datapath, flows, settled


def send(datapath, frame: bytes) -> str:
    verdict = run_xdp(datapath.function.fd, frame).verdict
    datapath.consume_rings()
    return verdict


def send_all(datapath, datagrams, port: int, read_ring: str) -> None:
    """The client's datagrams through the program, the controller reading
    the ring after each ("after-each") or only after all ("at-the-end")."""
    for datagram_ in datagrams:
        if read_ring == "after-each":
            send(datapath, client_frame(datagram_, port))
        else:
            run_xdp(datapath.function.fd, client_frame(datagram_, port))
    datapath.consume_rings()


@needs_root
@pytest.mark.parametrize("version", [DRAFT_29, 0xFACEB002, Q043, Q046, gquic_version("T051")],
                         ids=["draft-29", "mvfst-27", "Q043", "Q046", "T051"])
def test_the_data_plane_hands_over_initials_of_any_version_and_obeys_the_verdict(quic_datapath, version):
    datapath, flows, settled = quic_datapath
    port = 41000 + ALL_VERSIONS.index(version)
    first = client_initial(version, stream_frame(version, 0, handshake_message(version, b"video.example")))
    assert send(datapath, client_frame(first, port)) == "pass"          # passes until the verdict is written
    assert settled["video.example"].name == "block-video"
    assert send(datapath, client_frame(b"\x40" + bytes(40), port)) == "drop"


@needs_root
def test_grease_and_version_negotiation_are_counted_and_the_flow_waits_for_the_next_version(quic_datapath):
    datapath, flows, settled = quic_datapath
    port, before = 42000, dict(flows.families)
    assert send(datapath, client_frame(long_header_datagram(0x3A4A5A6A), port)) == "pass"
    assert send(datapath, server_frame(version_negotiation(), port)) == "pass"
    hello = handshake_client_hello(b"cdn.video.example", extensions_after=(PADDING_EXTENSION,))
    v2 = datagram(crypto_frame(0, hello), version=QUIC_V2, dcid=bytes(8))
    assert send(datapath, client_frame(v2, port)) == "pass"
    assert settled["cdn.video.example"].name == "block-video"
    assert send(datapath, server_frame(b"\x40" + bytes(40), port)) == "drop"
    moved = {name: flows.families[name] - before.get(name, 0) for name in flows.families}
    assert {name: count for name, count in moved.items() if count} == {"grease": 1, "negotiation": 1, "v2": 1}


@needs_root
@pytest.mark.parametrize("linktype, headers", [
    (9, (b"\xff\x03\x00\x21", b"\x00\x21")),              # PPP, with and without HDLC framing
    (0, (b"\x02\x00\x00\x00", b"\x00\x00\x00\x02")),      # BSD loopback, AF_INET either byte order
], ids=["ppp", "bsd-loopback"])
def test_replay_reads_the_link_types_of_ndpis_quic_captures(tmp_path, linktype, headers):
    from sluice.replay import replay
    initial = client_initial(DRAFT_29, crypto_frame(0, handshake_client_hello(b"link.example")))
    capture = tmp_path / "link.pcap"
    # By hand: scapy's writer takes link type 0 for "unknown" and writes Ethernet.
    pcap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for port, header in zip((43001, 43002), headers):
        frame = header + bytes(IP(src=CLIENT_V4, dst=SERVER_V4) / UDP(sport=port, dport=443) / Raw(initial))
        pcap += struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
    capture.write_bytes(pcap)
    records, frames = replay(str(capture))
    assert frames == 2
    assert sorted((r["client_port"], r["proto"], r["name"]) for r in records) == \
        [(43001, "quic", "link.example"), (43002, "quic", "link.example")]


@needs_root
def test_rtp_is_not_taken_for_a_long_header(quic_datapath):
    """RTP's first byte is 0x80 too, but never has QUIC's fixed bit: its flows stay out of user space."""
    datapath, _flows, _settled = quic_datapath
    rtp = bytes([0x80, 0x60]) + (0x1234).to_bytes(2, "big") + bytes(range(256)) * 5
    assert family(rtp) is None
    before = datapath.counters()["quic_datagrams"]
    assert send(datapath, client_frame(rtp, 44000)) == "pass"
    assert datapath.counters()["quic_datagrams"] == before


@needs_root
@pytest.mark.parametrize("read_ring", ["after-each", "at-the-end"])
@pytest.mark.parametrize("fake_first", [True, False], ids=["fake-first", "fake-after"])
def test_a_fake_initial_of_another_connection_does_not_name_the_flow(quic_datapath, fake_first, read_ring):
    """zapret's usual QUIC strategy (--dpi-desync=fake --dpi-desync-repeats=6
    with quic_initial_www_google_com.bin): a whole, valid Initial of another
    connection (its own DCID) naming an unblocked host, repeated, on the same
    addresses and ports before the real one. The server reads both; the
    client goes on with its own. The flow obeys the stricter of the two,
    whether the controller reads the ring before the real one comes (the
    flow is named by then) or after (the flow still inspected)."""
    datapath, flows, settled = quic_datapath
    port = 45000 + 2 * fake_first + (read_ring == "at-the-end")
    fake = client_initial(QUIC_V1, crypto_frame(0, handshake_client_hello(b"www.google.com")), dcid=b"\x0f" * 8)
    real = client_initial(QUIC_V1, crypto_frame(0, handshake_client_hello(b"video.example")), dcid=b"\xa1" * 8)
    sent = [fake] * 6 + [real] if fake_first else [real] + [fake] * 6
    settled.clear()
    send_all(datapath, sent, port, read_ring)
    assert send(datapath, client_frame(short_header_packet(), port)) == "drop"
    assert settled["video.example"].name == "block-video"


@pytest.fixture(params=HOOKS)
def quic_at_hook(request, quic_datapath):
    datapath, flows, settled = quic_datapath
    return AtHook(datapath, request.param), flows, settled


@needs_root
@pytest.mark.parametrize("real_datagrams", [1, 2], ids=["one-datagram-hello", "two-datagram-hello"])
@pytest.mark.parametrize("repeats", [20, 30, 64])
def test_fake_initials_repeated_past_the_window_do_not_hide_the_real_one(quic_at_hook, repeats, real_datagrams):
    """zapret's fake (--dpi-desync-repeats=N) sent more times than the
    flow's window of datagrams (20) holds: a server reads one copy and
    drops the others, and so does sluice, at either hook: the repeats are
    not handed over again, nor spend the window, so the real hello after
    them is read."""
    datapath, flows, settled = quic_at_hook
    port = 48100 + 4 * repeats + 2 * real_datagrams + (datapath.hook == "tc")
    fake = client_initial(QUIC_V1, crypto_frame(0, handshake_client_hello(b"www.google.com")), dcid=b"\x0f" * 8)
    real = (client_initial(QUIC_V1, crypto_frame(0, handshake_client_hello(b"video.example")), dcid=b"\xa1" * 8),) \
        if real_datagrams == 1 else two_datagram_hello(b"video.example", b"\xa1" * 8)
    before = datapath.counters()
    settled.clear()
    for datagram_ in [fake] * repeats + list(real):
        assert classify(datapath, client_frame(datagram_, port)).verdict == "pass"
        datapath.consume_rings()
    assert settled["video.example"].name == "block-video"
    assert classify(datapath, client_frame(short_header_packet(), port)).verdict == "drop"
    # The first datagram is not signed: its first repeat goes over too.
    assert datapath.counters()["quic_repeats"] - before["quic_repeats"] == repeats - 2
    assert datapath.counters()["quic_datagrams"] - before["quic_datagrams"] == 2 + real_datagrams


@needs_root
@pytest.mark.parametrize("read_ring", ["after-each", "at-the-end"])
@pytest.mark.parametrize("blocked, broken_ahead, port", [("real", False, 47000), ("real", True, 47002),
                                                         ("fake-between", True, 47004)],
                         ids=["real-blocked", "real-blocked-broken-fakes-ahead", "fake-blocked-broken-fakes-ahead"])
def test_a_whole_fake_between_the_datagrams_of_a_hello_and_broken_fakes_ahead_hide_nothing(quic_datapath, blocked,
                                                                                            broken_ahead, port,
                                                                                            read_ring):
    """A whole fake Initial between the datagrams of a hello of two
    (Chrome's post-quantum hellos), and zapret's broken fakes ahead
    (broken_fakes: half hellos past a connection's count, a hello that
    disagrees): the flow obeys the strictest name, the real one's or the fake's."""
    datapath, flows, settled = quic_datapath
    port += read_ring == "at-the-end"
    real_name, fake_name = (b"video.example", b"www.google.com") if blocked == "real" else \
        (b"www.google.com", b"video.example")
    first, second = two_datagram_hello(real_name, b"\xa1" * 8)
    fake = client_initial(QUIC_V1, crypto_frame(0, handshake_client_hello(fake_name)), dcid=b"\x0f" * 8)
    settled.clear()
    send_all(datapath, [*(broken_fakes(b"www.google.com") if broken_ahead else []), first, fake, second], port,
             read_ring)
    assert send(datapath, client_frame(short_header_packet(), port)) == "drop"
    assert settled["video.example"].name == "block-video"


@needs_root
def test_a_named_flows_next_flight_is_read_without_counting_it_malformed(quic_datapath):
    """Initials stay handed over once a flow is named (for another
    connection's hello), the client's next flight among them: its Initial
    (an ACK) goes to the server's chosen DCID under the first DCID's keys.
    The controller cannot open it, and that is no fault of the client's."""
    datapath, flows, settled = quic_datapath
    port, before, pending = 46000, flows.outcomes["malformed"], set(flows.pending)
    hello = client_initial(QUIC_V1, crypto_frame(0, handshake_client_hello(b"open.example")), dcid=b"\xb2" * 8)
    next_flight = initial_packet(ack_frame(), dcid=b"\x5e" * 8, key_dcid=b"\xb2" * 8, pn=1, size=1200)
    for datagram in (hello, next_flight, next_flight):
        assert send(datapath, client_frame(datagram, port)) == "pass"
    assert "open.example" in settled
    assert flows.outcomes["malformed"] == before
    assert set(flows.pending) <= pending            # no reassembly left behind


@needs_root
def test_a_flow_of_broken_initials_waits_for_a_real_hello_until_its_window_is_spent(quic_datapath):
    """Broken Initials end their own connection only, as a real hello may
    still follow them: the flow is given up once the data plane hands over
    no more of its Initials (the window), not before."""
    datapath, flows, settled = quic_datapath
    port, before = 46100, flows.outcomes["gave_up"]
    half = handshake_client_hello(b"video.example")[:10]
    broken = [datagram(crypto_frame(0, half), pn=pn, dcid=b"\xc3" * 8) for pn in range(DEFAULT_WINDOW_PACKETS)]
    for datagram_ in broken[:-1]:
        assert send(datapath, client_frame(datagram_, port)) == "pass"
    assert flows.outcomes["gave_up"] == before
    assert send(datapath, client_frame(broken[-1], port)) == "pass"
    assert flows.outcomes["gave_up"] == before + 1
    settled.clear()
    late = client_initial(QUIC_V1, crypto_frame(0, handshake_client_hello(b"video.example")), dcid=b"\xc4" * 8)
    assert send(datapath, client_frame(late, port)) == "pass"
    assert "video.example" not in settled            # past the window: neither handed over nor read
