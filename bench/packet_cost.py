"""Per-packet cost of the data plane, by BPF_PROG_TEST_RUN, against an empty XDP program.

Run as root:  .venv/bin/python bench/packet_cost.py [--repeat N] [--sizes 10,10000,100000,1000000]
                                                    [--prefixes 1000000]
              .venv/bin/python bench/packet_cost.py --against REV[,REV...]

For each policy size (domain rules), and once more with --prefixes client
prefixes in the policy's client class, it prints, per packet kind, two
ratios: to an empty XDP program compiled the same way, and to a floor
program that only parses the headers and looks the flow up in a table like
sluice's. This machine is shared and its speed drifts by the minute, so a
ratio is never taken against a baseline measured once: each figure is
--pairs alternations of a short burst of the baseline and a burst of the
program (A B A B ...), a ratio per pair, and the median of those ratios
printed with their spread (lowest-highest). The ns per packet (the
kernel's own average over a burst, median of the bursts) are context only.
It also prints the time to compile and load each policy and the kernel
memory of its maps.

With --against, it measures only the packets of known flows (established,
blocked, throttled), each paired with the same packet through the data
plane of each git revision given (of this repository, checked out in a
temporary worktree and loaded by its own controller code): a change's cost
to flows it should not touch.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import bcc
from scapy.all import IP, TCP, UDP, Ether, Raw
from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sluice.abi import bpf_source_dir  # noqa: E402
from sluice.datapath import Datapath  # noqa: E402
from sluice.libbpf import LIBBPF, MapInfo, object_info  # noqa: E402
from sluice.policy import load_policy  # noqa: E402
from sluice.testrun import run_xdp  # noqa: E402
from packets import GRE_KEY, GTPU_PDU_SESSION_CONTAINER, encapsulate  # noqa: E402

CLIENT, SERVER = "192.0.2.2", "198.51.100.2"
CLIENT_MAC, EDGE_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
# Explicit addresses: without them scapy would ARP for each frame it builds.
ETHER = Ether(src=CLIENT_MAC, dst=EDGE_MAC)


def client_hello(name: bytes) -> bytes:
    return bytes(TLS(msg=[TLSClientHello(ext=[TLS_Ext_ServerName(servernames=[ServerName(servername=name)])])]))


def tcp(sport, payload=b"", flags="A", reply=False, offset=0):
    ip = IP(src=SERVER, dst=CLIENT) if reply else IP(src=CLIENT, dst=SERVER)
    ports = dict(sport=443, dport=sport) if reply else dict(sport=sport, dport=443)
    # A payload starts the stream the SYN (at sequence number 0) opened; offset: from that start.
    return bytes(ETHER / ip / TCP(flags=flags, seq=0 if "S" in flags else 1 + offset, **ports) / Raw(payload))


def write_policy(directory: Path, rules: int, prefixes: int) -> Path:
    """A policy blocking `rules` names plus the names the cases use, with a
    client class of `prefixes` prefixes (the client's own among them)."""
    names = directory / "names.txt"
    with names.open("w") as out:
        for i in range(rules):
            out.write(f"host{i}.bench-{i % 997}.example\n")
    with (directory / "prefixes.txt").open("w") as out:
        out.write(f"{CLIENT}/32\n")
        for i in range(prefixes - 1):
            out.write(f"10.{i >> 12 & 255}.{i >> 4 & 255}.{(i & 15) << 4}/28\n")
    policy = directory / "policy.yaml"
    policy.write_text(
        "version: 1\nclasses:\n  lan: {prefixes_file: prefixes.txt}\nrules:\n"
        "  - name: lan-only\n    action: block\n    class: lan\n    domains: [classed.example]\n"
        "  - name: feed\n    action: block\n    domains_file: names.txt\n"
        "  - name: blocked\n    action: block\n    domains: [blocked.example]\n"
        # Both throttles at a rate no burst of test runs reaches, so that every packet conforms and
        # pays the whole policer: the default burst (500 ms at the rate) is policed on the coarse
        # clock, 1 MiB (21 us at 400gbit) on the precise one (sluice/clocks.py).
        "  - name: slow\n    action: throttle\n    rate: 400gbit\n    domains: [slow.example]\n"
        "  - name: slow-shallow\n    action: throttle\n    rate: 400gbit\n    burst: 1MiB\n"
        "    domains: [shallow.example]\n")
    return policy


MAP_NAMES = ("flows", "ipv6_flows", "ipv6_flow_numbers", "domain_rules", "rule_sets", "client_classes", "rules",
             "rule_stats", "counters", "config", "payload_buffers", "events", "event_buffers", "rule_clocks",
             "client_clocks", "stages", "streams", "empty_streams", "stream_views", "handshake_buffers",
             "quic_datagrams", "quic_datagram_layout")


def map_memory_bytes(datapath) -> int:
    """memlock of every map the data plane created, as the kernel accounts it."""
    # By fd, not through table(): building a Table object for each map would
    # refuse per-CPU values that ctypes cannot align.
    ids = {_map_id(datapath.map_fd(name)) for name in MAP_NAMES}
    maps = json.loads(subprocess.check_output(["bpftool", "-j", "map", "show"]))
    return sum(entry.get("bytes_memlock", 0) for entry in maps if entry["id"] in ids)


def _map_id(fd: int) -> int:
    info = MapInfo()
    object_info(fd, info)
    return info.id


class Paired:
    """A program's cost as ratios to baselines, each from its own alternation of bursts."""

    def __init__(self, baselines: dict[str, int], sample: bytes, repeat: int, pairs: int):
        self.baselines, self.sample, self.repeat, self.pairs = baselines, sample, repeat, pairs

    def measure(self, fd: int, frame: bytes, repeat: int | None = None, prepare=()) -> dict:
        """{"ns": median ns/packet, name: (median, lowest, highest) ratio to that baseline, ...}."""
        repeat = repeat or self.repeat
        for setup in prepare:
            run_xdp(fd, setup)
        own, ratios = [], {name: [] for name in self.baselines}
        for _ in range(self.pairs):
            for name, baseline_fd in self.baselines.items():
                base = run_xdp(baseline_fd, self.sample, repeat).duration_ns
                ns = run_xdp(fd, frame, repeat).duration_ns
                own.append(ns)
                ratios[name].append(ns / max(base, 1))
        result = {"ns": statistics.median(own)}
        for name, values in ratios.items():
            result[name] = (statistics.median(values), min(values), max(values))
        return result


    def measure_flows(self, fd: int, flow, flows: int, ports) -> dict:
        """Like measure, for a whole flow: flow(port) gives its frames, each run once; the
        baseline runs the same frames. ports: the client ports not used yet in this data
        plane (a SYN on a port used before is a retransmission, not a new flow: flow.h).
        {"ns": median ns per flow, name: ratio, ...}."""
        own, ratios = [], {name: [] for name in self.baselines}
        for _ in range(self.pairs):
            for name, baseline_fd in self.baselines.items():
                sequences = [flow(next(ports)) for _ in range(flows)]
                base = sum(run_xdp(baseline_fd, frame).duration_ns for frames in sequences for frame in frames)
                ns = sum(run_xdp(fd, frame).duration_ns for frames in sequences for frame in frames)
                own.append(ns / flows)
                ratios[name].append(ns / max(base, 1))
        result = {"ns": statistics.median(own)}
        for name, values in ratios.items():
            result[name] = (statistics.median(values), min(values), max(values))
        return result


def show(ratio: tuple) -> str:
    median, low, high = ratio
    return f"{median:5.2f}x ({low:.2f}-{high:.2f})"


def cases(datapath):
    """(label, frame, frames to send first) for every packet kind."""
    established = [tcp(40001, flags="S"), tcp(40001, client_hello(b"open.example"), "PA")]
    blocked = [tcp(40002, flags="S"), tcp(40002, client_hello(b"blocked.example"), "PA")]
    throttled = [tcp(40003, flags="S"), tcp(40003, client_hello(b"slow.example"), "PA")]
    shallow = [tcp(40004, flags="S"), tcp(40004, client_hello(b"shallow.example"), "PA")]
    return [
        ("non-IP frame", bytes(Ether(src=CLIENT_MAC, dst=EDGE_MAC, type=0x0806) / Raw(b"\0" * 28)), []),
        ("UDP packet", bytes(ETHER / IP(src=CLIENT, dst=SERVER) / UDP(sport=5353, dport=53) / Raw(b"x" * 64)), []),
        ("established allowed flow", tcp(40001, b"x" * 100, reply=True), established),
        ("blocked flow", tcp(40002, b"x" * 100, reply=True), blocked),
        ("throttled flow", tcp(40003, b"x" * 100, reply=True), throttled),
        ("throttled, shallow bucket", tcp(40004, b"x" * 100, reply=True), shallow),
        ("ClientHello, SNI matches", None, "blocked.example"),
        ("ClientHello, SNI matches none", None, "nomatch.example"),
        ("ClientHello, class rule matches", None, "classed.example"),
        ("HTTP request", None, "http"),
    ]


# An established flow inside each encapsulation (tests/packets.py encapsulate()).
TUNNELS = {"IP-in-IP (4in4)": dict(kind="ipip"), "GRE with key": dict(kind="gre", gre_flags=GRE_KEY),
           "GTP-U, PDU session": dict(kind="gtpu", gtpu_extensions=((GTPU_PDU_SESSION_CONTAINER, b"\x00\x09"),)),
           "VXLAN": dict(kind="vxlan"), "QinQ": dict(kind="qinq")}


def tunnel_costs(datapath, repeat: int, pairs: int) -> None:
    """A packet of an established flow inside a tunnel, paired with the same
    flow's packet bare (goal: at most 1.3x)."""
    bare = tcp(40001, b"x" * 100, reply=True)          # the established allowed flow of cases()
    paired = Paired({"bare": datapath.function.fd}, bare, repeat, pairs)
    print("  established allowed flow, bare: the baseline of each pair")
    for index, (label, options) in enumerate(TUNNELS.items()):
        port = 40200 + index
        prepare = [encapsulate(tcp(port, flags="S"), **options),
                   encapsulate(tcp(port, client_hello(b"open.example"), "PA"), **options)]
        frame = encapsulate(tcp(port, b"x" * 100, reply=True), **options)
        cost = paired.measure(datapath.function.fd, frame, prepare=prepare)
        print(f"  ...in {label:<26} {show(cost['bare'])} the bare flow  ({cost['ns']:.0f} ns)")


def first_packet_cost(paired: Paired, datapath, kind: str, flows: int, ports) -> dict:
    """A first payload packet is classified only once per flow, so each run
    must open a new flow: a SYN carrying the payload (TCP Fast Open) on a
    client port not used before, its data inspected at once, each run once
    (the kernel repeating one frame would repeat a retransmitted SYN, which
    opens nothing). So the whole first-packet path is measured, flow
    creation included (which a ClientHello after a separate SYN does not
    pay), and the kernel's own cost of a test run is in both sides of the
    ratio, as in hello_flows()."""
    payload = (b"GET / HTTP/1.1\r\nHost: open.example\r\nUser-Agent: bench\r\n\r\n" if kind == "http"
               else client_hello(kind.encode()))
    before = datapath.counters()
    cost = paired.measure_flows(datapath.function.fd, lambda port: [tcp(port, payload, "S")], flows, ports)
    after = datapath.counters()
    classified = sum(after[c] - before[c] for c in ("flows_tls", "flows_http"))
    runs = paired.pairs * len(paired.baselines) * flows
    assert classified == runs, f"{kind}: {classified} flows classified in {runs} runs"
    return cost


DISORDERED_PIECES = 6


def hello_flows(paired: Paired, datapath, flows: int, ports) -> list[tuple[str, dict]]:
    """A whole new flow's first packets, SYN included, each packet run once: the
    ClientHello in one segment, and cut in 6 pieces (the first one byte, as the
    circumvention tools cut) sent last first, put together by the stream
    reassembly. Both name a name no rule has, so every piece is read."""
    hello = client_hello(b"open.example")
    step = len(hello) // (DISORDERED_PIECES - 1)
    edges = [0, 1, *range(step, len(hello) - step + 1, step)][:DISORDERED_PIECES] + [len(hello)]
    cut = [(a, hello[a:b]) for a, b in zip(edges, edges[1:])]
    assert len(cut) == DISORDERED_PIECES

    def plain(port):
        return [tcp(port, flags="S"), tcp(port, hello, "PA")]

    def disordered(port):
        return [tcp(port, flags="S"), *(tcp(port, piece, "PA", offset=at) for at, piece in reversed(cut))]
    results = []
    for label, flow, reassembled in (("ClientHello flow, one segment", plain, 0),
                                     (f"ClientHello flow, {DISORDERED_PIECES} pieces reversed", disordered, 1)):
        before = datapath.counters()
        cost = paired.measure_flows(datapath.function.fd, flow, flows, ports)
        after = datapath.counters()
        runs = paired.pairs * len(paired.baselines) * flows
        named = after["tls_sni_found"] - before["tls_sni_found"]
        assert named == runs, f"{label}: {named} flows named in {runs} runs"
        assert after["tls_reassembled"] - before["tls_reassembled"] == reassembled * runs, label
        results.append((label, cost))
    return results


# What any design that keeps per-flow state in the kernel pays on a packet of
# an established flow: parse the headers and look the flow up once, in a
# table of the same type, size and key as sluice's, the key made by sluice's
# own code (bpf/flow_key.h). The packets measured are IPv4; an IPv6 flow
# would take one more lookup (sluice's ipv6_flows), left out here.
FLOOR_PROGRAM = """
#include <uapi/linux/bpf.h>
#include "parsing_helpers.h"
#include "flow_key.h"

BPF_TABLE("lru_hash", struct flow_id, struct flow_state, floor_flows, SLUICE_FLOW_MAX);

int flow_floor(struct xdp_md *ctx)
{
	struct packet_info pkt = {};
	struct flow_id id;
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;

	if (parse_packet(data, data_end, data_end - data, &pkt, 0) < 0 || pkt.is_v6)
		return XDP_PASS;
	flow_make_ipv4_id(&pkt, &id);
	struct flow_state *flow = floor_flows.lookup(&id);
	if (!flow) {
		struct flow_state fresh = {};
		floor_flows.update(&id, &fresh);
		return XDP_PASS;
	}
	return flow->action == SLUICE_ACTION_BLOCK ? XDP_DROP : XDP_PASS;
}
"""


REPOSITORY = Path(__file__).resolve().parent.parent

# Run by another checkout's own code: load its data plane, pin the entry
# program for this process to run, and stay until stdin closes (the program
# array its inspection stages hang in lives as long as this process).
PIN_DATA_PLANE = """
import sys
import bcc
from sluice.abi import bpf_source_dir
from sluice.datapath import Datapath
from sluice.policy import load_policy
datapath = Datapath(load_policy(sys.argv[1]))
if bcc.lib.bpf_obj_pin(datapath.function.fd, sys.argv[2].encode()) != 0:
    sys.exit("cannot pin the entry program at " + sys.argv[2])
print("pinned", bpf_source_dir(), flush=True)
sys.stdin.read()
"""


@contextmanager
def data_plane_of(revision: str, policy: Path, workdir: Path):
    """The entry program fd of `revision`'s data plane, loaded with `policy`."""
    tree = workdir / f"tree-{revision}"
    subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "add", "-q", "--detach", str(tree), revision],
                   check=True)
    # Its package, controller/, importable as sluice (and as controller, its
    # name before the rename), with its C sources where it looks for them.
    shim = workdir / f"shim-{revision}"
    shim.mkdir()
    for name in ("sluice", "controller"):
        (shim / name).symlink_to(tree / "controller")
    (tree / "controller" / "bpf").symlink_to(tree / "bpf")
    pin = Path("/sys/fs/bpf") / f"sluice-bench-{os.getpid()}-{revision}"
    child = subprocess.Popen([sys.executable, "-c", PIN_DATA_PLANE, str(policy), str(pin)], cwd=tree,
                             env={**os.environ, "PYTHONPATH": str(shim)}, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    fd = -1
    try:
        answer = child.stdout.readline().decode().split()
        if answer[:1] != ["pinned"] or not Path(answer[1]).resolve().is_relative_to(tree.resolve()):
            raise RuntimeError(f"{revision}'s data plane did not load from its own tree: {answer}")
        fd = LIBBPF.bpf_obj_get(str(pin).encode())
        yield fd
    finally:
        if fd >= 0:
            os.close(fd)
        pin.unlink(missing_ok=True)
        child.stdin.close()
        child.wait()
        subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "remove", "--force", str(tree)], check=True)


# The packets of flows already judged: what a change to the per-packet path costs.
KNOWN_FLOWS = ("established allowed flow", "blocked flow", "throttled flow", "throttled, shallow bucket")


def known_flows_against(revisions: list[str], repeat: int, pairs: int) -> None:
    """Each packet of a known flow (KNOWN_FLOWS) through this tree's data
    plane, paired burst by burst with the same through each revision's."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        policy = write_policy(workdir, 10, 1)
        own = Datapath(load_policy(policy))
        known = [case for case in cases(own) if case[0] in KNOWN_FLOWS]
        for revision in revisions:
            with data_plane_of(revision, policy, workdir) as fd:
                for label, frame, setup in known:
                    for packet in setup:
                        run_xdp(fd, packet)
                    cost = Paired({revision: fd}, frame, repeat, pairs).measure(own.function.fd, frame,
                                                                                prepare=setup)
                    print(f"  {label:<26} this tree over {revision}: {show(cost[revision])} "
                          f"({cost['ns']:.0f} ns)")
        own.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200_000, help="test-run repetitions per burst")
    parser.add_argument("--pairs", type=int, default=7, help="alternations of baseline and program per figure")
    parser.add_argument("--sizes", default="10,10000,100000,1000000", help="domain rule counts to measure")
    parser.add_argument("--flows", type=int, default=300,
                        help="new flows per burst of the whole-flow cases (each packet run once)")
    parser.add_argument("--prefixes", type=int, default=1_000_000,
                        help="client prefixes of the extra run (with the smallest rule count); 0: none")
    parser.add_argument("--against", help="git revisions to pair the cost of known flows' packets with (comma-separated)")
    args = parser.parse_args()
    if args.against:
        print(f"command: {' '.join(sys.argv)}")
        print(f"each figure: {args.pairs} pairs of {args.repeat}-packet bursts, median ratio (lowest-highest)")
        known_flows_against(args.against.split(","), args.repeat, args.pairs)
        return 0

    empty = bcc.BPF(text="int empty(struct xdp_md *ctx) { return XDP_PASS; }")
    empty_fd = empty.load_func(b"empty", bcc.BPF.XDP).fd
    sample = tcp(40001, b"x" * 100)
    floor = bcc.BPF(text=FLOOR_PROGRAM, cflags=[f"-I{bpf_source_dir()}"])
    floor_fd = floor.load_func(b"flow_floor", bcc.BPF.XDP).fd
    run_xdp(floor_fd, sample)    # the floor's flow exists from here on, as sluice's do
    paired = Paired({"empty": empty_fd, "floor": floor_fd}, sample, args.repeat, args.pairs)
    floor_cost = Paired({"empty": empty_fd}, sample, args.repeat, args.pairs).measure(floor_fd, sample)
    print(f"command: {' '.join(sys.argv)}")
    print(f"each figure: {args.pairs} pairs of {args.repeat}-packet bursts, median ratio (lowest-highest)")
    print(f"floor: parse + one lookup in a flow table like sluice's: {show(floor_cost['empty'])} empty "
          f"({floor_cost['ns']:.0f} ns/packet)\n")

    results = {}
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = [(size, 1) for size in sizes] + ([(sizes[0], args.prefixes)] if args.prefixes > 1 else [])
    for size, prefixes in runs:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.monotonic()
            policy = load_policy(write_policy(Path(tmp), size, prefixes))
            datapath = Datapath(policy)
            load_seconds = time.monotonic() - started
        memory = map_memory_bytes(datapath)
        print(f"{size} domain rules, {prefixes} client prefixes: compile+load {load_seconds:.2f} s, "
              f"maps {memory / 2**20:.1f} MiB")
        # Client ports for new flows, each used once in this data plane (cases() and
        # tunnel_costs() keep 40001 and up for theirs).
        ports = iter(range(1024, 40000))
        for label, frame, prepare in cases(datapath):
            if frame is None:
                cost = first_packet_cost(paired, datapath, prepare, args.flows, ports)
            else:
                cost = paired.measure(datapath.function.fd, frame, prepare=prepare)
            results.setdefault(label, {})[(size, prefixes)] = cost
            print(f"  {label:<36} {show(cost['empty'])} empty  {show(cost['floor'])} floor  "
                  f"({cost['ns']:.0f} ns)")
        for label, cost in hello_flows(paired, datapath, args.flows, ports):
            results.setdefault(label, {})[(size, prefixes)] = cost
            print(f"  {label:<36} {show(cost['empty'])} empty  {show(cost['floor'])} floor  "
                  f"({cost['ns']:.0f} ns per flow)")
        if (size, prefixes) == runs[0]:
            tunnel_costs(datapath, args.repeat, args.pairs)
        datapath.close()
        print()

    # Each column a ratio of two paired medians, so a drift of the machine between runs cancels.
    first = runs[0]
    columns = ([(f"the {sizes[-1]}-rule ratio to empty over the {sizes[0]}-rule one", (sizes[-1], 1))]
               if len(sizes) > 1 else [])
    if args.prefixes > 1:
        columns.append((f"the {args.prefixes}-prefix one over the 1-prefix one", (sizes[0], args.prefixes)))
    if columns:
        print("scaling: " + ", and ".join(title for title, _ in columns))
        for label, by_run in results.items():
            print(f"  {label:<36}" + "".join(f" {by_run[run]['empty'][0] / by_run[first]['empty'][0]:5.2f}  "
                                             for _, run in columns))
    print("\ngoals: established flow within 3.5x empty, throttled within 5x, "
          "within 1.3x of itself bare inside a tunnel (paired medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
