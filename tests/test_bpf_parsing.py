"""Every branch of the packet, TLS and HTTP parsers, in the real XDP program.

Each test opens a fresh flow, sends one client payload through
BPF_PROG_TEST_RUN and checks both the verdict and which parser outcome the
data plane counted. The policy blocks blocked.example (and below it), so a
drop proves the name was read and matched; a pass with the right counter
proves the parser took the branch under test.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest
from scapy.all import Raw

from helpers import HOOKS, AtHook, classify, judge, needs_root
from packets import (EXT_ALPN, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                     IPv6ExtHdrRouting, client_hello, extension, http_request, sni_extension,
                     split_into_records, tcp_frame, udp_frame, unknown_extensions)

pytestmark = [pytest.mark.bpf, needs_root]

LONGEST_NAME = b".".join([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61])     # 253 bytes
POLICY = f"""\
version: 1
rules:
  - name: blocked
    action: block
    domains: [blocked.example, {LONGEST_NAME.decode()}]
"""


@pytest.fixture(scope="module", params=HOOKS)
def dp(make_datapath, request):
    """The cases run at XDP and again at tc ingress: one parser, two contexts."""
    return AtHook(make_datapath(POLICY), request.param)


# --- TLS -------------------------------------------------------------------

@pytest.mark.parametrize("hello", [
    client_hello(b"blocked.example"),
    client_hello(b"blocked.example", grease=False),
    client_hello(b"blocked.example", session_id=b""),
    client_hello(b"blocked.example", record_version=0x0303),
    client_hello(b"blocked.example", extensions_before=(extension(EXT_ALPN, b"\x00\x03\x02h2"),
                                                        extension(0xFE0D, b"\x00" * 200),   # ECH-sized
                                                        extension(0x1A1A, b"\x00"))),
    client_hello(b"blocked.example", extensions_after=(extension(21, b"\x00" * 300),)),   # padding
    client_hello(b"cdn.BLOCKED.example."),
], ids=["grease", "no-grease", "no-session-id", "record-3.3", "unknown-ext-first", "padding-after",
        "case-and-trailing-dot"])
def test_sni_found_and_blocked(dp, hello):
    judgement = judge(dp, hello)
    assert judgement.verdict == "drop"
    offers_ech = b"\xfe\x0d" in hello
    assert judgement.moved() == {"tls_sni_found": 1, "flows_tls": 1, **({"tls_ech": 1} if offers_ech else {})}


@pytest.mark.parametrize("where", ["before", "after"])
def test_an_ech_hello_is_matched_by_its_outer_name_and_counted(dp, where):
    """Encrypted Client Hello hides the real name; the outer (cover) name is
    what a middlebox sees and matches, wherever the extension sits."""
    ech = (extension(0xFE0D, b"\x00" * 200),)
    hello = client_hello(b"blocked.example", **{f"extensions_{where}": ech})
    judgement = judge(dp, hello)
    assert judgement.verdict == "drop"
    assert judgement.moved() == {"tls_sni_found": 1, "tls_ech": 1, "flows_tls": 1}


@pytest.mark.parametrize("count", [63, 300])
def test_the_name_behind_hundreds_of_extensions_is_read(dp, count):
    """Past the 64 extensions walked one by one, the rest are skipped over
    for server_name (tls_skip_extensions()), ECH noted on the way."""
    ech = (extension(0xFE0D, b"\x00" * 8),)
    judgement = judge(dp, client_hello(b"blocked.example", extensions_before=unknown_extensions(count) + ech))
    assert judgement.verdict == "drop"
    assert judgement.moved() == {"tls_sni_found": 1, "tls_ech": 1, "flows_tls": 1}


@pytest.mark.parametrize("port", [443, 8443, 25, 80])
def test_clienthello_is_recognised_on_any_port(dp, port):
    assert judge(dp, client_hello(b"blocked.example"), dport=port).verdict == "drop"


def test_sni_as_the_only_extension(dp):
    hello = client_hello(b"blocked.example", grease=False)
    assert judge(dp, hello).verdict == "drop"


def test_longest_name_is_read_whole(dp):
    assert len(LONGEST_NAME) == 253
    assert judge(dp, client_hello(LONGEST_NAME)).verdict == "drop"
    assert judge(dp, client_hello(b"x" + LONGEST_NAME[1:])).verdict == "pass"


def test_other_names_pass(dp):
    judgement = judge(dp, client_hello(b"notblocked.example"))
    assert judgement.verdict == "pass"
    assert judgement.moved() == {"tls_sni_found": 1, "flows_tls": 1}


@pytest.mark.parametrize("hello", [
    client_hello(None),
    client_hello(None, no_extensions=True),
], ids=["extensions-without-sni", "no-extensions"])
def test_no_sni(dp, hello):
    judgement = judge(dp, hello)
    assert judgement.verdict == "pass"
    assert judgement.moved() == {"tls_no_sni": 1, "flows_tls": 1}


def test_truncated_at_every_byte_never_blocks(dp):
    """Cut anywhere, the hello is truncated (or not yet TLS), never blocked or malformed."""
    hello = client_hello(b"blocked.example")
    name_end = hello.index(b"blocked.example") + len(b"blocked.example")
    for cut in range(1, len(hello)):
        judgement = judge(dp, hello[:cut])
        if cut >= name_end:
            assert judgement.verdict == "drop", cut     # the name is all there already
            continue
        assert judgement.verdict == "pass", cut
        moved = judgement.moved()
        assert moved in ({"tls_truncated": 1}, {"not_tls": 1}), (cut, moved)
        if cut >= 3:
            assert moved == {"tls_truncated": 1}, (cut, moved)


def test_hello_split_over_two_records_in_one_segment_is_reassembled(dp):
    judgement = judge(dp, split_into_records(client_hello(b"blocked.example"), 40))
    assert judgement.verdict == "drop"
    assert judgement.moved() == {"tls_truncated": 1, "tls_reassembled": 1, "tls_sni_found": 1, "flows_tls": 1}


@pytest.mark.parametrize("hello", [
    client_hello(b"blocked.example", session_id_len=33, session_id=bytes(33)),
    client_hello(b"blocked.example", cipher_suites=b"\x13\x01\x13"),            # odd length
    client_hello(b"blocked.example", cipher_suites=b""),
    client_hello(b"blocked.example", extensions_len_delta=+10),
    client_hello(b"blocked.example", sni_extension_bytes=sni_extension(b"blocked.example", list_len_delta=+5)),
    client_hello(b"blocked.example", sni_extension_bytes=sni_extension(b"blocked.example", name_len_delta=+3)),
    client_hello(b"blocked.example", sni_extension_bytes=sni_extension(b"blocked.example", name_type=1)),
    client_hello(b"", sni_extension_bytes=sni_extension(b"")),
    client_hello(b"x" * 256),
    client_hello(b"blocked.example", handshake_len_delta=-60),
], ids=["session-id-33", "odd-ciphers", "no-ciphers", "extensions-past-hello", "sni-list-past-extension",
        "name-past-list", "name-type-1", "zero-length-sni", "256-byte-name", "handshake-shorter-than-body"])
def test_malformed_hellos_are_counted_and_never_blocked(dp, hello):
    judgement = judge(dp, hello)
    assert judgement.verdict == "pass"
    assert judgement.moved() == {"tls_malformed": 1}


def test_cut_before_the_sni_extension_is_truncated(dp):
    hello = client_hello(b"blocked.example", extensions_before=(extension(21, b"\x00" * 100),))
    cut = hello.index(b"\x00" * 100) + 50
    assert judge(dp, hello[:cut]).moved() == {"tls_truncated": 1}


def test_cut_inside_the_last_extension_without_sni_is_no_sni(dp):
    """The lengths already read show no server_name can follow: no need for the rest."""
    hello = client_hello(None, extensions_after=(extension(21, b"\x00" * 100),))
    assert judge(dp, hello[:-50]).moved() == {"tls_no_sni": 1, "flows_tls": 1}


@pytest.mark.parametrize("payload", [
    b"\x16\x03\x05" + bytes(60),                 # TLS version 3.5 does not exist
    b"\x16\x02\x01" + bytes(60),
    b"\x17\x03\x03" + bytes(60),                 # application data
    b"\x16\x03\x03\x00\x30\x02" + bytes(60),     # a ServerHello
    b"SSH-2.0-OpenSSH_9.2\r\n",
    bytes(range(256)),
], ids=["version-3.5", "version-2", "appdata", "serverhello", "ssh", "garbage"])
def test_not_tls_not_http(dp, payload):
    judgement = judge(dp, payload)
    assert judgement.verdict == "pass"
    assert judgement.moved() == {"not_tls": 1}


# --- HTTP ------------------------------------------------------------------

@pytest.mark.parametrize("request_bytes", [
    http_request("blocked.example"),
    http_request("blocked.example", method="POST"),
    http_request("blocked.example", method="PROPFIND"),
    http_request("blocked.example", method="M-SEARCH", target="*"),
    http_request("blocked.example", host_header="HOST"),
    http_request("blocked.example", host_header="host"),
    http_request("blocked.example", host_header="HoSt"),
    http_request("blocked.example", separator=":"),
    http_request("blocked.example", separator=":   "),
    http_request("blocked.example", separator=":\t "),
    http_request("blocked.example:8080"),
    http_request("blocked.example   "),
    http_request("BLOCKED.Example."),
    http_request("blocked.example", newline="\n"),
    http_request("blocked.example", version="HTTP/1.0"),
    http_request("blocked.example", before=("User-Agent: test", "Accept: */*", "X-A: 1", "X-B: 2")),
    http_request("blocked.example", target="/" + "a" * 1200),
], ids=["get", "post", "propfind", "m-search", "HOST", "host", "HoSt", "no-ows", "spaces", "tab",
        "port", "trailing-ows", "case-dot", "bare-lf", "http-1.0", "host-on-line-5", "long-target"])
def test_http_host_found_and_blocked(dp, request_bytes):
    judgement = judge(dp, request_bytes, dport=80)
    assert judgement.verdict == "drop"
    assert judgement.moved() == {"http_host_found": 1, "flows_http": 1}


def test_ipv6_literal_host_loses_brackets_and_port(dp):
    judgement = judge(dp, http_request("[2001:db8::1]:8080"), dport=80)
    assert judgement.verdict == "pass"
    assert judgement.moved() == {"http_host_found": 1, "flows_http": 1}


def test_request_without_host(dp):
    judgement = judge(dp, http_request(None, version="HTTP/1.0"), dport=80)
    assert judgement.verdict == "pass"
    assert judgement.moved() == {"http_no_host": 1, "flows_http": 1}


def test_empty_host_is_no_host(dp):
    assert judge(dp, http_request(""), dport=80).moved() == {"http_no_host": 1, "flows_http": 1}


def test_request_cut_before_host_is_truncated(dp):
    request = http_request("blocked.example", before=("User-Agent: test",))
    cut = request[:request.index(b"Host")]
    judgement = judge(dp, cut, dport=80)
    assert judgement.verdict == "pass"
    assert judgement.moved() == {"http_truncated": 1}


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/2.0\r\nHost: blocked.example\r\n\r\n",
    b"GET / SIP/2.0\r\nHost: blocked.example\r\n\r\n",
    b"GET/ HTTP/1.1\r\nHost: blocked.example\r\n\r\n",
    b" GET / HTTP/1.1\r\nHost: blocked.example\r\n\r\n",
    b"EHLO blocked.example\r\n",
], ids=["http2-version", "sip", "no-space", "leading-space", "smtp"])
def test_not_an_http_1_request(dp, payload):
    judgement = judge(dp, payload, dport=80)
    assert judgement.verdict == "pass"
    assert judgement.moved() == {"not_tls": 1}


def test_host_in_a_later_header_name_is_not_host(dp):
    request = http_request("open.example", before=("X-Host: blocked.example", "Ghost: blocked.example"))
    assert judge(dp, request, dport=80).verdict == "pass"


# --- link and network layers ------------------------------------------------

@pytest.mark.parametrize("options", [
    dict(vlans=("q",)),
    dict(vlans=("ad", "q")),
    dict(ip_options=[b"\x01" * 4]),
    dict(ip_options=[b"\x01" * 40]),
    dict(v6=True),
    dict(v6=True, ext_headers=(IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt())),
], ids=["802.1q", "qinq", "ihl-6", "ihl-15", "ipv6", "ipv6-ext-headers"])
def test_headers_are_walked_to_the_payload(dp, options):
    judgement = judge(dp, client_hello(b"blocked.example"), **options)
    assert judgement.verdict == "drop"
    assert judgement.moved() == {"tls_sni_found": 1, "flows_tls": 1}


def test_ipv6_fragments_pass_while_gathered(dp):
    """The first fragment of a datagram whose others never come (tests/test_bpf_fragments.py has the rest)."""
    judgement = judge(dp, client_hello(b"blocked.example"), syn=False, v6=True,
                      ext_headers=(IPv6ExtHdrFragment(offset=0, m=1),))
    assert judgement.verdict == "pass"
    assert judgement.moved() == {"fragments": 1, "frag_datagrams": 1}


def test_later_ipv4_fragments_pass_while_gathered(dp):
    from scapy.all import IP, Ether
    fragment = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                     IP(src="192.0.2.2", dst="198.51.100.2", proto=6, frag=10) / Raw(b"x" * 100))
    before = dp.counters()
    assert classify(dp, fragment).verdict == "pass"
    after = dp.counters()
    assert after["skipped"] == before["skipped"]
    assert after["fragments"] == before["fragments"] + 1


def test_non_ip_and_udp_pass(dp):
    from scapy.all import ARP, Ether
    before = dp.counters()
    assert classify(dp, bytes(Ether(src="02:00:00:00:00:01") / ARP())).verdict == "pass"
    assert classify(dp, udp_frame(client_hello(b"blocked.example"))).verdict == "pass"
    after = dp.counters()
    assert after["skipped"] == before["skipped"] + 1
    assert after["tls_sni_found"] == before["tls_sni_found"]


def test_ethernet_padding_is_not_payload(dp):
    """A bare ACK padded to the 60-byte minimum carries no payload: nothing is inspected."""
    frame = tcp_frame(b"", flags="A")
    padded = frame + b"GET " + bytes(60 - len(frame) - 4)
    judgement_before = dp.counters()
    assert classify(dp, padded).verdict == "pass"
    moved = {k: v - judgement_before[k] for k, v in dp.counters().items() if v != judgement_before[k]}
    assert moved == {"packets": 1}


@pytest.mark.parametrize("cut", [14, 20, 30, 34, 40, 50])   # test-run needs a full Ethernet header
def test_truncated_headers_pass(dp, cut):
    if dp.hook == "tc" and cut < 34:
        pytest.skip("an skb's test-run refuses a frame without its whole IPv4 header (EINVAL)")
    frame = tcp_frame(client_hello(b"blocked.example"))[:cut]
    assert classify(dp, frame).verdict == "pass"


# --- never blocks what no rule names ------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(min_size=1, max_size=1400))
def test_random_payloads_never_block(dp, payload):
    assert judge(dp, payload).verdict == "pass"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_hellos_block_only_when_the_name_survives(dp, data):
    """Flip bytes of a hello for an unblocked name: whatever the parser makes of it,
    it never blocks, because no rule names anything it could read."""
    hello = bytearray(client_hello(b"open.example"))
    for _ in range(data.draw(st.integers(1, 8))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    assert judge(dp, bytes(hello)).verdict == "pass"


CHANGE_CIPHER_SPEC = b"\x14\x03\x03\x00\x01\x01"


@pytest.mark.parametrize("prefix", [CHANGE_CIPHER_SPEC, CHANGE_CIPHER_SPEC * 2, b"\x14\x03\x01\x00\x03abc"],
                         ids=["one-ccs", "two-ccs", "ccs-3-bytes"])
def test_change_cipher_spec_records_before_the_hello_are_stepped_over(dp, prefix):
    judgement = judge(dp, prefix + client_hello(b"blocked.example"))
    assert judgement.verdict == "drop"
    assert judgement.moved() == {"tls_sni_found": 1, "flows_tls": 1}


def test_a_change_cipher_spec_claiming_more_than_the_packet_is_not_followed(dp):
    judgement = judge(dp, b"\x14\x03\x03\x40\x00\x01" + client_hello(b"blocked.example"))
    assert judgement.verdict == "pass"
    assert judgement.moved() == {"not_tls": 1}


@pytest.mark.parametrize("request_bytes, verdict", [
    (b"GET http://user:pw@Blocked.Example:8080/x?q HTTP/1.1\r\nHost: open.example\r\n\r\n", "drop"),
    (b"GET https://open.example/ HTTP/1.1\r\nHost: blocked.example\r\n\r\n", "pass"),
    (b"GET http://[2001:db8::1]:80/ HTTP/1.1\r\nHost: blocked.example\r\n\r\n", "pass"),
    (b"OPTIONS * HTTP/1.1\r\nHost: blocked.example\r\n\r\n", "drop"),
    (b"CONNECT blocked.example:443 HTTP/1.1\r\nHost: open.example:443\r\n\r\n", "drop"),
    (b"CONNECT open.example:443 HTTP/1.1\r\nHost: blocked.example:443\r\n\r\n", "pass"),
    (b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: blocked.example\r\n\r\n", "pass"),
    (b"connect blocked.example:443 HTTP/1.1\r\nHost: open.example\r\n\r\n", "pass"),
], ids=["absolute-form-with-userinfo-and-port", "absolute-form-wins-over-host", "ipv6-literal-target",
        "asterisk-form-uses-host", "connect-target-wins-over-host", "connect-target-allowed",
        "connect-to-an-ipv6-literal", "lower-case-connect-is-another-method"])
def test_absolute_form_target_names_the_request(dp, request_bytes, verdict):
    """Servers take the host of an absolute-form target over the Host field
    (RFC 9112 3.2.2; nginx does), and a proxy connects a CONNECT to its
    target (3.2.3), so sluice must too, or a client could name an allowed
    host in Host and be served a blocked one."""
    judgement = judge(dp, request_bytes)
    assert judgement.verdict == verdict
    assert judgement.moved() == {"http_host_found": 1, "flows_http": 1}
