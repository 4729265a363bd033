"""Flows inside tunnels, and behind a PROXY protocol header, in the real XDP program.

Every encapsulation is built around the same client frames the other tests
send (tests/packets.py encapsulate()): the flow inside is named as it would
be bare, a block drops the outer packet, and what happened to each tunnelled
packet is counted by kind (sluice_tunnelled_packets_total). The policy
options are written into the loaded program's config as a policy with them
would be (one compile for the module).
"""

import itertools
import json
import subprocess
import sys
from contextlib import contextmanager

import pytest

from helpers import judge, needs_root
from sluice.policy import load_policy
from sluice.quic_flows import QuicFlows
from sluice.testrun import run_xdp
from packets import (ETH_P_IP, GRE_CHECKSUM, GRE_KEY, GRE_SEQUENCE, GTPU_ECHO_REQUEST,
                     GTPU_PDU_SESSION_CONTAINER, client_hello, encapsulate, gre_header, gtpu_header,
                     http_request, tcp_frame, udp_frame, vxlan_header, write_capture)
from quic_packets import crypto_frame, handshake_client_hello, initial_packet, short_header_packet

pytestmark = [pytest.mark.bpf, needs_root]

POLICY = """\
version: 1
rules:
  - {name: blocked, action: block, domains: [blocked.example]}
  - {name: reset, action: block, method: reset, domains: [reset.example]}
"""

# name -> what encapsulate() is given: every kind, with and without its options.
ENCAPSULATIONS = {
    "ipip-in-v4": dict(kind="ipip"),                      # 4in4, 6in4
    "ipip-in-v6": dict(kind="ipip", outer_v6=True),       # 4in6, 6in6
    "gre": dict(kind="gre"),
    "gre-key-checksum-sequence": dict(kind="gre", gre_flags=GRE_KEY | GRE_CHECKSUM | GRE_SEQUENCE),
    "gre-key-in-v6": dict(kind="gre", gre_flags=GRE_KEY, outer_v6=True),
    "gre-bridged": dict(kind="gre-bridged"),
    "gtpu": dict(kind="gtpu"),
    "gtpu-extensions": dict(kind="gtpu", gtpu_extensions=((GTPU_PDU_SESSION_CONTAINER, b"\x00\x09"),
                                                          (0x40, b"\x00" * 6))),
    "vxlan": dict(kind="vxlan"),
    "qinq": dict(kind="qinq"),
}
KIND = {name: options["kind"].removesuffix("-bridged") for name, options in ENCAPSULATIONS.items()}
ports = itertools.count(41000)


@pytest.fixture(scope="module")
def quic(make_datapath):
    """The data plane with its QUIC Initials read by the controller's QuicFlows."""
    dp = make_datapath(POLICY, events=True)
    return dp, QuicFlows(dp)


@pytest.fixture
def dp(quic):
    return quic[0]


def wrapper(name: str):
    return lambda frame: encapsulate(frame, **ENCAPSULATIONS[name])


def send(dp, frame: bytes) -> str:
    return run_xdp(dp.function.fd, frame).verdict


@contextmanager
def inspection(dp, tmp_path, options: str):
    """The config a policy with these inspection options writes, for the block's length."""
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY + f"inspection: {options}\n")
    dp._write_config(dp.generation, load_policy(path))
    try:
        yield
    finally:
        dp._write_config(dp.generation, dp.policy)


def tunnel_moved(dp, before) -> dict:
    return {key: count - before[key] for key, count in dp.tunnel_counters().items() if count != before[key]}


# --- named and enforced ----------------------------------------------------

@pytest.mark.parametrize("v6", [False, True], ids=["inner-v4", "inner-v6"])
@pytest.mark.parametrize("proto", ["tls", "http"])
@pytest.mark.parametrize("encapsulation", ENCAPSULATIONS)
def test_a_flow_in_a_tunnel_is_named_and_its_outer_packets_dropped(dp, encapsulation, proto, v6):
    payload = client_hello(b"blocked.example") if proto == "tls" else http_request("blocked.example")
    before = dp.tunnel_counters()
    judgement = judge(dp, payload, wrap=wrapper(encapsulation), v6=v6, dport=443 if proto == "tls" else 80)
    assert judgement.verdict == "drop"
    assert judgement.moved()[f"flows_{proto}"] == 1
    assert tunnel_moved(dp, before) == {(KIND[encapsulation], "opened"): 2}
    # The flow is the inner one: the server's answer, in the tunnel too, is dropped.
    answer = tcp_frame(b"server data", sport=judgement.port, v6=v6, reply=True,
                       dport=443 if proto == "tls" else 80)
    assert send(dp, wrapper(encapsulation)(answer)) == "drop"


@pytest.mark.parametrize("v6", [False, True], ids=["inner-v4", "inner-v6"])
@pytest.mark.parametrize("encapsulation", ENCAPSULATIONS)
def test_a_quic_flow_in_a_tunnel_is_named_and_its_outer_packets_dropped(quic, encapsulation, v6):
    dp, flows = quic
    wrap, port = wrapper(encapsulation), next(ports)
    initial = initial_packet(crypto_frame(0, handshake_client_hello(b"blocked.example")), size=1200)
    before, named = dp.counters(), flows.outcomes["sni_found"]
    assert send(dp, wrap(udp_frame(initial, sport=port, v6=v6))) == "pass"   # the controller decides
    assert dp.counters()["quic_datagrams"] == before["quic_datagrams"] + 1
    dp.poll_rings(0)
    assert flows.outcomes["sni_found"] == named + 1
    assert send(dp, wrap(udp_frame(short_header_packet(), sport=port, v6=v6))) == "drop"


@pytest.mark.parametrize("encapsulation", ENCAPSULATIONS)
def test_an_established_flow_in_a_tunnel_keeps_its_verdict_without_being_read_again(dp, encapsulation):
    wrap = wrapper(encapsulation)
    judgement = judge(dp, client_hello(b"open.example"), wrap=wrap)
    assert judgement.verdict == "pass" and judgement.moved()["flows_tls"] == 1
    before = dp.counters()
    for frame in (tcp_frame(b"x" * 1000, sport=judgement.port, reply=True),
                  tcp_frame(b"y" * 500, sport=judgement.port, seq=1 + len(client_hello(b"open.example"))),
                  tcp_frame(flags="A", sport=judgement.port)):
        assert send(dp, wrap(frame)) == "pass"
    moved = {name: count - before[name] for name, count in dp.counters().items() if count != before[name]}
    assert moved == {"packets": 3}


@pytest.mark.parametrize("encapsulation", ENCAPSULATIONS)
def test_a_block_reply_inside_a_tunnel_falls_back_to_drop(dp, encapsulation):
    """Block by reset answers a bare or QinQ client (test_bpf_block_methods);
    inside the other encapsulations the reply would need outer headers of
    its own, and the blocked flow's packets are dropped."""
    judgement = judge(dp, client_hello(b"reset.example"), wrap=wrapper(encapsulation))
    assert judgement.verdict == ("tx" if encapsulation == "qinq" else "drop")
    assert judgement.moved()["flows_tls"] == 1


# --- policy: which kinds are opened ----------------------------------------

def test_a_kind_the_policy_leaves_out_is_not_opened(dp, tmp_path):
    with inspection(dp, tmp_path, "{tunnels: [gre]}"):
        for name in ENCAPSULATIONS:
            before = dp.tunnel_counters()
            judgement = judge(dp, client_hello(b"blocked.example"), wrap=wrapper(name))
            if KIND[name] == "gre":
                assert judgement.verdict == "drop", name
                continue
            assert judgement.verdict == "pass", name
            assert "flows_tls" not in judgement.moved(), name
            assert tunnel_moved(dp, before) == {(KIND[name], "closed"): 2}, name


def test_no_tunnels_opens_none_and_the_outer_udp_is_judged_as_udp(quic, tmp_path):
    dp, flows = quic
    initial = initial_packet(crypto_frame(0, handshake_client_hello(b"blocked.example")), size=1200)
    with inspection(dp, tmp_path, "{tunnels: []}"):
        before = dp.counters()
        for name in ("gtpu", "vxlan"):
            assert send(dp, wrapper(name)(udp_frame(initial, sport=next(ports)))) == "pass"
        assert dp.counters()["quic_datagrams"] == before["quic_datagrams"]


# --- malformed, truncated, or carrying nothing sluice reads -----------------

def transport_end(frame: bytes, payload: bytes) -> int:
    return len(frame) - len(payload)


@pytest.mark.parametrize("encapsulation", ENCAPSULATIONS)
def test_a_tunnelled_packet_cut_anywhere_in_its_headers_passes_unnamed_and_is_counted(dp, encapsulation):
    """From where the kind is known (after the outer IP header, or its UDP
    header, or the VLAN tags) to the end of the inner TCP header, every cut
    leaves a malformed packet: it passes, names nothing, and is counted."""
    hello = client_hello(b"blocked.example")
    options = ENCAPSULATIONS[encapsulation]
    frame = encapsulate(tcp_frame(hello, sport=next(ports)), **options)
    outer_ip = 14 + (40 if options.get("outer_v6") else 20)
    known = {"qinq": 22, "gtpu": outer_ip + 8, "vxlan": outer_ip + 8}.get(KIND[encapsulation], outer_ip)
    before, tunnel_before = dp.counters(), dp.tunnel_counters()
    cuts = range(known, transport_end(frame, hello))
    assert [send(dp, frame[:cut]) for cut in cuts] == ["pass"] * len(cuts)
    assert dp.counters()["flows_tls"] == before["flows_tls"]
    assert tunnel_moved(dp, tunnel_before) == {(KIND[encapsulation], "malformed"): len(cuts)}


MALFORMED = {
    "gre-routing": dict(kind="gre", header=gre_header(ETH_P_IP, flags=0x4000), outcome="unread"),
    "gre-version-1": dict(kind="gre", header=b"\x00\x01\x88\x0b", outcome="unread"),     # PPTP's, PPP inside
    "gre-ppp-inside": dict(kind="gre", header=gre_header(0x880B), outcome="unread"),
    "gtpu-echo-request": dict(kind="gtpu", header=gtpu_header(0, message_type=GTPU_ECHO_REQUEST), outcome="unread"),
    "gtpu-version-2": dict(kind="gtpu", header=b"\x48\xff\x00\x00" + bytes(4), outcome="malformed"),
    "gtpu-g-pdu-of-length-0": dict(kind="gtpu", header=b"\x30\xff\x00\x00" + bytes(4), outcome="malformed"),
    "gtpu-length-past-the-datagram": dict(kind="gtpu", header=b"\x30\xff\xff\xff" + bytes(4), outcome="malformed"),
    "gtpu-extension-of-length-0": dict(kind="gtpu", header=b"\x34\xff\x01\x00" + bytes(4) + b"\x00\x00\x00\x85"
                                       + b"\x00\x00\x00\x00", outcome="malformed"),
    "gtpu-extensions-past-the-bound": dict(kind="gtpu", outcome="malformed", gtpu_extensions=tuple(
        (GTPU_PDU_SESSION_CONTAINER, b"\x00\x01") for _ in range(5))),
    "vxlan-without-its-flag": dict(kind="vxlan", header=vxlan_header(flags=0), outcome="malformed"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_an_encapsulation_sluice_cannot_read_passes_unnamed_and_is_counted(dp, case):
    options = dict(MALFORMED[case])
    outcome = options.pop("outcome")
    frame = encapsulate(tcp_frame(client_hello(b"blocked.example"), sport=next(ports)), **options)
    before, tunnel_before = dp.counters(), dp.tunnel_counters()
    assert send(dp, frame) == "pass"
    assert dp.counters()["flows_tls"] == before["flows_tls"]
    assert tunnel_moved(dp, tunnel_before) == {(options["kind"], outcome): 1}


def test_a_tunnel_inside_a_tunnel_is_not_opened(dp):
    inner = encapsulate(tcp_frame(client_hello(b"blocked.example"), sport=next(ports)), kind="ipip")
    before = dp.tunnel_counters()
    assert send(dp, encapsulate(inner, kind="gre")) == "pass"
    assert tunnel_moved(dp, before) == {("gre", "unread"): 1}


# --- replay of a tunnelled capture -------------------------------------------

def test_replay_names_the_flows_of_a_tunnelled_capture(tmp_path):
    frames = []
    for index, name in enumerate(ENCAPSULATIONS):
        port, wrap = 42000 + index, wrapper(name)
        frames += [wrap(tcp_frame(sport=port, flags="S")), wrap(tcp_frame(sport=port, flags="SA", reply=True)),
                   wrap(tcp_frame(client_hello(f"{name}.example".encode()), sport=port))]
    write_capture(tmp_path / "tunnels.pcap", frames)
    result = subprocess.run([sys.executable, "-m", "sluice", "replay", "--json", str(tmp_path / "tunnels.pcap")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    names = {json.loads(line)["name"] for line in result.stdout.splitlines()}
    assert names == {f"{name}.example" for name in ENCAPSULATIONS}


# --- PROXY protocol ------------------------------------------------------------

PROXY_V1 = b"PROXY TCP4 203.0.113.7 198.51.100.2 51234 443\r\n"
PROXY_V2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([203, 0, 113, 7, 198, 51, 100, 2])
            + (51234).to_bytes(2, "big") + (443).to_bytes(2, "big"))
PROXY_V2_TLVS = PROXY_V2[:14] + (12 + 40).to_bytes(2, "big") + PROXY_V2[16:] + b"\x04\x00\x25" + bytes(37)
PROXY_HEADERS = {"v1": PROXY_V1, "v2": PROXY_V2, "v2-tlvs": PROXY_V2_TLVS,
                 "v1-unknown": b"PROXY UNKNOWN\r\n", "v2-local": b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"}


@pytest.mark.parametrize("proto", ["tls", "http"])
@pytest.mark.parametrize("header", PROXY_HEADERS)
def test_a_proxy_protocol_header_is_stepped_over_when_the_policy_asks(dp, tmp_path, header, proto):
    payload = client_hello(b"blocked.example") if proto == "tls" else http_request("blocked.example")
    with inspection(dp, tmp_path, "{proxy_protocol: true}"):
        judgement = judge(dp, PROXY_HEADERS[header] + payload)
    assert judgement.verdict == "drop"
    assert judgement.moved()[f"flows_{proto}"] == 1 and judgement.moved()["proxy_headers"] == 1


@pytest.mark.parametrize("header", ["v1", "v2"])
def test_a_proxy_protocol_header_in_a_segment_of_its_own_is_stepped_over(dp, tmp_path, header):
    """haproxy sends its header as soon as it has connected, often before the
    client's first bytes: the stream starts past it."""
    port, hello = next(ports), client_hello(b"blocked.example")
    first = PROXY_HEADERS[header]
    with inspection(dp, tmp_path, "{proxy_protocol: true}"):
        assert send(dp, tcp_frame(sport=port, flags="S")) == "pass"
        assert send(dp, tcp_frame(first, sport=port)) == "pass"
        assert send(dp, tcp_frame(hello[:100], sport=port, seq=1 + len(first))) == "pass"
        assert send(dp, tcp_frame(hello[100:], sport=port, seq=1 + len(first) + 100)) == "drop"


def test_a_proxy_protocol_header_is_not_stepped_over_by_default(dp):
    judgement = judge(dp, PROXY_V1 + client_hello(b"blocked.example"))
    assert judgement.verdict == "pass"
    assert "flows_tls" not in judgement.moved() and "proxy_headers" not in judgement.moved()


def test_a_proxy_protocol_header_later_in_the_stream_is_not_stepped_over(dp, tmp_path):
    """Only the stream's first bytes can be a load balancer's header."""
    with inspection(dp, tmp_path, "{proxy_protocol: true}"):
        before = dp.counters()
        port = judge(dp, b"x").port
        assert send(dp, tcp_frame(PROXY_V1 + client_hello(b"blocked.example"), sport=port, seq=2)) == "pass"
        assert dp.counters()["proxy_headers"] == before["proxy_headers"]
