"""The documented playbook's conditions and triggers, in the kernel (issue 23).

Rules that look past the name (the ClientHello's ECH and ALPN, the
protocol, the server's destination set, or no name at all) must pick the
rule Policy.decide() (what `sluice explain` prints) names, for hellos of
0.5 KB and 1.8 KB, whole or cut after their name (the stream stage then
hands the whole hello to the parser), over IPv4 and IPv6. A trigger lets a
flow pass untouched until its count is reached, then its action applies,
in both directions; freeze drops without answering. A rule for any flow
(no name, protocol, ECH or ALPN condition) judges every flow at its
opening packet, a TCP SYN or a UDP flow's first datagram, whatever sluice
can read of it afterwards (SSH, any UDP).
"""

import ipaddress
import itertools
import random
import socket

import pytest

from helpers import needs_root
from sluice.testrun import run_xdp
from packets import (EXT_ECH, EXT_PADDING, alpn_extension, client_hello, extension, http_request, tcp_frame,
                     udp_frame, write_capture)
from quic_packets import crypto_frame, handshake_client_hello, initial_packet

pytestmark = [pytest.mark.bpf, needs_root]

POLICY = """\
version: 1
destinations:
  cdn:
    prefixes: [198.51.100.0/24, "2001:db8:5::/48"]
  cloud:
    prefixes: [198.51.100.128/25]           # inside cdn's /24: the longer prefix wins
  banned:
    prefixes: [203.0.113.0/24, "2001:db8:7::/48"]
rules:
  - name: exempt
    action: allow
    domains: [exempt.example]
  - name: banned-block
    action: block
    destination: banned
  - name: ech-freeze
    action: freeze
    exact: [cloudflare-ech.com]
    tls: {ech: present}
  - name: h2-block
    action: block
    domains: [alpn.example]
    tls: {alpn: [h2]}
  - name: no-ech-throttle
    action: throttle
    rate: 1mbit
    domains: [alpn.example]
    tls: {ech: absent}
  - name: http-only
    action: block
    domains: [plain.example]
    protocol: http
  - name: cdn-freeze-4k
    action: freeze
    destination: cdn
    after: {bytes: 4KiB, direction: down}
  - name: cloud-ech
    action: block
    destination: cloud
    tls: {ech: present, alpn: [h3, http/1.1]}
  - name: cloud-packets
    action: freeze
    destination: cloud
    after: {packets: 5, direction: down}
"""

NAMES = [b"cloudflare-ech.com", b"alpn.example", b"plain.example", b"download.example"]
SERVERS = ["198.51.100.2", "198.51.100.200", "192.0.2.200", "2001:db8:5::2", "2001:db8:6::2"]
BANNED_SERVERS = ["203.0.113.9", "2001:db8:7::9"]
ALPNS = [(), (b"h2",), (b"http/1.1",), (b"h2", b"http/1.1"), (b"h3",), (b"x" * 16, b"h2")]
SIZES = [500, 1800]
_ports = itertools.count(30000)


@pytest.fixture(scope="module")
def dp(make_datapath):
    return make_datapath(POLICY)


def hello(name: bytes, ech: bool, alpn: tuple[bytes, ...], size: int) -> bytes:
    """A ClientHello of about size bytes whose ECH and ALPN come after its name, behind padding."""
    after = [alpn_extension(*alpn)] if alpn else []
    after += [extension(EXT_ECH, bytes(200))] if ech else []
    bare = client_hello(name, extensions_after=tuple(after))
    padding = extension(EXT_PADDING, bytes(max(0, size - len(bare) - 4)))
    return client_hello(name, extensions_after=(padding, *after))


def segments(payload: bytes, cut: int | None) -> list[tuple[int, bytes]]:
    """(sequence number, bytes) of the client's stream after a SYN, in one piece or cut at `cut`."""
    if cut is None:
        return [(1, payload)]
    return [(1, payload[:cut]), (1 + cut, payload[cut:])]


def open_flow(dp, payload: bytes, *, client="192.0.2.2", server="198.51.100.2", cut=None) -> tuple[str | None, int]:
    """Open a flow, send the client's first bytes; the rule the kernel counts it under, and its port."""
    sport = next(_ports)
    v6 = ":" in server
    if v6:
        client = "2001:db8:c::2"
    frame = dict(sport=sport, v6=v6, src=client, dst=server)
    before = dp.rule_stats()
    run_xdp(dp.function.fd, tcp_frame(flags="S", **frame))
    for seq, piece in segments(payload, cut):
        run_xdp(dp.function.fd, tcp_frame(piece, seq=seq, **frame))
    after = dp.rule_stats()
    moved = [rule_id for rule_id in after if after[rule_id]["flows"] != before[rule_id]["flows"]]
    assert len(moved) == 1, moved
    rule = dp.policy.rule_by_id(moved[0])
    return (rule.name if rule else None), sport


def test_kernel_chooses_the_rule_explain_names(dp):
    rng = random.Random(23)
    disagreements, chosen = [], set()
    cases = list(itertools.product(NAMES, (False, True), ALPNS, SIZES, SERVERS))
    for name, ech, alpn, size, server in cases:
        payload = hello(name, ech, alpn, size)
        name_end = payload.index(name) + len(name)
        # Cut after the name, before the ECH and ALPN extensions (or not at all).
        cut = rng.choice([None, rng.randrange(name_end, len(payload) - 250)])
        expected = dp.policy.decide(name, "192.0.2.2", server=server, protocol="tls", ech=ech,
                                    alpn=tuple(a.decode() for a in alpn)).rule
        expected = expected.name if expected else None
        chosen.add(expected)
        got, _ = open_flow(dp, payload, server=server, cut=cut)
        if got != expected:
            disagreements.append((name, ech, alpn, size, server, cut, expected, got))
    assert not disagreements, disagreements[:10]
    # The sample must exercise every condition, or agreeing proves little.
    assert set(dp.policy.rule_by_name(r).name for r in ("ech-freeze", "h2-block", "no-ech-throttle",
                                                         "cdn-freeze-4k", "cloud-ech", "cloud-packets")) <= chosen


@pytest.mark.parametrize("size", SIZES)
def test_ech_after_a_cut_is_still_seen(dp, size):
    """A client that cuts its hello right after the name cannot hide the ECH behind it."""
    payload = hello(b"cloudflare-ech.com", True, (b"h2",), size)
    cut = payload.index(b"cloudflare-ech.com") + len(b"cloudflare-ech.com")
    assert open_flow(dp, payload, server="192.0.2.200", cut=cut)[0] == "ech-freeze"
    assert open_flow(dp, hello(b"cloudflare-ech.com", False, (b"h2",), size), server="192.0.2.200",
                     cut=cut)[0] is None


def test_protocol_condition_tells_http_from_tls(dp):
    assert open_flow(dp, http_request("plain.example"), server="192.0.2.200")[0] == "http-only"
    assert open_flow(dp, hello(b"plain.example", False, (), 500), server="192.0.2.200")[0] is None


def test_destination_prefixes_longest_wins(dp):
    assert open_flow(dp, hello(b"download.example", False, (), 500), server="198.51.100.127")[0] == "cdn-freeze-4k"
    assert open_flow(dp, hello(b"download.example", False, (), 500), server="198.51.100.128")[0] == "cloud-packets"
    assert open_flow(dp, hello(b"download.example", False, (), 500), server="2001:db8:5:ffff::1")[0] == "cdn-freeze-4k"
    assert open_flow(dp, hello(b"download.example", False, (), 500), server="2001:db8:6::1")[0] is None


def send(dp, sport: int, server: str, size: int, *, down: bool) -> str:
    return run_xdp(dp.function.fd, tcp_frame(b"d" * size, sport=sport, seq=1000, src="192.0.2.2", dst=server,
                                             reply=down)).verdict


@pytest.mark.parametrize("size", [100, 1000, 1448, 4096])
def test_freeze_after_bytes_down_lets_that_many_through_then_drops_both_ways(dp, size):
    rule, sport = open_flow(dp, hello(b"download.example", False, (), 500), server="198.51.100.2")
    assert rule == "cdn-freeze-4k"
    fired = dp.counters()["triggers_fired"]
    verdicts = []
    for _ in range(4096 // size + 3):
        verdicts.append(send(dp, sport, "198.51.100.2", size, down=True))
        # Up packets do not count toward a down trigger.
        assert send(dp, sport, "198.51.100.2", size, down=False) == ("pass" if verdicts[-1] == "pass" else "drop")
    passed = verdicts.index("drop")
    assert passed == 4096 // size, verdicts
    assert set(verdicts[passed:]) == {"drop"}, "frozen from then on, never answered (no tx)"
    assert dp.counters()["triggers_fired"] == fired + 1


def test_freeze_after_packets_down(dp):
    rule, sport = open_flow(dp, hello(b"download.example", False, (), 500), server="198.51.100.129")
    assert rule == "cloud-packets"
    verdicts = [send(dp, sport, "198.51.100.129", 1448, down=True) for _ in range(8)]
    assert verdicts == ["pass"] * 5 + ["drop"] * 3


def test_a_million_destination_prefixes_load_into_the_trie(make_datapath, tmp_path):
    lines = [f"10.{i >> 12 & 255}.{i >> 4 & 255}.{(i & 15) << 4}/28" for i in range(1_000_000)]
    (tmp_path / "many.txt").write_text("\n".join(lines) + "\n")
    dp = make_datapath(f"version: 1\ndestinations:\n  many: {{prefixes_file: {tmp_path}/many.txt}}\n"
                       "rules:\n  - {name: many-block, action: block, destination: many}\n")
    first, last = ipaddress.ip_network(lines[0]), ipaddress.ip_network(lines[-1])
    for server, rule in [(str(first[1]), "many-block"), (str(last[-1]), "many-block"),
                         (str(last[-1] + 1), None), ("192.0.2.9", None)]:
        assert open_flow(dp, hello(b"any.example", False, (), 500), server=server)[0] == rule, server


# A flow sluice reads no name from: an SSH client's first bytes.
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"


def client_of(server: str) -> str:
    return "2001:db8:c::2" if ":" in server else "192.0.2.2"


def frame(transport: str, payload: bytes = b"", *, sport: int, server: str, down=False, flags="PA", seq=None) -> bytes:
    """A TCP or UDP frame of the flow from the client's sport to server:22."""
    addresses = dict(sport=sport, dport=22, v6=":" in server, src=client_of(server), dst=server, reply=down)
    if transport == "udp":
        return udp_frame(payload, **addresses)
    return tcp_frame(payload, flags=flags, seq=seq, **addresses)


def open_unnamed(dp, transport: str, server: str) -> tuple[str, int]:
    """Open a flow sluice reads no name from (a SYN then an SSH banner, or a first datagram):
    the verdict on its opening packet, and its port."""
    sport = next(_ports)
    verdict = run_xdp(dp.function.fd, frame(transport, b"" if transport == "tcp" else SSH_BANNER,
                                             sport=sport, server=server, flags="S")).verdict
    if transport == "tcp":
        run_xdp(dp.function.fd, frame("tcp", SSH_BANNER, sport=sport, server=server))
    return verdict, sport


def rule_of_flow(dp, sport: int) -> str | None:
    """The rule the flow table holds for the flow from the client's sport."""
    rules = [flow.rule_id for key, flow in dp.flow_table().items()
             if sport in (socket.ntohs(key.port_lo), socket.ntohs(key.port_hi))]
    assert len(rules) == 1, rules
    rule = dp.policy.rule_by_id(rules[0])
    return rule.name if rule else None


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("server", SERVERS + BANNED_SERVERS)
def test_a_flow_without_a_name_is_judged_at_its_opening_packet_as_explain_says(dp, transport, server):
    verdict, sport = open_unnamed(dp, transport, server)
    expected = dp.policy.decide(b"", client_of(server), 22, server=server, protocol="other").rule
    assert rule_of_flow(dp, sport) == (expected.name if expected else None)
    assert verdict == ("drop" if server in BANNED_SERVERS else "pass")


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("server", BANNED_SERVERS)
def test_blocking_by_prefix_drops_every_packet_of_any_protocol(dp, transport, server):
    verdict, sport = open_unnamed(dp, transport, server)
    assert verdict == "drop"
    for down in (False, True):
        assert run_xdp(dp.function.fd, frame(transport, SSH_BANNER, sport=sport, server=server,
                                             down=down)).verdict == "drop"


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("server", ["198.51.100.2", "2001:db8:5::2"])
def test_a_flow_without_a_name_is_frozen_after_4k_down(dp, transport, server):
    verdict, sport = open_unnamed(dp, transport, server)
    assert verdict == "pass"
    verdicts = [run_xdp(dp.function.fd, frame(transport, bytes(1000), sport=sport, server=server, down=True,
                                              seq=1000)).verdict for _ in range(6)]
    assert verdicts == ["pass"] * 4 + ["drop"] * 2
    assert run_xdp(dp.function.fd, frame(transport, SSH_BANNER, sport=sport, server=server, seq=100)).verdict == "drop"


def test_a_named_exemption_cannot_lift_a_block_at_the_syn(dp):
    """The SYN to a banned prefix is dropped before any name: the exemption for the name never applies,
    and explain says so."""
    decision = dp.policy.decide(b"exempt.example", "192.0.2.2", server="203.0.113.9")
    assert decision.rule.name == "banned-block"
    assert open_flow(dp, hello(b"exempt.example", False, (), 500), server="203.0.113.9")[0] == "banned-block"
    # Elsewhere the exemption wins over the freeze the opening packet held.
    assert open_flow(dp, hello(b"exempt.example", False, (), 500), server="198.51.100.2")[0] == "exempt"


def test_a_name_read_after_the_trigger_fired_changes_nothing(dp):
    """A server that speaks first (as SSH's does) past the trigger: the flow is frozen for good, and the
    client's hello, though it names a rule that would win, is not read."""
    sport = next(_ports)
    run_xdp(dp.function.fd, tcp_frame(flags="S", sport=sport, src="192.0.2.2", dst="198.51.100.2"))
    for _ in range(5):
        run_xdp(dp.function.fd, tcp_frame(bytes(1000), sport=sport, seq=1000, src="192.0.2.2", dst="198.51.100.2",
                                          reply=True))
    payload = hello(b"exempt.example", False, (), 500)
    assert run_xdp(dp.function.fd, tcp_frame(payload, sport=sport, src="192.0.2.2", dst="198.51.100.2")).verdict == "drop"
    assert rule_of_flow(dp, sport) == "cdn-freeze-4k"


def test_replay_prints_a_line_for_each_flow_a_rule_settles_at_its_opening_packet(dp, tmp_path):
    """A flow blocked by its destination at its SYN or first datagram has its
    line in `sluice replay`, nameless, with its rule; a TCP flow no rule
    judged has its nameless line at the end of the capture, as before, and a
    UDP one none (nothing was read or decided of it)."""
    from sluice.replay import replay
    flows = {}                     # sport -> (transport, server)
    frames = []
    for transport in ("tcp", "udp"):
        for server in BANNED_SERVERS + ["192.0.2.200"]:
            sport = next(_ports)
            flows[sport] = (transport, server)
            if transport == "tcp":
                frames += [frame("tcp", sport=sport, server=server, flags="S"),
                           frame("tcp", SSH_BANNER, sport=sport, server=server)]
            else:
                frames.append(frame("udp", SSH_BANNER, sport=sport, server=server))
    for server in BANNED_SERVERS:            # a QUIC Initial naming an exempt name: its address settles it
        sport = next(_ports)
        flows[sport] = ("quic", server)
        initial = initial_packet(crypto_frame(0, handshake_client_hello(b"exempt.example")), size=1200)
        frames.append(udp_frame(initial, sport=sport, dport=443, v6=":" in server, src=client_of(server),
                                dst=server))
    capture = tmp_path / "unnamed.pcap"
    write_capture(capture, frames)
    records, _ = replay(str(capture), dp.policy)
    lines = {record["client_port"]: (record["server"], record["name"], record["rule"], record["action"])
             for record in records}
    assert len(lines) == len(records), "a line per flow"
    assert lines == {sport: (str(ipaddress.ip_address(server)), None, "banned-block", "block")
                     if server in BANNED_SERVERS else (server, None, None, None)
                     for sport, (transport, server) in flows.items()
                     if server in BANNED_SERVERS or transport == "tcp"}
