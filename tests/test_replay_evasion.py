"""`sluice replay`, as a user runs it, over captures of circumvention techniques.

One capture holds a flow per technique, for TLS and HTTP over IPv4 and IPv6,
built from the frame builders of tests/packets.py: splits, disorder, seqovl,
IP fragments, an urgent byte, and decoys the server would drop or never
receive, each carrying a hello or request for another name (the decoy's).
With the default profile replay names the name the server reads; with the
2021 profile (`reassemble: false`, `on_evasion: ignore`) it names what the
documented throttler read: the decoy's name, or nothing for a cut hello.
"""

import json
import os
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from evasion_sender import (ACK_STEP_BACK, DECOYS, FORGED_ACK, PAWS_STEP_BACK, PLAIN, SEQOVL_BYTES, cuts_around,
                            pieces)
from packets import (client_hello, http_request, ip_fragments, read_capture, tcp_frame, unknown_extensions,
                     write_capture)
from test_bpf_reassembly import ISN, records
from test_replay import one_frame_a_run, read_ahead

pytestmark = [pytest.mark.bpf, pytest.mark.skipif(os.geteuid() != 0, reason="replay loads BPF: needs root")]

SLUICE = [sys.executable, "-m", "sluice"]
REAL_NAME, DECOY_NAME = "blocked.example", "allowed.example"      # of equal length, as tools make them
RULES = "version: 1\nrules:\n  - {name: block-real, action: block, domains: [blocked.example]}\n"
PROFILES = {"default": RULES, "2021": RULES + "inspection: {reassemble: false, on_evasion: ignore}\n"}
SERVER_ISN = 7_000_000
TSVAL, TSECR = 3_000_000, 9_000_000
FRAGMENT_BYTES = 64                       # IP payload per fragment: a multiple of 8
URGENT_BYTE = b"!"

# Techniques beyond the live sender's: a decoy in the SYN, an urgent byte
# inside the name, and the hello's packet cut into IP fragments sent last first.
# Not its forged server ACK: a capture is replayed as if on one interface,
# where nothing tells the client's ACK from the server's (docs/policy.md).
SYN_DECOY, URGENT, FRAGMENTS = "fake-syn", "urgent", "fragments"
# And what a server reads whole however far it runs: the hello in TLS
# records of one byte each, or a request with its Host after 200 header
# lines (TINY_PIECES); the name after 300 unknown extensions, or after one
# 4 KB padding header (tpws's --hostpad) (PADDED). Sent in 1400-byte segments.
TINY_PIECES, PADDED = "tiny-pieces", "padded"
SEGMENT_BYTES = 1400
DECOY_TECHNIQUES = {**{kind: counted for kind, counted in DECOYS.items() if kind != FORGED_ACK},
                    SYN_DECOY: "syn_data"}
TECHNIQUES = (PLAIN, "split1", "split2", "multisplit", "disorder", "seqovl", *DECOY_TECHNIQUES, URGENT,
              FRAGMENTS, TINY_PIECES, PADDED)
# What the 2021 profile, reading each segment alone, still names: see
# tests/test_e2e_evasion.py (a request cut inside its first line).
# The padded hello's name lies in its first segment, past its 300 extensions.
SEEN_BY_2021 = {(PLAIN, "tls"), (PLAIN, "http"), ("split1", "http"), ("split2", "http"), (PADDED, "tls")}


def timestamps(step_back: int = 0) -> list:
    return [("NOP", None), ("NOP", None), ("Timestamp", ((TSVAL - step_back) % 2**32, TSECR))]


def rebuilt(frame: bytes, *, ttl=None, options=None, urgent=None, bad_checksum=False) -> bytes:
    """`frame` with its TTL, TCP options or urgent pointer changed, checksums made anew (or wrong)."""
    packet = Ether(frame)
    network = packet[IPv6] if IPv6 in packet else packet[IP]
    if ttl is not None:
        setattr(network, "hlim" if IPv6 in packet else "ttl", ttl)
    segment = packet[TCP]
    segment.options = timestamps() if options is None else options
    if urgent is not None:
        segment.flags, segment.urgptr = segment.flags | "U", urgent
    del segment.chksum, segment.dataofs
    if IP in packet:
        del packet[IP].chksum, packet[IP].len
    else:
        del packet[IPv6].plen
    packet = Ether(bytes(packet))
    if bad_checksum:
        packet[TCP].chksum ^= 0x5A5A
    return bytes(packet)


class CaptureFlow:
    """A client connection's frames, handshake first, numbered as a server would see them."""

    def __init__(self, port: int, scheme: str, v6: bool):
        self.port, self.v6, self.dport = port, v6, 443 if scheme == "tls" else 80

    def segment(self, payload: bytes, offset: int = 0, flags="PA", ack_step_back: int = 0, **changes) -> bytes:
        frame = tcp_frame(payload, sport=self.port, dport=self.dport, v6=self.v6, flags=flags,
                          seq=(ISN + 1 + offset) % 2**32, ack=SERVER_ISN + 1 - ack_step_back if "A" in flags else 0)
        return rebuilt(frame, **changes)

    def handshake(self, syn_payload: bytes = b"") -> list[bytes]:
        syn = tcp_frame(syn_payload, sport=self.port, dport=self.dport, v6=self.v6, flags="S", seq=ISN)
        syn_ack = tcp_frame(sport=self.port, dport=self.dport, v6=self.v6, flags="SA", reply=True,
                            seq=SERVER_ISN, ack=ISN + 1)
        return [rebuilt(syn), rebuilt(syn_ack), self.segment(b"", flags="A")]

    def frames(self, technique: str, stream: bytes, decoy: bytes, name: str) -> list[bytes]:
        """The flow's frames when its client sends `stream` by `technique`."""
        if technique == SYN_DECOY:
            return self.handshake(decoy) + [self.segment(stream)]
        frames = self.handshake()
        if technique == PLAIN:
            return frames + [self.segment(stream)]
        if technique in ("split1", "split2", "multisplit", "disorder"):
            cuts = {"split1": [1], "split2": [2]}.get(technique) or cuts_around(stream, name)
            parts = pieces(stream, cuts)
            return frames + [self.segment(piece, offset) for offset, piece in
                             (reversed(parts) if technique == "disorder" else parts)]
        if technique == "seqovl":
            (_, first), (offset, rest) = pieces(stream, [cuts_around(stream, name)[2]])
            return frames + [self.segment(b"\xaa" * SEQOVL_BYTES + first, -SEQOVL_BYTES),
                             self.segment(rest, offset)]
        if technique in DECOY_TECHNIQUES:
            changes = {"fake-ttl": dict(ttl=1), "fake-checksum": dict(bad_checksum=True),
                       "fake-md5": dict(options=[("NOP", None), ("NOP", None), (19, bytes(16)), *timestamps()]),
                       "fake-noack": dict(flags="P"),
                       "fake-timestamp": dict(options=timestamps(PAWS_STEP_BACK)),
                       "fake-ack": dict(ack_step_back=ACK_STEP_BACK)}[technique]
            return frames + [self.segment(decoy, **changes), self.segment(stream)]
        if technique == URGENT:
            # The urgent byte goes inside the name; the pointer (Linux's reading: the
            # byte before it) marks it, and a receiver takes it out of the stream.
            at = stream.find(name.encode()) + 4
            return frames + [self.segment(stream[:at] + URGENT_BYTE + stream[at:], urgent=at + 1)]
        if technique in (TINY_PIECES, PADDED):
            stream = padded_stream(technique, stream, name)
            return frames + [self.segment(piece, offset)
                             for offset, piece in pieces(stream, range(SEGMENT_BYTES, len(stream), SEGMENT_BYTES))]
        if technique == FRAGMENTS:
            whole = self.segment(stream)
            size = len(Ether(whole)[IPv6 if self.v6 else IP].payload)
            cuts = [(start, min(start + FRAGMENT_BYTES, size)) for start in range(0, size, FRAGMENT_BYTES)]
            return frames + ip_fragments(whole, cuts[::-1])
        raise ValueError(technique)


def padded_stream(technique: str, stream: bytes, name: str) -> bytes:
    """stream (first_bytes') as TINY_PIECES or PADDED send it."""
    if stream.startswith(b"\x16"):
        if technique == TINY_PIECES:
            return records(stream, 1)
        return client_hello(name.encode(), extensions_before=unknown_extensions(300), extensions_after=(b"\x00\x15\x01\x90" + bytes(400),))
    lines = tuple(f"X-{i}: a" for i in range(200)) if technique == TINY_PIECES else (f"X-Pad: {'a' * 4096}",)
    return http_request(name, before=lines)


def first_bytes(scheme: str, name: str) -> bytes:
    if scheme == "tls":
        return client_hello(name.encode(), extensions_after=(b"\x00\x15\x01\x90" + bytes(400),))
    return http_request(name)


ROWS = [(technique, scheme, family) for technique in TECHNIQUES for scheme in ("tls", "http") for family in (4, 6)]
PORTS = {row: 43000 + index for index, row in enumerate(ROWS)}


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("evasion") / "techniques.pcap"
    frames = []
    for (technique, scheme, family), port in PORTS.items():
        flow = CaptureFlow(port, scheme, v6=family == 6)
        frames += flow.frames(technique, first_bytes(scheme, REAL_NAME), first_bytes(scheme, DECOY_NAME),
                              REAL_NAME)
    write_capture(path, frames)
    assert read_capture(path) == frames
    return path


@pytest.fixture(scope="module")
def named(capture):
    """profile -> {client port: the name replay printed}, from one `sluice replay --json` per profile
    (None: replay refused the profile's policy, and says why)."""
    names = {}
    for profile, text in PROFILES.items():
        policy = capture.parent / f"{profile}.yaml"
        policy.write_text(text)
        result = subprocess.run([*SLUICE, "replay", "--policy", str(policy), "--json", str(capture)],
                                capture_output=True, text=True, timeout=300)
        names[profile] = ({r["client_port"]: r["name"] for r in map(json.loads, result.stdout.splitlines())}
                          if result.returncode == 0 else result.stderr.strip())
    return names


def printed(named, profile, row):
    assert isinstance(named[profile], dict), f"replay refused the {profile} profile: {named[profile]}"
    return named[profile].get(PORTS[row], "no line")


@pytest.mark.parametrize("technique, scheme, family", ROWS)
def test_the_default_profile_names_the_name_the_server_reads(named, technique, scheme, family):
    assert printed(named, "default", (technique, scheme, family)) == REAL_NAME


@pytest.mark.parametrize("technique, scheme, family", ROWS)
def test_the_2021_profile_names_what_the_documented_throttler_read(named, technique, scheme, family):
    name = printed(named, "2021", (technique, scheme, family))
    if (technique, scheme) in SEEN_BY_2021:
        assert name == REAL_NAME
    elif technique in DECOY_TECHNIQUES:
        assert name == DECOY_NAME
    else:
        assert name != REAL_NAME


def test_replay_prints_what_a_test_run_a_frame_prints(capture):
    """replay runs many frames a test run (replay_batch.py): over every
    technique, decoys in the SYN and fragments among them, its lines are
    those of running each frame by a test run of its own, and of reading
    the capture ahead."""
    from sluice.policy import load_policy
    from sluice.replay import replay
    policy_path = capture.parent / "every-frame.yaml"
    policy_path.write_text(PROFILES["default"])
    policy = load_policy(str(policy_path))
    assert replay(str(capture), policy) == one_frame_a_run(capture, policy) == read_ahead(capture, policy)



# A capture of the real tools, not of our imitation of them: each flow is
# one connection of curl (QUIC: aioquic) in the lab's client namespace
# (controller/lab.py) to the lab's server for blocked.example, taken with tcpdump on the edge's
# client interface and cut before the server's first data (what names the
# flow comes before it); documentation addresses only. The server read
# blocked.example in each (nginx's $host and $ssl_server_name; aioquic
# answered). zapret is
# nfqws at bol-van/zapret 363fbe69 (2026-03-12) on the client's OUTPUT
# through iptables NFQUEUE; ByeDPI is ciadpi at hufrea/byedpi ba532298
# (2026-03-27), a SOCKS5 proxy curl goes through. A TTL of 1 is the lab's
# tuning: the edge is the client's first hop. docs/testing.md says how
# they were run.
REAL_TOOLS_CAPTURE = os.path.join(os.path.dirname(__file__), "captures", "real-tools.pcap")
REAL_TOOL_FLOWS = {
    # client port: (tool and options, does the 2021 profile name the real name?)
    43284: ("zapret --dpi-desync=fake,multidisorder --dpi-desync-split-pos=1,midsld "
            "--dpi-desync-fooling=badseq,md5sig (TLS, IPv4)", False),
    60154: ("zapret --dpi-desync=fake --dpi-desync-ttl=1 (HTTP, IPv6)", False),
    60942: ("zapret --dpi-desync=fake --dpi-desync-fooling=ts "
            "--dpi-desync-fake-tls-mod=rnd,dupsid,sni=allowed.example (TLS, IPv4)", False),
    43118: ("zapret --dpi-desync=multisplit --dpi-desync-split-pos=1 --dpi-desync-split-seqovl=681 "
            "--dpi-desync-split-seqovl-pattern=tls_clienthello_www_google_com.bin (TLS, IPv6)", False),
    43300: ("zapret --dpi-desync=fakeddisorder --dpi-desync-split-pos=midsld --dpi-desync-fooling=badseq "
            "(TLS, IPv4)", False),
    43312: ("zapret --dpi-desync=hostfakesplit --dpi-desync-hostfakesplit-midhost=midsld --dpi-desync-ttl=1 "
            "--dpi-desync-hostfakesplit-mod=host=allowed.example (TLS, IPv4)", False),
    34478: ("zapret --dpi-desync=ipfrag2 (TLS, IPv6)", False),
    35582: ("zapret --dpi-desync=syndata (HTTP, IPv4)", True),
    35349: ("ByeDPI --disorder 1 --auto=torst --tlsrec 1+s, its README's example (TLS, IPv6)", False),
    49487: ("ByeDPI --fake -1 --ttl 1 --fake-sni allowed.example (TLS, IPv4)", False),
    39479: ("ByeDPI --oob 3+s (HTTP, IPv4)", True),
    60637: ("ByeDPI --tlsrec 1+s --tlsrec 5+s --tlsrec -5+se (TLS, IPv4)", False),
    57797: ("ByeDPI --disoob 1 (TLS, IPv6)", False),
    # aioquic's client (tests/test_e2e_quic.py's): six fakes for www.google.com, then the real Initial
    51491: ("zapret --dpi-desync=fake --dpi-desync-repeats=6 "
            "--dpi-desync-fake-quic=quic_initial_www_google_com.bin (QUIC, IPv4)", True),
}
# zapret's "original modding" (--orig-ttl=8 --orig-mod-start=d1, TLS, IPv4)
# sends every data segment with a TTL far below its SYN's that still
# reaches the server (here two hops away): sluice holds each tentatively,
# as it would a decoy that expires on the way, and reads them once the
# server's ACK says they arrived (bpf/tentative.h).
LOW_TTL_PORT = 41764


@pytest.fixture(scope="module")
def named_in_real_capture(tmp_path_factory):
    """profile -> {client port: the name replay printed}, one `sluice replay` per profile."""
    folder = tmp_path_factory.mktemp("real-tools")
    names = {}
    for profile, text in PROFILES.items():
        policy = folder / f"{profile}.yaml"
        policy.write_text(text)
        result = subprocess.run([*SLUICE, "replay", "--policy", str(policy), "--json", REAL_TOOLS_CAPTURE],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        names[profile] = {r["client_port"]: r["name"] for r in map(json.loads, result.stdout.splitlines())}
    return names


REAL_TOOL_PARAMS = [pytest.param(port, id=options.split(" (")[0]) for port, (options, _) in REAL_TOOL_FLOWS.items()]


@pytest.mark.parametrize("port", REAL_TOOL_PARAMS)
def test_real_tools_the_default_profile_names_the_name_the_server_read(named_in_real_capture, port):
    assert named_in_real_capture["default"].get(port, "no line") == REAL_NAME


@pytest.mark.parametrize("port", REAL_TOOL_PARAMS)
def test_real_tools_the_2021_profile_is_fooled_where_the_throttler_was(named_in_real_capture, port):
    name = named_in_real_capture["2021"].get(port, "no line")
    assert (name == REAL_NAME) == REAL_TOOL_FLOWS[port][1], name


def test_real_tools_a_low_ttl_copy_that_reaches_the_server_is_read(named_in_real_capture):
    """The server's ACK of the low-TTL hello, a bare one in the capture
    (it was cut before the server's first data), names the flow."""
    assert named_in_real_capture["2021"].get(LOW_TTL_PORT) == REAL_NAME
    assert named_in_real_capture["default"].get(LOW_TTL_PORT) == REAL_NAME


def test_real_tools_replay_prints_what_a_test_run_a_frame_prints(tmp_path):
    """The real tools' flows through replay's batches, and a frame a test
    run: the same lines, zapret's --orig-ttl flow named by the server's
    bare ACK in both."""
    from sluice.policy import load_policy
    from sluice.replay import replay
    policy_path = tmp_path / "every-frame.yaml"
    policy_path.write_text(PROFILES["default"])
    policy = load_policy(str(policy_path))
    assert replay(REAL_TOOLS_CAPTURE, policy) == one_frame_a_run(REAL_TOOLS_CAPTURE, policy) == \
        read_ahead(REAL_TOOLS_CAPTURE, policy)


def test_real_tools_under_on_evasion_block_every_flow_gets_a_line_that_blocks_it(tmp_path):
    """A flow blocked at its decoy, before any name was read, has no rule
    and sent no event; its line says it was blocked all the same, zapret's
    --orig-ttl flow's too, at its first low-TTL segment."""
    policy = tmp_path / "block-evasion.yaml"
    policy.write_text(RULES + "inspection: {on_evasion: block}\n")
    result = subprocess.run([*SLUICE, "replay", "--policy", str(policy), "--json", REAL_TOOLS_CAPTURE],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    actions = {record["client_port"]: record["action"] for record in map(json.loads, result.stdout.splitlines())}
    assert actions == dict.fromkeys([*REAL_TOOL_FLOWS, LOW_TTL_PORT], "block")
