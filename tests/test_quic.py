"""QUIC Initial packets: RFC vectors, a real client's datagrams, and hostile ones."""

import random

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.quic import (MAX_CRYPTO_BYTES, MAX_DATAGRAMS, QUIC_V1, QUIC_V2, ClientHelloInfo,
                             InitialReassembler, QuicError, client_hello_from_datagram, client_initial_keys)
from packets import extension, sni_extension
from quic_packets import (DATAGRAM_MIN, HANDSHAKE_TYPE, PING, RFC_DCID, ack_frame, connection_close,
                          crypto_frame, handshake_client_hello, initial_packet, short_header_packet,
                          split_crypto, varint)

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

EXAMPLE_COM_V1 = ClientHelloInfo(sni="example.com", ech=False, version=QUIC_V1)


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
    assert client_hello_from_datagram(packet) == ClientHelloInfo(sni="example.com", ech=False, version=version)


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
    assert client_hello_from_datagram(datagrams[0]) == ClientHelloInfo("www.example.org", False, version)


def test_aioquic_name_with_a_trailing_dot_is_normalised():
    (first,) = aioquic_datagrams("Media.Example.NET.")
    assert client_hello_from_datagram(first).sni == "media.example.net"


@pytest.mark.parametrize("order", ["in-order", "reversed"])
@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2], ids=["v1", "v2"])
def test_aioquic_client_hello_spanning_datagrams(version, order):
    # Long ALPN names make the ClientHello outgrow one datagram, as
    # post-quantum key shares do for browsers.
    datagrams = aioquic_datagrams("big.example.com", version,
                                  alpn=("h3", *(f"proto-{i:02d}-" + "x" * 190 for i in range(8))))
    assert len(datagrams) >= 2
    assert client_hello_from_datagram(datagrams[0]) is None        # the first alone is not enough
    if order == "reversed":
        datagrams.reverse()
    results = feed_all(datagrams)
    assert results[:-1] == [None] * (len(datagrams) - 1)
    assert results[-1] == ClientHelloInfo("big.example.com", False, version)


# --- reassembly ----------------------------------------------------------------

def two_datagrams_of_shuffled_pieces(stream: bytes, seed: int, **options) -> list[bytes]:
    """A Chrome-like first flight: ``stream`` as many small CRYPTO frames, some
    overlapping or repeated, shuffled with PING and PADDING frames, over two
    datagrams."""
    rng = random.Random(seed)
    frames = split_crypto(stream, rng) + [PING] * 5 + [b"\x00" * 3] * 5
    rng.shuffle(frames)
    half = len(frames) // 2
    return [datagram(b"".join(frames[:half]), pn=0, **options),
            datagram(b"".join(frames[half:]), pn=1, **options)]


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


def test_the_result_comes_once_then_the_flow_is_done():
    flow = InitialReassembler()
    assert flow.feed(RFC9001_CLIENT_INITIAL) == EXAMPLE_COM_V1
    assert flow.done
    assert flow.feed(RFC9001_CLIENT_INITIAL) is None


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
def test_malformed_client_hellos_are_refused_and_end_the_flow(hello, message):
    flow = InitialReassembler()
    with pytest.raises(QuicError, match=message):
        flow.feed(datagram(crypto_frame(0, hello)))
    assert flow.done
    assert flow.feed(RFC9001_CLIENT_INITIAL) is None


def test_crypto_frames_that_disagree_end_the_flow():
    hello = handshake_client_hello(b"honest.example.com")
    liar = hello[:20] + b"evil" + hello[24:40]
    flow = InitialReassembler()
    assert flow.feed(datagram(crypto_frame(0, hello[:40]))) is None
    with pytest.raises(QuicError, match="disagree"):
        flow.feed(datagram(crypto_frame(0, liar) + crypto_frame(40, hello[40:]), pn=1))
    assert flow.done


def test_crypto_data_past_the_bound_ends_the_flow():
    flow = InitialReassembler()
    with pytest.raises(QuicError, match="past 16384"):
        flow.feed(datagram(crypto_frame(MAX_CRYPTO_BYTES - 2, b"abc")))
    assert flow.done
    with pytest.raises(QuicError, match="longer than 16384"):
        client_hello_from_datagram(datagram(crypto_frame(0, b"\x01\x00\x40\x00")))


def test_a_flow_without_a_whole_client_hello_is_given_up():
    hello = handshake_client_hello(b"slow.example.com")
    flow = InitialReassembler()
    for pn in range(MAX_DATAGRAMS - 1):
        assert flow.feed(datagram(crypto_frame(0, hello[:10]), pn=pn)) is None
    with pytest.raises(QuicError, match=f"in {MAX_DATAGRAMS} datagrams"):
        flow.feed(datagram(crypto_frame(0, hello[:10]), pn=MAX_DATAGRAMS))
    assert flow.done


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
