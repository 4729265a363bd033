"""`sluice replay` over real captures of curl, Python's ssl and openssl in the lab."""

import importlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from sluice.lab import CLIENT_V4, SERVER_V4, SERVER_V6, Lab
from sluice.policies import lab_policy_path

from packets import read_capture, write_capture

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")]

SLUICE = [sys.executable, "-m", "sluice"]


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """pcap files of the lab's clients, taken on the client's eth0 and (cooked) on any."""
    directory = tmp_path_factory.mktemp("captures")
    with Lab() as lab:
        dumps = {}
        for name, iface in (("eth.pcap", "eth0"), ("any.pcap", "any")):
            dumps[name] = subprocess.Popen(
                ["ip", "netns", "exec", lab.client_ns, "tcpdump", "--immediate-mode", "-U", "-n", "-i", iface, "-w",
                 str(directory / name), "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)                     # tcpdump needs a moment before it captures
        assert lab.curl("blocked.example", timeout=3).ok
        assert lab.curl("open.example", scheme="http", timeout=3).ok
        assert lab.python_tls("watched.example").ok
        assert lab.openssl_tls("cdn.blocked.example", family=6).ok
        time.sleep(0.5)
        for dump in dumps.values():
            dump.send_signal(signal.SIGINT)
            dump.wait(timeout=10)
    write_capture(directory / "eth.pcapng", read_capture(directory / "eth.pcap"), pcapng=True)
    return directory


def replay(*args) -> list[dict]:
    result = subprocess.run([*SLUICE, "replay", *args, "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def by_name(records):
    return {r["name"]: r for r in records}


@pytest.mark.parametrize("capture", ["eth.pcap", "eth.pcapng", "any.pcap"])
def test_replay_names_every_client_and_applies_the_policy(captures, capture):
    records = by_name(replay("--policy", lab_policy_path(), str(captures / capture)))
    assert set(records) == {"blocked.example", "open.example", "watched.example", "cdn.blocked.example"}
    curl = records["blocked.example"]
    assert curl == {"client": CLIENT_V4, "client_port": curl["client_port"], "server": SERVER_V4,
                    "server_port": 443, "proto": "tls", "name": "blocked.example",
                    "rule": "block-lab", "action": "block", "method": "drop"}
    assert records["open.example"]["proto"] == "http"
    assert records["open.example"]["rule"] is None and records["open.example"]["action"] is None
    assert records["watched.example"]["action"] == "monitor"
    openssl = records["cdn.blocked.example"]
    assert openssl["server"] == SERVER_V6 and openssl["rule"] == "block-lab"


def test_without_a_policy_replay_only_names_flows(captures):
    records = replay(str(captures / "eth.pcap"))
    assert {r["name"] for r in records} == {"blocked.example", "open.example", "watched.example",
                                            "cdn.blocked.example"}
    assert all(r["rule"] is None and r["action"] is None for r in records)
    assert all(set(r) == {"client", "client_port", "server", "server_port", "proto", "name", "rule", "action",
                          "method"}
               for r in records)


def test_text_output_is_one_line_per_flow(captures):
    result = subprocess.run([*SLUICE, "replay", "--policy", lab_policy_path(), str(captures / "eth.pcap")],
                            capture_output=True, text=True, timeout=120, check=True)
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert any(line.startswith(f"{CLIENT_V4}:") and " tls blocked.example rule=block-lab action=block" in line
               for line in lines), lines


def reopened_and_given_up(path):
    """A capture of flows past their inspection windows: a blocked flow and
    its replies, then a new connection on its addresses and ports (a SYN of
    another sequence number, then data at its stream start) for another
    name; a flow that never names itself (given up on); an IPv6 flow;
    a full handshake and a ClientHello cut in two, the server's ACK (padded
    to Ethernet's minimum) between the pieces, over IP options; a flow behind
    a VLAN tag (replay sorts its frames into the flow past the tag)."""
    from packets import client_hello, http_request, tcp_frame
    frames = []
    for isn, name in ((0, b"blocked.example"), (5000, b"open.example")):
        frames += [tcp_frame(sport=41000, flags="S", seq=isn), tcp_frame(client_hello(name), sport=41000, seq=isn + 1)]
        frames += [tcp_frame(b"d" * 100, sport=41000, flags="A", reply=True, seq=1 + i * 100) for i in range(5)]
    frames += [tcp_frame(sport=41001, flags="S")]
    frames += [tcp_frame(b"x" * 200, sport=41001, seq=1 + i * 200) for i in range(40)]
    frames += [tcp_frame(sport=41002, flags="S", v6=True, dport=80),
               tcp_frame(http_request("cdn.blocked.example"), sport=41002, v6=True, dport=80)]
    frames += [tcp_frame(b"d" * 100, sport=41002, v6=True, dport=80, flags="A", reply=True, seq=1 + i * 100)
               for i in range(5)]
    hello, options = client_hello(b"www.blocked.example"), [b"\x01" * 4]
    frames += [tcp_frame(sport=41003, flags="S", ip_options=options),
               tcp_frame(sport=41003, flags="SA", reply=True, seq=0, ack=1),
               tcp_frame(sport=41003, flags="A", ack=1, ip_options=options),
               tcp_frame(hello[:100], sport=41003, ip_options=options),
               tcp_frame(sport=41003, flags="A", reply=True, seq=1, ack=101) + bytes(6),
               tcp_frame(hello[100:], sport=41003, seq=101, ip_options=options),
               tcp_frame(b"d" * 100, sport=41003, flags="A", reply=True, seq=1)]
    frames += [tcp_frame(sport=41004, flags="S", vlans=(7,), dport=80),
               tcp_frame(sport=41004, flags="SA", vlans=(7,), dport=80, reply=True, seq=0, ack=1),
               tcp_frame(http_request("open.example"), sport=41004, vlans=(7,), dport=80)]
    write_capture(path, frames)
    return path


@pytest.mark.parametrize("capture", ["eth.pcap", "eth.pcapng", "any.pcap", "reopened"])
def test_frames_run_by_the_driver_give_what_a_test_run_a_frame_gives(captures, tmp_path, capture):
    """replay runs many frames a test run, by the replay driver
    (replay_batch.py); its output is what running each frame by a test run
    of its own gives."""
    from sluice.policy import load_policy
    from sluice.replay import replay as replay_capture
    path = reopened_and_given_up(tmp_path / "reopened.pcap") if capture == "reopened" else captures / capture
    policy = load_policy(lab_policy_path())
    batched = replay_capture(str(path), policy)
    assert batched == one_frame_a_run(path, policy)
    if capture == "reopened":
        assert [(r["client_port"], r["name"], r["action"]) for r in batched[0]] == [
            (41000, "blocked.example", "block"), (41000, "open.example", None),
            (41001, None, None), (41002, "cdn.blocked.example", "block"), (41003, "www.blocked.example", "block"),
            (41004, "open.example", None)]


def one_frame_a_run(capture_path, policy=None):
    """replay's (records, frames) with every frame run by a test run of its
    own, the replay driver left out."""
    from sluice.replay import Replayer
    replayer = Replayer(policy)
    replayer.chunk_runner.frames_per_run = 1
    try:
        return replayer.run(str(capture_path))
    finally:
        replayer.close()


def read_ahead(capture_path, policy=None, fix_checksums: bool = False):
    """replay's (records, frames) with the capture read by its reader
    process (capture_reader.py), however small; and the Replayer's reader,
    to look at after."""
    from sluice.replay import Replayer
    replayer = Replayer(policy, fix_checksums)
    replayer.read_ahead.min_bytes = 0
    try:
        return replayer.run(str(capture_path))
    finally:
        replayer.close()


def gzipped(path, into):
    import gzip
    into.write_bytes(gzip.compress(path.read_bytes()))
    return into


def cut_short(path, into):
    """The capture cut in its last record, as a capture still being written is."""
    into.write_bytes(path.read_bytes()[:-7])
    return into


@pytest.mark.parametrize("capture", ["eth.pcap", "eth.pcapng", "any.pcap", "reopened", "gzipped", "cut short",
                                     "fix checksums"])
def test_a_capture_read_ahead_gives_what_one_read_here_gives(captures, tmp_path, capture):
    """A large capture is read by a process of its own, while replay runs
    the frames read before: the same lines and frames as reading it in
    replay's own process, over every way a capture is read (pcap, pcapng,
    cooked frames made Ethernet, gzipped, cut short, every checksum fixed)."""
    from sluice.policy import load_policy
    from sluice.replay import replay as replay_capture
    path = {"reopened": lambda: reopened_and_given_up(tmp_path / "reopened.pcap"),
            "gzipped": lambda: gzipped(captures / "eth.pcap", tmp_path / "eth.pcap.gz"),
            "cut short": lambda: cut_short(captures / "eth.pcap", tmp_path / "cut.pcap"),
            "fix checksums": lambda: captures / "any.pcap"}.get(capture, lambda: captures / capture)()
    policy = load_policy(lab_policy_path())
    fix = capture == "fix checksums"
    here = replay_capture(str(path), policy, fix_checksums=fix, read_ahead=False)
    assert here[0] and here[1]
    assert read_ahead(path, policy, fix) == here


def test_chunks_hold_what_the_drivers_map_holds_and_no_frame_is_lost_between_them(tmp_path):
    """A chunk ends at CHUNK_FRAMES frames, or before a frame that would
    take it past CHUNK_BYTES from its first frame's start; a frame longer
    than LONGEST_FRAME (more than a test run takes) is cut to it. Every
    frame runs once, in order, read here or read ahead, as the capture's
    own frames or rewritten as Ethernet (raw IP). Read ahead, the capture's
    own frames go through the reader's memfd slots, each used again."""
    from scapy.layers.l2 import ARP, Ether
    from packets import http_request, tcp_frame
    from sluice.capture import CHUNK_BYTES, CHUNK_FRAMES, LINKTYPE_RAW, LONGEST_FRAME, SHARED_SLOTS, Capture
    from sluice.replay import Replayer, replay as replay_capture
    padding = b"p" * 1400
    frames = [tcp_frame(sport=20000, dport=80, flags="S")]
    frames += [bytes(Ether() / ARP())] * (CHUNK_FRAMES - 2)
    frames += [tcp_frame(http_request("first.example"), sport=20000, dport=80)]     # the first chunk's last
    frames += [tcp_frame(padding, sport=20001, dport=80, flags="A")] * (CHUNK_BYTES // 1400)    # past CHUNK_BYTES
    frames += [bytes(Ether() / ARP()) + bytes(LONGEST_FRAME)]       # cut
    frames += [tcp_frame(padding, sport=20001, dport=80, flags="A")] * (2 * CHUNK_BYTES // 1400)
    frames += [tcp_frame(sport=20002, dport=80, flags="S"),
               tcp_frame(http_request("second.example"), sport=20002, dport=80)]
    for linktype in (None, LINKTYPE_RAW):
        path = tmp_path / f"chunks-{linktype}.pcap"
        if linktype:
            path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1 << 24, linktype) + b"".join(
                struct.pack("<IIII", 0, 0, len(frame) - 14, len(frame) - 14) + frame[14:] for frame in frames))
        else:
            write_capture(path, frames)
        with Capture(str(path)) as capture:
            chunks = [(chunk.lengths, chunk.offsets[-1] + chunk.lengths[-1] - chunk.offsets[0])
                      for chunk in capture.chunks()]
        lengths = [length for chunk_lengths, _span in chunks for length in chunk_lengths]
        assert len(chunks[0][0]) == CHUNK_FRAMES and len(chunks) > SHARED_SLOTS and len(lengths) == len(frames)
        assert all(span <= CHUNK_BYTES for _lengths, span in chunks)
        assert max(lengths) == LONGEST_FRAME
        here = replay_capture(str(path), read_ahead=False, show_progress=False)
        assert [r["name"] for r in here[0]] == ["first.example", None, "second.example"]
        assert read_ahead(path) == here
        replayer = Replayer()
        try:
            assert replayer.run(str(path)) == here
            assert replayer.datapath.counters()["packets"] == len(frames)
        finally:
            replayer.close()


def test_the_reader_never_writes_over_a_chunk_replay_still_holds(tmp_path):
    """While replay holds a chunk, the reader reads ahead as far as it may,
    into the memfd's other slots: the chunk's frames stay as they were
    (each frame here is its own, so a slot written over shows)."""
    from packets import write_capture
    from sluice.capture import CHUNK_BYTES, SHARED_SLOTS
    from sluice.capture_reader import ReadAhead
    frame_bytes = 1400
    frames = [b"\x02" * 12 + b"\x88\xb5" + index.to_bytes(4, "big") * ((frame_bytes - 14) // 4)
              for index in range((SHARED_SLOTS + 2) * CHUNK_BYTES // frame_bytes)]
    write_capture(tmp_path / "distinct.pcap", frames)
    reader = ReadAhead(min_bytes=0)
    try:
        seen = []
        for chunk in reader.chunks(str(tmp_path / "distinct.pcap"), False):
            held = [bytes(chunk.buffer[offset:offset + length]) for offset, length in zip(chunk.offsets, chunk.lengths)]
            time.sleep(0.2)
            assert [bytes(chunk.buffer[offset:offset + length])
                    for offset, length in zip(chunk.offsets, chunk.lengths)] == held
            seen += held
        assert seen == frames
    finally:
        reader.close()


def test_the_reader_process_reports_what_it_cannot_read_and_goes_on(captures, tmp_path):
    """A capture the reader cannot read is replay's error, with the text
    reading it here gives; a reader that died is one too, and the next
    capture gets a new one."""
    from sluice.capture import CaptureError
    from sluice.replay import Replayer, replay as replay_capture
    bogus = tmp_path / "bogus.pcap"
    bogus.write_bytes(b"not a capture at all")
    usb = tmp_path / "usb.pcap"             # link type 189, USB: no frame replay reads
    usb.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 189) + bytes(16))
    expected = replay_capture(str(captures / "eth.pcap"), read_ahead=False)
    replayer = Replayer()
    replayer.read_ahead.min_bytes = 0
    try:
        for path in (bogus, usb):
            with pytest.raises(CaptureError) as here:
                replay_capture(str(path), read_ahead=False)
            with pytest.raises(CaptureError) as ahead:
                replayer.reset()
                replayer.run(str(path))
            assert str(ahead.value) == str(here.value)
            replayer.reset()
            assert replayer.run(str(captures / "eth.pcap")) == expected
        replayer.read_ahead.process.kill()
        replayer.read_ahead.process.join()
        replayer.reset()
        with pytest.raises(CaptureError, match="the capture reader process failed"):
            replayer.run(str(captures / "eth.pcap"))
        replayer.reset()
        assert replayer.run(str(captures / "eth.pcap")) == expected
    finally:
        reader = replayer.read_ahead.process
        replayer.close()
    assert reader is not None and not reader.is_alive()


def replayed(path, frames):
    """frames written to path as a capture and replayed: (records, frames
    read). Every frame runs once (the program's packet counter), and
    running each by a test run of its own gives the same."""
    from sluice.replay import Replayer
    write_capture(path, frames)
    replayer = Replayer()
    try:
        records, frames_read = replayer.run(str(path))
        assert replayer.datapath.counters()["packets"] == frames_read == len(frames)
    finally:
        replayer.close()
    assert one_frame_a_run(path) == (records, frames_read)
    return records


@pytest.mark.parametrize("vlans", [("q",), ("ad", "q")], ids=["802.1q", "qinq"])
def test_a_flow_behind_vlan_tags_is_named_once(tmp_path, vlans):
    """A flow's key holds no VLAN tag: its frames behind tags are one flow,
    named once."""
    from packets import http_request, tcp_frame
    frames = [tcp_frame(sport=20000, dport=80, flags="S", vlans=vlans),
              tcp_frame(http_request("open.example"), sport=20000, dport=80, vlans=vlans)]
    frames += [tcp_frame(b"d" * 100, sport=20000, dport=80, flags="A", reply=True, seq=1 + i * 100, vlans=vlans)
               for i in range(5)]
    records = replayed(tmp_path / "vlan.pcap", frames)
    assert [(r["client_port"], r["name"]) for r in records] == [(20000, "open.example")]


def test_a_servers_segments_before_its_client_names_the_flow_tell_a_real_request_from_a_decoy(tmp_path):
    """Once a bare SYN says which end is the client, the program reads only
    what the client sends (inspect_tcp_segment), but the server's segments
    tell it the server's sequence numbers (note_server_segment): its SYN-ACK,
    and the banner of a server that speaks first (SMTP, FTP), up to which
    the client's real request acknowledges, while a decoy's ACK is for
    bytes never sent. A ClientHello from the server's end names nothing."""
    from packets import client_hello, http_request, tcp_frame
    hello = client_hello(b"blocked.example")
    frames = [tcp_frame(sport=20000, dport=80, flags="S"),
              tcp_frame(sport=20000, dport=80, flags="SA", reply=True, seq=0, ack=1)]
    frames += [tcp_frame(sport=20000, dport=80, flags="A", ack=1)] * 2
    frames += [tcp_frame(b"220 banner\r\n", sport=20000, dport=80, flags="PA", reply=True, seq=1 + i * 12, ack=1)
               for i in range(4)]
    frames += [tcp_frame(hello, sport=20000, dport=80, reply=True, seq=49, ack=1),
               tcp_frame(http_request("blocked.example"), sport=20000, dport=80, ack=49 + len(hello) + 66000),
               tcp_frame(http_request("open.example"), sport=20000, dport=80, ack=49 + len(hello)),
               tcp_frame(b"250 ok\r\n", sport=20000, dport=80, flags="PA", reply=True, seq=49 + len(hello), ack=1)]
    records = replayed(tmp_path / "server-first.pcap", frames)
    assert [(r["client_port"], r["name"]) for r in records] == [(20000, "open.example")]


def test_short_datagrams_name_no_flow_but_a_tunnels(tmp_path):
    """A UDP datagram too short for a QUIC client's Initial opens no flow
    (bpf/quic.h): DNS here gets no line, but a VXLAN frame carries a flow of
    its own, named inside, and a server's short packet between the two
    Initials of a ClientHello keeps no name from its flow."""
    from packets import encapsulate, http_request, tcp_frame, udp_frame
    from quic_packets import crypto_frame, handshake_client_hello, initial_packet, short_header_packet
    frames = []
    for index in range(3):
        frames += [udp_frame(b"q" * 40, sport=53000, dport=53),
                   udp_frame(b"a" * 200, sport=53000, dport=53, reply=True)]
    frames += [encapsulate(tcp_frame(sport=20000, dport=80, flags="S"), "vxlan"),
               encapsulate(tcp_frame(http_request("open.example"), sport=20000, dport=80), "vxlan")]
    stream = handshake_client_hello(b"blocked.example")
    half = len(stream) // 2
    frames += [udp_frame(initial_packet(crypto_frame(0, stream[:half]), size=1200), sport=50000),
               udp_frame(short_header_packet(), sport=50000, reply=True),
               udp_frame(initial_packet(crypto_frame(half, stream[half:]), pn=1, size=1200), sport=50000),
               udp_frame(short_header_packet(), sport=50000, reply=True)]
    records = replayed(tmp_path / "datagrams.pcap", frames)
    assert [(r["client_port"], r["proto"], r["name"]) for r in records] == [
        (20000, "http", "open.example"), (50000, "quic", "blocked.example")]


def test_frames_the_program_does_not_read_name_nothing(tmp_path):
    """ARP, ICMP and SCTP pass the program untouched (parse_frame), behind a
    VLAN tag too, while what IPv4 carries of the encapsulations the program
    opens is read (an HTTP flow inside IP-in-IP, named)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import ARP
    from scapy.layers.sctp import SCTP
    from packets import CLIENT_V4, SERVER_V4, encapsulate, ether, http_request, tcp_frame
    frames = [bytes(ether() / ARP(psrc=CLIENT_V4, pdst=SERVER_V4)),
              bytes(ether() / IP(src=CLIENT_V4, dst=SERVER_V4) / ICMP()),
              bytes(ether(("q",)) / IP(src=CLIENT_V4, dst=SERVER_V4) / ICMP()),
              bytes(ether() / IP(src=CLIENT_V4, dst=SERVER_V4) / SCTP(sport=5000, dport=5000)),
              encapsulate(tcp_frame(sport=20000, dport=80, flags="S"), "ipip"),
              encapsulate(tcp_frame(http_request("open.example"), sport=20000, dport=80), "ipip")]
    records = replayed(tmp_path / "unread.pcap", frames)
    assert [(r["client_port"], r["name"]) for r in records] == [(20000, "open.example")]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_goes_to_the_stderr_of_the_moment(captures, monkeypatch):
    """A replay on a terminal draws its bar on sys.stderr as it is during the
    replay; the stderr of whoever imported the module first may be closed."""
    import sluice.replay
    stale = io.StringIO()
    stale.close()
    monkeypatch.setattr(sys, "stderr", stale)
    importlib.reload(sluice.replay)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sluice.replay, "PROGRESS_AFTER_S", 0.0)
    records, frames = sluice.replay.replay(str(captures / "eth.pcap"))
    assert records and f"eth.pcap: [{'#' * sluice.replay.PROGRESS_WIDTH}] 100%, {frames:,} frames" in terminal.getvalue()


def test_every_flow_gets_its_line_when_the_event_ring_wraps_around(tmp_path):
    """replay reads the program's event ring from its mapped pages
    (program.MappedRing): over more flows than the ring holds events, its
    positions wrap around the ring, and an event lies across its end; no
    line is lost, none comes out of order."""
    from packets import http_request, tcp_frame
    from sluice.abi import ABI
    from sluice.replay import replay as replay_capture
    flows = 2 * ABI.SLUICE_EVENT_RING_BYTES // (ABI.SLUICE_NAME_MAX + 1)    # an event holds a name and more
    frames = []
    for index in range(flows):
        frames += [tcp_frame(sport=20000 + index, dport=80, flags="S"),
                   tcp_frame(http_request(f"host{index}.example"), sport=20000 + index, dport=80)]
    path = tmp_path / "many-flows.pcap"
    write_capture(path, frames)
    records, frames_read = replay_capture(str(path))
    assert frames_read == 2 * flows
    assert [(r["client_port"], r["name"]) for r in records] == [(20000 + i, f"host{i}.example") for i in range(flows)]


def test_replay_reads_the_rings_without_being_woken():
    """replay looks at the rings after every frame it runs, so the program
    puts its records there without waking a reader (a wakeup is an
    irq_work, several times the record's own cost in a VM: bpf/common.h
    ring_flags()); a controller that waits on the rings is woken as before.
    Both get the record."""
    import select
    from packets import http_request, tcp_frame
    from sluice.datapath import Datapath
    from sluice.replay import Replayer
    from sluice.testrun import run_xdp
    frames = [tcp_frame(sport=20000, dport=80, flags="S"),
              tcp_frame(http_request("open.example"), sport=20000, dport=80)]
    replayer = Replayer()
    waiting_controller = Datapath(events=True)
    try:
        for datapath, woken in ((replayer.datapath, False), (waiting_controller, True)):
            with select.epoll() as rings:
                rings.register(datapath.map_fd("events"), select.EPOLLIN)
                for frame in frames:
                    assert run_xdp(datapath.function.fd, frame).verdict == "pass"
                assert bool(rings.poll(0)) == woken, datapath
        replayer.read_rings()
        assert [r["name"] for r in replayer.report.records] == ["open.example"]
        names = []
        waiting_controller.table("events").open_ring_buffer(lambda _ctx, data, _size: names.append(data))
        waiting_controller.poll_rings(0)
        assert len(names) == 1
    finally:
        replayer.close()
        waiting_controller.close()


def test_not_a_capture_is_an_error(tmp_path):
    bogus = tmp_path / "bogus.pcap"
    bogus.write_bytes(b"not a capture at all")
    result = subprocess.run([*SLUICE, "replay", str(bogus)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not a pcap or pcapng file" in result.stderr


def test_replay_names_quic_flows_even_when_the_client_hello_spans_datagrams(tmp_path):
    """aioquic's first flights, v1 and v2, one with a ClientHello of two datagrams."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import wrpcap
    big_alpn = ["h3", *(f"proto-{i:02d}-" + "x" * 190 for i in range(8))]
    frames = []
    for sport, name, version, alpn in ((50001, "blocked.example", 0x00000001, ["h3"]),
                                       (50002, "cdn.blocked.example", 0x6B3343CF, ["h3"]),
                                       (50003, "open.example", 0x00000001, big_alpn)):
        configuration = QuicConfiguration(is_client=True, server_name=name, alpn_protocols=alpn,
                                          supported_versions=[version])
        connection = QuicConnection(configuration=configuration)
        connection.connect((SERVER_V4, 443), now=0.0)
        datagrams = [data for data, _address in connection.datagrams_to_send(now=0.0)]
        assert len(datagrams) == (2 if alpn is big_alpn else 1)
        frames += [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=CLIENT_V4, dst=SERVER_V4)
                   / UDP(sport=sport, dport=443) / Raw(data) for data in datagrams]
    wrpcap(str(tmp_path / "quic.pcap"), frames)
    records = {r["name"]: r for r in replay("--policy", lab_policy_path(), str(tmp_path / "quic.pcap"))}
    assert records["blocked.example"] == {"client": CLIENT_V4, "client_port": 50001, "server": SERVER_V4,
                                          "server_port": 443, "proto": "quic", "name": "blocked.example",
                                          "rule": "block-lab", "action": "block", "method": "drop"}
    assert records["cdn.blocked.example"]["rule"] == "block-lab"
    assert records["open.example"]["proto"] == "quic" and records["open.example"]["rule"] is None


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_capture_from_the_sender_gets_the_checksums_its_nic_filled(v6, tmp_path):
    """tcpdump on the sending host sees TCP checksums the NIC has yet to fill
    (the pseudo-header's sum only; 0 for an IPv4 header): replay fills them,
    so that the segments are not taken for decoys the server drops; a wrong
    checksum stays wrong.
    The capture reader fills them a chunk at a time: behind no, one, two and
    three VLAN tags, among frames it leaves as they are."""
    import socket

    from sluice.capture import Capture, _ones_sum, fill_offloaded_checksum
    from packets import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, client_hello, tcp_frame, udp_frame
    hello = client_hello(b"blocked.example")
    length = 20 + len(hello)
    if v6:
        pseudo = (socket.inet_pton(socket.AF_INET6, CLIENT_V6) + socket.inet_pton(socket.AF_INET6, SERVER_V6) +
                  struct.pack("!II", length, 6))
    else:
        pseudo = socket.inet_aton(CLIENT_V4) + socket.inet_aton(SERVER_V4) + struct.pack("!BBH", 0, 6, length)
    half_done, whole, wrong = [], [], []
    for vlans in ((), ("q",), ("ad", "q"), ("ad", "q", "q")):
        half_done.append(tcp_frame(hello, v6=v6, vlans=vlans, chksum=_ones_sum(pseudo)))
        whole.append(tcp_frame(hello, v6=v6, vlans=vlans))
        wrong.append(tcp_frame(hello, v6=v6, vlans=vlans, chksum=0xBEEF))
        assert fill_offloaded_checksum(half_done[-1]) == whole[-1]
        assert fill_offloaded_checksum(whole[-1]) == whole[-1]
        assert fill_offloaded_checksum(wrong[-1]) == wrong[-1]
        if not v6:      # Windows and macOS leave the IPv4 header's to the NIC too, as 0
            half_done.append(tcp_frame(hello, vlans=vlans, ip_chksum=0, chksum=_ones_sum(pseudo)))
            whole.append(whole[-1])
            wrong.append(tcp_frame(hello, vlans=vlans, ip_chksum=0xBEEF))
            assert fill_offloaded_checksum(half_done[-1]) == whole[-1]
            assert fill_offloaded_checksum(wrong[-1]) == wrong[-1]
    others = [udp_frame(v6=v6), tcp_frame(v6=v6, flags="S"), tcp_frame(hello, v6=v6)[:40]]
    frames = [frame for group in zip(half_done, wrong, whole) for frame in group] + others
    write_capture(tmp_path / "sender.pcap", frames)
    with Capture(str(tmp_path / "sender.pcap")) as capture:
        read = [bytes(chunk.buffer[offset:offset + length]) for chunk in capture.chunks()
                for offset, length in zip(chunk.offsets, chunk.lengths)]
    assert read == [fill_offloaded_checksum(frame) for frame in frames]
    assert read[:3 * len(whole):3] == whole
    # The reader process fills them in its own copy of the capture, and
    # replay's process makes the same changes in its own (capture_reader.py).
    from sluice.capture_reader import ReadAhead
    reader = ReadAhead(min_bytes=0)
    try:
        for path in (tmp_path / "sender.pcap", gzipped(tmp_path / "sender.pcap", tmp_path / "sender.pcap.gz")):
            for fix in (False, True):
                with Capture(str(path), fix) as capture:
                    here = [bytes(chunk.buffer[offset:offset + length]) for chunk in capture.chunks()
                            for offset, length in zip(chunk.offsets, chunk.lengths)]
                ahead = [bytes(chunk.buffer[offset:offset + length])
                         for chunk in reader.chunks(str(path), fix)
                         for offset, length in zip(chunk.offsets, chunk.lengths)]
                assert ahead == here, (path.name, fix)
                assert here == read if not fix else here != read
    finally:
        reader.close()


def anonymised(frame: bytes, v6: bool) -> bytes:
    """frame with the last byte of each address changed, as an anonymiser
    that fixes no checksum leaves it: its IPv4 header and TCP or UDP
    checksums then wrong."""
    from scapy.layers.l2 import Ether
    from packets import IP, IPv6
    packet = Ether(frame)
    start = len(packet) - len(packet[IPv6 if v6 else IP])
    at = (start + 23, start + 39) if v6 else (start + 15, start + 19)
    changed = bytearray(frame)
    for offset in at:
        changed[offset] ^= 0x01
    return bytes(changed)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_fix_checksums_names_a_capture_anonymised_without_fixing_them(v6, tmp_path):
    """nDPI's dnscrypt-v2-doh.pcap had its addresses rewritten so: every
    segment looks like a decoy the server drops, and nothing is named.
    --fix-checksums makes the checksums right first."""
    from packets import client_hello, tcp_frame
    frames = [tcp_frame(flags="S", seq=0, v6=v6), tcp_frame(flags="SA", seq=0, ack=1, v6=v6, reply=True),
              tcp_frame(flags="A", seq=1, ack=1, v6=v6), tcp_frame(client_hello(b"blocked.example"), ack=1, v6=v6)]
    path = tmp_path / "anonymised.pcap"
    write_capture(path, [anonymised(frame, v6) for frame in frames])
    assert [r["name"] for r in replay("--policy", lab_policy_path(), str(path))] == [None]
    assert [(r["name"], r["action"]) for r in replay("--policy", lab_policy_path(), "--fix-checksums", str(path))] \
        == [("blocked.example", "block")]


def test_fix_checksums_makes_each_checksum_right_but_a_fragments_transport_one():
    """Each checksum fix_checksums writes is the one scapy computes: IPv4
    with options, IPv6, TCP and UDP, behind VLAN tags; a UDP checksum left
    out over IPv4 stays out, and a fragment keeps its transport checksum,
    which spans the whole datagram."""
    from scapy.layers.l2 import Ether

    from sluice.capture import fix_checksums
    from packets import IP, TCP, UDP, client_hello, ip_fragments, tcp_frame, udp_frame

    def scapys(frame: bytes) -> bytes:
        packet = Ether(frame)
        if IP in packet:
            del packet[IP].chksum
        if IP not in packet or not (packet[IP].frag or packet[IP].flags.MF):
            for layer in (TCP, UDP):
                if layer in packet:
                    del packet[layer].chksum
        return bytes(packet)

    hello = client_hello(b"blocked.example")
    no_udp_checksum = Ether(udp_frame(hello))
    no_udp_checksum[UDP].chksum = 0
    frames = {"ipv4 options": tcp_frame(hello, ip_options=[b"\x01\x01\x01\x00"]),
              "ipv6": tcp_frame(hello, v6=True), "qinq": tcp_frame(hello, vlans=("ad", "q")),
              "udp": udp_frame(hello), "udp ipv6": udp_frame(hello, v6=True),
              "first fragment": ip_fragments(tcp_frame(hello), 64)[0],
              "later fragment": ip_fragments(tcp_frame(hello), 64)[1]}
    for kind, frame in frames.items():
        broken = anonymised(frame, IP not in Ether(frame))
        assert broken != scapys(broken), kind
        assert fix_checksums(broken) == scapys(broken), kind
    broken = anonymised(bytes(no_udp_checksum), False)
    assert Ether(fix_checksums(broken))[UDP].chksum == 0
    short_header = bytearray(tcp_frame(hello))
    short_header[14] = 0x44                 # IHL 4: no IPv4 header a receiver reads, nothing to fix
    assert fix_checksums(bytes(short_header)) == bytes(short_header)


def test_several_captures_at_once_give_what_each_gives_alone_in_the_order_given(tmp_path):
    """--jobs 2: each capture in a process of its own; the lines come in the
    order the captures were named, each naming its capture."""
    from sluice.policy import load_policy
    from sluice.replay import replay as replay_capture
    whole = reopened_and_given_up(tmp_path / "whole.pcap")
    start = tmp_path / "start.pcap"
    write_capture(start, read_capture(whole)[:13])    # to the second flow on port 41000
    records = replay("--policy", lab_policy_path(), "--jobs", "2", str(whole), str(start))
    policy = load_policy(lab_policy_path())
    expected = [{"capture": str(path), **record} for path in (whole, start)
                for record in replay_capture(str(path), policy)[0]]
    assert records == expected
    assert [r["client_port"] for r in records if r["capture"] == str(start)] == [41000, 41000]


@pytest.mark.parametrize("repeats", [6, 30])
@pytest.mark.parametrize("fake_first", [True, False], ids=["fake-first", "fake-after"])
def test_a_fake_quic_initial_of_another_connection_does_not_name_the_flow(tmp_path, fake_first, repeats):
    """zapret's fake Initial (its own DCID, an unblocked name, repeated, more
    times than the inspection window holds datagrams too) beside the real
    one: the flow's line names the stricter, in its place, in batches or a
    frame a test run."""
    from packets import udp_frame
    from quic_packets import crypto_frame, handshake_client_hello, initial_packet, short_header_packet
    from sluice.policy import load_policy
    from sluice.replay import replay as replay_capture
    fake = udp_frame(initial_packet(crypto_frame(0, handshake_client_hello(b"www.google.com")), dcid=b"\x0f" * 8,
                                    size=1200), sport=50001)
    real = udp_frame(initial_packet(crypto_frame(0, handshake_client_hello(b"blocked.example")), dcid=b"\xa1" * 8,
                                    size=1200), sport=50001)
    sent = [fake] * repeats + [real] if fake_first else [real] + [fake] * repeats
    frames = [udp_frame(initial_packet(crypto_frame(0, handshake_client_hello(b"open.example")), size=1200),
                        sport=50000), *sent, udp_frame(short_header_packet(), sport=50001, reply=True)]
    path = tmp_path / "fake-initial.pcap"
    write_capture(path, frames)
    policy = load_policy(lab_policy_path())
    records, frames_read = replay_capture(str(path), policy)
    assert one_frame_a_run(path, policy) == (records, frames_read)
    assert [(r["client_port"], r["name"], r["action"]) for r in records] == [
        (50000, "open.example", None), (50001, "blocked.example", "block")]


@pytest.mark.parametrize("blocked", ["real", "fake-between"])
def test_fake_quic_initials_around_a_hello_of_two_datagrams_hide_nothing(tmp_path, blocked):
    """Broken fakes ahead of a hello of two datagrams (Chrome's post-quantum
    hellos), and a whole fake Initial of another connection between them:
    the flow's line names the strictest, in batches or a frame a test run."""
    from packets import udp_frame
    from quic_packets import (broken_fakes, crypto_frame, handshake_client_hello, initial_packet,
                              short_header_packet, two_datagram_hello)
    from sluice.policy import load_policy
    from sluice.replay import replay as replay_capture
    real_name, fake_name = (b"blocked.example", b"open.example") if blocked == "real" else \
        (b"open.example", b"blocked.example")
    first, second = two_datagram_hello(real_name, b"\xa1" * 8)
    fake = initial_packet(crypto_frame(0, handshake_client_hello(fake_name)), dcid=b"\x0f" * 8, size=1200)
    sent = [*broken_fakes(b"www.google.com"), first, fake, second]
    frames = [udp_frame(datagram, sport=50001) for datagram in sent]
    path = tmp_path / "fakes-around-a-hello.pcap"
    write_capture(path, [*frames, udp_frame(short_header_packet(), sport=50001, reply=True)])
    policy = load_policy(lab_policy_path())
    records, frames_read = replay_capture(str(path), policy)
    assert one_frame_a_run(path, policy) == (records, frames_read)
    assert [(r["client_port"], r["name"], r["action"]) for r in records] == [(50001, "blocked.example", "block")]
