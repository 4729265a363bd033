"""Names extracted and packets per second: `sluice replay` against nDPI's ndpiReader, on one capture.

Run as root:  .venv/bin/python bench/ndpi.py [--flows 5000] [--pairs 3] [--corpus DIR]

The capture is built with scapy: TCP flows with a handshake, a ClientHello
(or an HTTP request) and a few data packets each, over ports 443, 8443 and
80, with names in varied case and some with a trailing dot. Both tools read
the same file; the script prints how many flows each named, where they
disagree, and their packets per second: sluice replay's run over the
capture (a program loaded once, its flow tables emptied before each run, as
bench/ndpi_corpus.py does), alternated with ndpiReader --pairs times. The machine is shared and busy: the ratios to ndpiReader's
own figure (which excludes its start-up) are what count.

--corpus DIR: instead, real traffic: every capture of nDPI's regression
corpus (DIR is a checkout of ntop/nDPI, as for bench/ndpi_corpus.py) that
replay reads, one after another in one Ethernet pcap (frames of other link
types as replay turns them into Ethernet; timestamps 1 ms apart). There is
no ground truth there: the script prints how many flows each tool named.
"""

import argparse
import random
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scapy.all import IP, TCP, Ether, Raw, wrpcap
from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sluice.names import normalise  # noqa: E402
from sluice.capture import Capture, CaptureError  # noqa: E402
from ndpi_corpus import CORPUS, Corpus  # noqa: E402

MACS = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
DATA_PACKETS = 4


def flow_packets(index: int, name: str, kind: str):
    client = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
    sport, dport = 10000 + index % 50000, {"tls": 443, "tls-8443": 8443, "http": 80}[kind]
    up = Ether(**MACS) / IP(src=client, dst="198.51.100.2")
    down = Ether(**MACS) / IP(src="198.51.100.2", dst=client)
    first = (bytes(TLS(msg=[TLSClientHello(ext=[TLS_Ext_ServerName(servernames=[ServerName(servername=name)])])]))
             if kind.startswith("tls") else f"GET / HTTP/1.1\r\nHost: {name}\r\nAccept: */*\r\n\r\n".encode())
    packets = [up / TCP(sport=sport, dport=dport, flags="S", seq=1000),
               down / TCP(sport=dport, dport=sport, flags="SA", seq=5000, ack=1001),
               up / TCP(sport=sport, dport=dport, flags="A", seq=1001, ack=5001),
               up / TCP(sport=sport, dport=dport, flags="PA", seq=1001, ack=5001) / Raw(first)]
    seq = 5001
    for _ in range(DATA_PACKETS):
        packets.append(down / TCP(sport=dport, dport=sport, flags="A", seq=seq, ack=1001 + len(first)) /
                       Raw(bytes(1200)))
        seq += 1200
    return packets


def build_capture(path: Path, flows: int) -> dict[tuple[str, int], str]:
    """Write the capture; returns (client, client port) -> the name the flow carried, normalised."""
    rng = random.Random(7)
    truth, packets = {}, []
    for index in range(flows):
        name = f"www{index}.{rng.choice(['video', 'cdn', 'api', 'img'])}-{index % 97}.example"
        if index % 10 == 0:
            name = name.upper()
        if index % 13 == 0:
            name += "."
        kind = rng.choice(["tls", "tls", "tls-8443", "http"])
        packets += flow_packets(index, name, kind)
        truth[(f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}", 10000 + index % 50000)] = \
            normalise(name.encode()).decode()
    wrpcap(str(path), packets)
    return truth


def build_corpus_capture(path: Path, ndpi: Path) -> int:
    """Write nDPI's regression captures, one after another, as one Ethernet
    pcap; returns the number of frames."""
    frames = 0
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for source in sorted((ndpi / CORPUS / "pcap").iterdir()):
            try:
                with Capture(str(source)) as capture:
                    for chunk in capture.chunks():
                        for offset, length in zip(chunk.offsets, chunk.lengths):
                            out.write(struct.pack("<IIII", frames // 1000, frames % 1000 * 1000, length, length))
                            out.write(chunk.buffer[offset:offset + length])
                            frames += 1
            except CaptureError:
                continue                    # a link type replay does not read
    return frames


def ndpi_names(path: Path) -> tuple[dict, float]:
    """(client, port) -> name as ndpiReader reports it; and its packets per second."""
    # errors="replace": real captures hold names that are not UTF-8, and nDPI prints them as they are.
    result = subprocess.run(["ndpiReader", "-i", str(path), "-v", "2"], capture_output=True, text=True,
                            errors="replace", check=True, timeout=600)
    names = {}
    flow = re.compile(r"TCP (\d+\.\d+\.\d+\.\d+):(\d+) <-> \S+.*?\[(?:Hostname/SNI|Host): ([^\]]+)\]")
    for match in flow.finditer(result.stdout):
        names[(match[1], int(match[2]))] = match[3].strip()
    throughput = re.search(r"nDPI throughput:\s+([\d.]+) ([KM]?) pps", result.stdout)
    scale = {"": 1, "K": 1e3, "M": 1e6}[throughput[2]] if throughput else 0
    return names, float(throughput[1]) * scale if throughput else 0.0


def sluice_frames_per_second(corpus: Corpus, capture: Path) -> tuple[float, list[dict]]:
    """Replay's rate over the capture, from empty flow tables, all but the
    compile: reading the capture, running its frames, the lines of flows
    left unsettled; and its records."""
    corpus.reset()
    started = time.monotonic()
    records, frames = corpus.run(str(capture))
    return frames / (time.monotonic() - started), records


def show(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--corpus", type=Path, help="a checkout of ntop/nDPI: replay its captures, in one")
    args = parser.parse_args()
    rates = {"ndpiReader": [], "sluice replay": []}
    corpus = Corpus()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            capture = Path(tmp) / "flows.pcap"
            if args.corpus:
                truth, frames = None, build_corpus_capture(capture, args.corpus)
            else:
                truth = build_capture(capture, args.flows)
                frames = args.flows * (4 + DATA_PACKETS)
            for _ in range(args.pairs):
                ndpi, ndpi_pps = ndpi_names(capture)
                rates["ndpiReader"].append(ndpi_pps)
                rate, records = sluice_frames_per_second(corpus, capture)
                rates["sluice replay"].append(rate)
    finally:
        corpus.close()
    sluice = {(r["client"], r["client_port"]): r["name"] for r in records if r["name"]}
    if truth is None:
        print(f"capture: nDPI's corpus ({args.corpus / CORPUS / 'pcap'}), {frames} frames\n"
              f"sluice replay named {sum(1 for r in records if r['name'])} flows; "
              f"ndpiReader {len(ndpi)} (IPv4 TCP flows with a host name only)")
        print_rates(args.pairs, rates)
        return 0
    print(f"capture: {args.flows} flows, {frames} frames\n")
    for label, found in (("sluice replay", sluice), ("ndpiReader", ndpi)):
        right = sum(1 for key, name in found.items() if truth.get(key) == normalise(name.encode()).decode())
        print(f"{label:<14} named {len(found):>6} flows, {right:>6} correctly once normalised "
              f"({right / len(truth):.1%} of all flows)")
    differing = [(key, truth[key], sluice.get(key), ndpi.get(key)) for key in truth
                 if sluice.get(key) != ndpi.get(key)]
    print(f"flows where the two report different strings: {len(differing)}")
    for key, sent, by_sluice, by_ndpi in differing[:5]:
        print(f"  {key[0]}:{key[1]} sent {sent!r}: sluice {by_sluice!r}, nDPI {by_ndpi!r}")
    print_rates(args.pairs, rates)
    return 0


def print_rates(pairs: int, rates: dict[str, list[float]]) -> None:
    print(f"\n{pairs} alternations; frames per second, median of the runs, and the ratio to ndpiReader's "
          "packets per second of the same pair: median (lowest-highest)")
    for label, values in rates.items():
        ratio = show([v / n for v, n in zip(values, rates["ndpiReader"])]) if label != "ndpiReader" else ""
        print(f"  {label:<24}{statistics.median(values):>12,.0f}/s  {ratio}")


if __name__ == "__main__":
    sys.exit(main())
