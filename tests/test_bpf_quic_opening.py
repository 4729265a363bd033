"""A QUIC flow judged at its first Initial (bpf/quic.h quic_judged_at_opening()).

Where no rule that may apply to a QUIC flow looks at its hello (no name,
ECH or ALPN condition, no `quic: block`), the rule the controller would
choose once it had read the hello is the one the first datagram's facts
choose: the data plane judges the flow there, as a flow of protocol quic.
A block then drops the client's first Initial, as the documented systems
did (policies/quic-block-2022.yaml), not its second flight a round trip
later. Only versions the controller reads (controller/quic.py VERSIONS)
are judged so; a policy whose rules may look at the hello leaves QUIC to
the controller. `sluice explain` (Policy.decide) says the same.
"""

import socket

import pytest

from helpers import HOOKS, AtHook, classify, needs_root
from sluice.policy import load_policy
from sluice.precedence import judges_quic_at_opening
from sluice.quic import QUIC_V1, QUIC_V2
from sluice.quic_flows import QuicFlows
from sluice.replay import replay

from packets import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, ip_fragments, udp_frame, write_capture
from quic_packets import (client_initial, gquic_version, handshake_message, initial_packet, crypto_frame,
                          handshake_client_hello, short_header_packet, stream_frame)

pytestmark = [pytest.mark.bpf, needs_root]

QUIC_BLOCK = """\
version: 1
destinations:
  lab-cdn:
    prefixes: [198.51.100.128/25, "2001:db8:cd::/48"]
rules:
  - name: quic-cdn-allow
    action: allow
    protocol: quic
    destination: lab-cdn
  - name: quic-drop
    action: block
    protocol: quic
"""
# The same, with a rule that may apply to a QUIC flow by its name: the controller judges it.
WITH_A_NAMED_RULE = QUIC_BLOCK + """\
  - name: video-throttle
    action: throttle
    rate: 1mbit
    domains: [video.example]
"""
# Or by its hello's ALPN.
WITH_AN_ALPN_RULE = QUIC_BLOCK + """\
  - name: h3-freeze
    action: freeze
    protocol: quic
    tls: {alpn: [h3]}
"""
KNOWN = {"v1": QUIC_V1, "v2": QUIC_V2, "draft-29": 0xFF00001D, "mvfst-27": 0xFACEB002,
         "Q043": gquic_version("Q043"), "Q046": gquic_version("Q046"), "T051": gquic_version("T051")}
UNREAD_VERSIONS = {"grease": 0x1A2A3A4A, "unknown": 0x00000BAD}
CDN_V4, CDN_V6 = "198.51.100.200", "2001:db8:cd::2"
ports = iter(range(52000, 56000))


@pytest.fixture(scope="module", params=HOOKS)
def quic_block(make_datapath, request):
    dp = make_datapath(QUIC_BLOCK, events=True)
    return AtHook(dp, request.param), QuicFlows(dp)


def first_initial(version: int, name: bytes = b"open.example") -> bytes:
    return client_initial(version, stream_frame(version, 0, handshake_message(version, name)))


def frame(datagram: bytes, port: int, v6: bool = False, server: str | None = None) -> bytes:
    return udp_frame(datagram, sport=port, v6=v6, dst=server)


def rule_of_flow(dp, port: int) -> str | None:
    """The rule the flow table holds for the flow from the client's port."""
    rules = [flow.rule_id for key, flow in dp.flow_table().items()
             if port in (socket.ntohs(key.port_lo), socket.ntohs(key.port_hi))]
    assert len(rules) == 1, rules
    rule = dp.policy.rule_by_id(rules[0]) if rules[0] else None
    return rule.name if rule else None


# A throttle whose QUIC flows `quic: block` blocks: the rule's action is not what QUIC gets.
WITH_QUIC_BLOCK_ON_A_THROTTLE = QUIC_BLOCK + """\
  - name: udp-throttle
    action: throttle
    rate: 1mbit
    destination: lab-cdn
    quic: block
"""


@pytest.mark.parametrize("text,judged", [(QUIC_BLOCK, True), (WITH_A_NAMED_RULE, False), (WITH_AN_ALPN_RULE, False),
                                         (WITH_QUIC_BLOCK_ON_A_THROTTLE, False)],
                         ids=["quic-block", "named", "alpn", "quic-block-on-a-throttle"])
def test_the_policy_decides_where_quic_is_judged(tmp_path, text, judged):
    """The flag follows the rules: a rule that may read the hello keeps QUIC with the controller."""
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    assert judges_quic_at_opening(load_policy(path).rules) == judged


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("version", KNOWN.values(), ids=KNOWN.keys())
def test_the_first_initial_of_a_version_the_controller_reads_is_dropped(quic_block, version, v6):
    dp, flows = quic_block
    port = next(ports)
    assert classify(dp, frame(first_initial(version), port, v6)).verdict == "drop"
    dp.poll_rings(0)
    assert classify(dp, frame(short_header_packet(), port, v6)).verdict == "drop"
    assert rule_of_flow(dp, port) == "quic-drop"
    client = CLIENT_V6 if v6 else CLIENT_V4
    server = SERVER_V6 if v6 else SERVER_V4
    assert dp.policy.decide(b"open.example", client, 443, True, server=server, protocol="quic").rule.name == "quic-drop"


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_an_exemption_by_destination_is_judged_there_too(quic_block, v6):
    """The allow for the CDN's prefixes, above the block: its flows pass, their hellos read as before."""
    dp, flows = quic_block
    port = next(ports)
    server = CDN_V6 if v6 else CDN_V4
    assert classify(dp, frame(first_initial(QUIC_V1), port, v6, server)).verdict == "pass"
    dp.poll_rings(0)
    assert classify(dp, frame(short_header_packet(), port, v6, server)).verdict == "pass"
    assert rule_of_flow(dp, port) == "quic-cdn-allow"
    client = CLIENT_V6 if v6 else CLIENT_V4
    assert dp.policy.decide(b"open.example", client, 443, True, server=server,
                            protocol="quic").rule.name == "quic-cdn-allow"


@pytest.mark.parametrize("version", UNREAD_VERSIONS.values(), ids=UNREAD_VERSIONS.keys())
def test_a_version_the_controller_cannot_read_is_left_unjudged(quic_block, version):
    dp, _flows = quic_block
    port = next(ports)
    datagram = initial_packet(crypto_frame(0, handshake_client_hello(b"open.example")), version=QUIC_V1, size=1200)
    datagram = datagram[:1] + version.to_bytes(4, "big") + datagram[5:]
    assert classify(dp, frame(datagram, port)).verdict == "pass"
    dp.poll_rings(0)
    assert rule_of_flow(dp, port) is None


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_first_initial_in_fragments_is_dropped_at_the_fragment_that_completes_it(quic_block, v6):
    dp, _flows = quic_block
    port = next(ports)
    pieces = ip_fragments(frame(first_initial(QUIC_V1), port, v6), 512)
    assert [classify(dp, piece).verdict for piece in pieces][-1] == "drop"
    assert rule_of_flow(dp, port) == "quic-drop"


@pytest.mark.parametrize("policy", [WITH_A_NAMED_RULE, WITH_AN_ALPN_RULE], ids=["named", "alpn"])
def test_where_a_rule_may_read_the_hello_the_first_initial_passes_to_the_controller(make_datapath, policy):
    """As before: the first flight passes, the controller's verdict stops what follows."""
    dp = make_datapath(policy, events=True)
    QuicFlows(dp)
    port = next(ports)
    assert run(dp, frame(first_initial(QUIC_V1, b"video.example"), port)) == "pass"
    dp.poll_rings(0)
    expected = "video-throttle" if policy is WITH_A_NAMED_RULE else "quic-drop"
    assert rule_of_flow(dp, port) == expected
    assert dp.policy.decide(b"video.example", CLIENT_V4, 443, True, server=SERVER_V4,
                            protocol="quic").rule.name == expected


def run(dp, data: bytes) -> str:
    return classify(dp, data).verdict


def test_explain_says_where_the_flow_was_judged(quic_block):
    dp, _flows = quic_block
    steps = dp.policy.decide(b"open.example", CLIENT_V4, 443, True, server=SERVER_V4, protocol="quic").steps
    assert steps[-1] == "rule quic-drop settles it there"
    assert all(step.startswith("at its first Initial, as QUIC, before any name: ") for step in steps[:-1])


def test_replay_prints_the_flow_blocked_at_its_first_initial_once(quic_block, tmp_path):
    """One line, nameless as any flow settled before its name is read, with its rule."""
    dp, _flows = quic_block
    port = next(ports)
    capture = tmp_path / "quic.pcap"
    write_capture(capture, [frame(first_initial(QUIC_V1), port)] * 2)
    records, _ = replay(str(capture), dp.policy)
    assert [(r["client_port"], r["proto"], r["name"], r["rule"], r["action"]) for r in records] == [
        (port, "quic", None, "quic-drop", "block")]
