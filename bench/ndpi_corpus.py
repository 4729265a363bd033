"""Names nDPI gives against names sluice gives, on nDPI's own regression captures.

Run as root:  .venv/bin/python bench/ndpi_corpus.py --ndpi DIR [--proto quic] [--misses] [--proxy-protocol]
              [--fix-checksums]

DIR is a checkout of ntop/nDPI (fetch it; the project keeps none of its
files, nDPI is LGPL). The ground truth is nDPI's expected output,
tests/cfgs/default/result/<capture>.out: each flow whose protocol is TLS,
HTTP or QUIC (whatever the application after the dot) and that carries a
"Hostname/SNI". Each capture holding such a flow runs through the data
plane as `sluice replay` runs it (controller/replay.py: the same program by
BPF_PROG_TEST_RUN, QUIC Initials read by the controller's own code), with
one program loaded for the whole corpus and its flow tables emptied between
captures, since a compile per capture would take most of the run. Each flow
nDPI names is looked up among sluice's records by its endpoints, either way
round.

Prints, per protocol: the flows nDPI names, the flows sluice names the same
(same protocol, same name; a name nDPI cut short matches its beginning),
the misses by reason, and the flows sluice names that nDPI leaves unnamed.
--misses lists each miss. --proxy-protocol steps over PROXY protocol
headers, as a policy with inspection.proxy_protocol: true does (nDPI names
such a flow HAProxy, and leaves the hello behind the header unnamed).
--fix-checksums makes every checksum right first, as `sluice replay
--fix-checksums` does: some captures had their addresses rewritten without
fixing them (dnscrypt-v2-doh.pcap), and sluice, as the server would, takes
their every segment for a decoy.
"""

import argparse
import ipaddress
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sluice.abi import ABI  # noqa: E402
from sluice.replay import CaptureError, Replayer  # noqa: E402

CORPUS = Path("tests/cfgs/default")
PROTOCOLS = {"TLS": ("tls", "TCP"), "HTTP": ("http", "TCP"), "QUIC": ("quic", "UDP")}
NDPI_NAME_MAX = 79                          # nDPI keeps 80 bytes of a host name, NUL included
FLOW_LINE = re.compile(r"^\s+\d+\s+(TCP|UDP)\s+(\S+)\s+<?->\s+(\S+)\s+\[proto: [\d.]+/([^\]]+)\]")
HOST_NAME = re.compile(r"\[Hostname/SNI: ([^\]]*)\]")


@dataclass(frozen=True)
class NamedFlow:
    capture: str
    proto: str                              # TLS, HTTP, QUIC
    endpoints: frozenset                    # {(address, port), (address, port)}
    name: str


def endpoint(text: str) -> tuple[str | None, int]:
    """'192.0.2.1:443' or '[2001:db8::1]:443' as (address, port), the address
    in canonical form, or None where nDPI printed it wrong (it writes some
    IPv6 addresses with two '::'): the ports and the other address then
    find the flow."""
    host, port = text.rsplit(":", 1)
    try:
        return str(ipaddress.ip_address(host.strip("[]"))), int(port)
    except ValueError:
        return None, int(port)


def normal(name: str) -> str:
    return name.lower().rstrip(".")


def printable(text: str) -> str:
    """text with each character a terminal would not show as itself escaped
    (a fuzzed capture's name may hold a NUL; git then takes the results for binary)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def ground_truth(ndpi: Path, protos: set[str]) -> dict[str, list[NamedFlow]]:
    """capture file name -> the flows of the wanted protocols nDPI names in it."""
    truth = {}
    for result in sorted((ndpi / CORPUS / "result").glob("*.out")):
        capture = result.name.removesuffix(".out")
        flows = []
        for line in result.read_text(errors="replace").splitlines():
            match = FLOW_LINE.match(line)
            name = HOST_NAME.search(line)
            if not match or not name or not name.group(1):
                continue
            l4, first, second, protocol = match.groups()
            master = protocol.split(".")[0]
            if master in protos and PROTOCOLS[master][1] == l4:
                flows.append(NamedFlow(capture, master, frozenset((endpoint(first), endpoint(second))),
                                       normal(name.group(1))))
        if flows and (ndpi / CORPUS / "pcap" / capture).exists():
            truth[capture] = flows
    return truth


class Corpus(Replayer):
    """One loaded data plane that replays capture after capture, every frame of each."""

    def __init__(self, proxy_protocol: bool = False, fix_checksums: bool = False):
        super().__init__(None, fix_checksums)
        if proxy_protocol:
            flags = self.datapath.config().flags
            self.datapath.set_config(flags=flags | ABI.SLUICE_CFG_PROXY_PROTOCOL)

    def replay(self, capture: Path) -> list[dict]:
        self.reset()
        return self.run(str(capture))[0]


def compare(flows: list[NamedFlow], records: list[dict]) -> tuple[Counter, list[tuple[NamedFlow, str]], Counter]:
    """(named the same by protocol, misses with their reason, flows sluice names that nDPI does not, by protocol)."""
    by_ports = defaultdict(list)
    for record in records:
        by_ports[frozenset((record["client_port"], record["server_port"]))].append(record)

    def found(flow: NamedFlow, record: dict) -> bool:
        ends = {(record["client"], record["client_port"]), (record["server"], record["server_port"])}
        return all(end in ends or end[0] is None for end in flow.endpoints)

    same, misses = Counter(), []
    for flow in flows:
        candidates = [r for r in by_ports.get(frozenset(port for _, port in flow.endpoints), []) if found(flow, r)]
        proto = PROTOCOLS[flow.proto][0]
        names = {normal(r["name"]) for r in candidates if r["name"] and r["proto"] == proto}
        if flow.name in names or (len(flow.name) >= NDPI_NAME_MAX and any(n.startswith(flow.name) for n in names)):
            same[flow.proto] += 1
        elif not candidates:
            misses.append((flow, "no flow"))
        elif names:
            misses.append((flow, f"another name ({sorted(names)[0]})"))
        elif any(r["name"] for r in candidates):
            misses.append((flow, "named as another protocol"))
        else:
            misses.append((flow, "flow without a name"))
    named_ports = {frozenset(port for _, port in flow.endpoints) for flow in flows}
    extra = Counter(record["proto"] for record in records
                    if record["name"] and frozenset((record["client_port"], record["server_port"])) not in named_ports)
    return same, misses, extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ndpi", type=Path, required=True, help="a checkout of ntop/nDPI")
    parser.add_argument("--proto", action="append", choices=[p.lower() for p in PROTOCOLS],
                        help="only these protocols (repeatable; default: all three)")
    parser.add_argument("--misses", action="store_true", help="list every miss")
    parser.add_argument("--proxy-protocol", action="store_true", help="step over PROXY protocol headers")
    parser.add_argument("--fix-checksums", action="store_true",
                        help="make every checksum right first, as sluice replay --fix-checksums does")
    args = parser.parse_args()
    if not (args.ndpi / CORPUS / "result").is_dir():
        print(f"{args.ndpi}: no {CORPUS}/result here: not a checkout of ntop/nDPI", file=sys.stderr)
        return 2
    protos = {p.upper() for p in args.proto} if args.proto else set(PROTOCOLS)
    truth = ground_truth(args.ndpi, protos)
    named, same, reasons, extra, misses = Counter(), Counter(), defaultdict(Counter), Counter(), []
    corpus = Corpus(args.proxy_protocol, args.fix_checksums)
    try:
        for capture, flows in truth.items():
            named.update(flow.proto for flow in flows)
            try:
                records = corpus.replay(args.ndpi / CORPUS / "pcap" / capture)
            except CaptureError as error:
                misses += [(flow, f"capture refused: {error}") for flow in flows]
                continue
            capture_same, capture_misses, capture_extra = compare(flows, records)
            same += capture_same
            misses += capture_misses
            extra += capture_extra
    finally:
        corpus.close()
    for flow, reason in misses:
        reasons[flow.proto][re.sub(r" \(.*", "", reason)] += 1
    print(f"nDPI {args.ndpi}: {len(truth)} captures with named {'/'.join(sorted(protos))} flows")
    print(f"{'proto':6} {'nDPI names':>10} {'sluice same':>11} {'share':>7}  "
          "misses by reason; sluice names nDPI does not")
    for proto in sorted(protos):
        share = f"{100 * same[proto] / named[proto]:.1f}%" if named[proto] else "-"
        why = ", ".join(f"{reason}: {count}" for reason, count in reasons[proto].most_common()) or "none"
        print(f"{proto:6} {named[proto]:>10} {same[proto]:>11} {share:>7}  {why}; "
              f"{extra[PROTOCOLS[proto][0]]} more named")
    if args.misses:
        for flow, reason in misses:
            ends = " <-> ".join(f"[{address}]:{port}" if address and ":" in address else f"{address}:{port}"
                                for address, port in sorted(flow.endpoints, key=str))
            print(printable(f"  {flow.capture}: {flow.proto} {ends} {flow.name}: {reason}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
