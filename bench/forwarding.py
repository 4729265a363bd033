"""Forwarding throughput and flow churn through the lab's edge, paired with no program.

Run as root:  .venv/bin/python bench/forwarding.py [--seconds 5] [--streams 4] [--pairs 3]
                                                    [--only SUBSTRING ...]

Throughput: iperf3 (parallel TCP streams, bounded duration) between the
client and the server namespace, through the edge, each way: up (the client
sends; the lab's clients checksum in software, so they send frames, not
segmentation-offload aggregates) and down (the server sends, with its
segmentation offload on, as a server's NIC would), with:
  - an empty XDP program, in native and in generic XDP (on veth, native XDP
    alone turns off the peers' segmentation offloads: this line shows what
    that costs by itself; generic XDP runs on the skb and keeps them), and
    an empty tc ingress program: what each hook costs with no work in it;
  - sluice with 1,000,000 domain rules, none matching, on each hook: native
    and generic XDP, and tc ingress (--hook tc: the classifier compiled for
    the skb, which reads an aggregate where it lies, without generic XDP's
    copy into a linear buffer);
  - sluice while it throttles another flow on the same link, on each hook;
  - iptables `-m string --algo bm` rules on the same kind of names, 10 and
    1,000 of them (what users would otherwise reach for).
Churn: ApacheBench opens a new HTTP connection per request (bounded count),
which sluice must inspect and classify for each new flow.
The control: no program against no program, measured the same way. Its
ratios are the bench's own noise on this machine (churn runs of 5,000
connections swung 0.76-1.23x pair to pair with nothing under test); a
configuration's median is only told from 1.0 by as much as the control's
spread allows.

The machine is shared and busy, so every configuration is measured in
--pairs alternations with no program on the edge (bench/pairs.py): the
figure that counts is the median ratio to no program, with its spread
(lowest-highest pair); the absolute rates (medians) are context only. The
programs and rules are loaded once; a pair only attaches and detaches them.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import bcc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sluice import tc, xdp_link  # noqa: E402
from sluice.datapath import Datapath  # noqa: E402
from sluice.lab import SERVER_V4, Lab  # noqa: E402
from sluice.policy import load_policy  # noqa: E402
from pairs import alternate  # noqa: E402

CHURN_REQUESTS = 20000       # about 2 s a run here: 5,000 took 0.6 s, too short to time
CHURN_CONCURRENCY = 8


def bench_names(count: int) -> list[str]:
    return [f"host{i}.bench-{i % 997}.example" for i in range(count)]


def iperf(lab, seconds: float, streams: int, direction: str) -> float:
    """TCP goodput in bit/s, as iperf3's receiver saw it: client -> server ("up") or back ("down")."""
    reverse = ["-R"] if direction == "down" else []
    result = lab.run_in(lab.client_ns, ["iperf3", "-c", SERVER_V4, *reverse, "-P", str(streams), "-t", str(seconds),
                                        "-J"], timeout=seconds + 30, check=True)
    return json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"]


def churn(lab) -> float:
    """New HTTP connections per second that ApacheBench completes through the edge."""
    result = lab.run_in(lab.client_ns, ["ab", "-q", "-n", str(CHURN_REQUESTS), "-c", str(CHURN_CONCURRENCY),
                                        "-H", "Host: open.example", f"http://{SERVER_V4}/"], timeout=300, check=True)
    for line in result.stdout.splitlines():
        if line.startswith("Requests per second:"):
            return float(line.split()[3])
    raise RuntimeError(f"ab printed no rate: {result.stdout[-500:]}")


@contextmanager
def sluice_attached(lab, datapath, mode: str):
    for ifname in (lab.edge_client_iface, lab.edge_server_iface):
        datapath.attach(ifname, netns=lab.edge_ns, hook=mode)
    try:
        yield
    finally:
        datapath.detach_all()


@contextmanager
def empty_xdp(lab, mode: str):
    """An XDP program that passes everything, on both edge interfaces: on veth,
    any native XDP program turns off the peers' segmentation offloads, which
    by itself costs throughput; this separates that from sluice's own cost."""
    program = bcc.BPF(text=b"int pass_all(struct xdp_md *ctx) { return XDP_PASS; }")
    fd = program.load_func(b"pass_all", bcc.BPF.XDP).fd
    links = [xdp_link.attach(fd, ifname, lab.edge_ns, mode) for ifname in (lab.edge_client_iface, lab.edge_server_iface)]
    try:
        yield
    finally:
        for link in links:
            link.detach()
        program.cleanup()


@contextmanager
def empty_tc(lab):
    """A tc ingress program that passes everything, on both edge interfaces:
    what the tc hook costs by itself, beside sluice at --hook tc."""
    program = bcc.BPF(text=b"#include <uapi/linux/pkt_cls.h>\nint pass_all(struct __sk_buff *skb) { return TC_ACT_OK; }")
    fd = program.load_func(b"pass_all", bcc.BPF.SCHED_CLS).fd
    filters = [tc.TcFilter(ifname, lab.edge_ns, tc.TC_PARENT_INGRESS, "pass_all", fd, tc.CLASSIFIER_PRIO)
               for ifname in (lab.edge_client_iface, lab.edge_server_iface)]
    try:
        yield
    finally:
        for tc_filter in filters:
            tc_filter.close()
        program.cleanup()


def million_rule_policy(directory: Path):
    (directory / "feed.txt").write_text("\n".join(bench_names(1_000_000)) + "\n")
    (directory / "policy.yaml").write_text(
        "version: 1\nrules:\n  - {name: feed, action: block, domains_file: feed.txt}\n"
        "  - {name: slow, action: throttle, rate: 10mbit, domains: [slow.example]}\n")
    return load_policy(directory / "policy.yaml")


def iptables_chain(lab, rules: int) -> str:
    """A chain of `rules` string-match rules, not yet jumped to from FORWARD."""
    chain = f"BENCH{rules}"
    lab.run_in(lab.edge_ns, ["iptables", "-N", chain], check=True)
    for name in bench_names(rules):
        lab.run_in(lab.edge_ns, ["iptables", "-A", chain, "-m", "string", "--algo", "bm",
                                 "--string", name, "-j", "DROP"], check=True)
    return chain


@contextmanager
def jumping_to(lab, chain: str):
    lab.run_in(lab.edge_ns, ["iptables", "-I", "FORWARD", "-j", chain], check=True)
    try:
        yield
    finally:
        lab.run_in(lab.edge_ns, ["iptables", "-D", "FORWARD", "-j", chain], check=True)


@contextmanager
def throttling_another_flow(lab, datapath, mode: str, seconds: float):
    """sluice attached while a download of a throttled name runs beside."""
    with sluice_attached(lab, datapath, mode):
        throttled = threading.Thread(target=lab.download_rate, args=("slow.example", seconds + 2))
        throttled.start()
        time.sleep(0.5)
        try:
            yield
        finally:
            throttled.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="each iperf3 run (default %(default)s)")
    parser.add_argument("--streams", type=int, default=4, help="parallel TCP streams (default %(default)s)")
    parser.add_argument("--pairs", type=int, default=3,
                        help="alternations of no program and each configuration (default %(default)s)")
    parser.add_argument("--only", action="append", default=[], metavar="SUBSTRING",
                        help="measure only the configurations whose label contains it; repeat for "
                             "several (default: all)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: it builds namespaces and loads BPF programs")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")


    def selected(label: str) -> bool:
        return not args.only or any(part in label for part in args.only)

    rows = []   # (label, {direction: throughput PairedRatio}, churn PairedRatio or None)
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        iperf_server = subprocess.Popen(["ip", "netns", "exec", lab.server_ns, "iperf3", "-s"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        datapath = Datapath(million_rule_policy(Path(tmp)))
        try:
            configurations = [("no program (control: the baseline against itself)", nullcontext, True)]
            for mode in ("native", "generic", "tc"):
                configurations.append(
                    ("empty tc program", lambda: empty_tc(lab), True) if mode == "tc" else
                    (f"empty XDP program, {mode}", lambda mode=mode: empty_xdp(lab, mode), True))
                configurations += [
                    (f"sluice, 1M rules, no match, {mode}",
                     lambda mode=mode: sluice_attached(lab, datapath, mode), True),
                    (f"sluice, throttling another flow, {mode}",
                     lambda mode=mode: throttling_another_flow(lab, datapath, mode, args.seconds), False)]
            for rules in (10, 1000):
                label = f"iptables string bm, {rules} rules"
                if selected(label):
                    chain = iptables_chain(lab, rules)
                    configurations.append((label, lambda chain=chain: jumping_to(lab, chain), True))
            for label, under_test, with_churn in filter(lambda configuration: selected(configuration[0]),
                                                        configurations):
                rates = {direction: alternate(lambda direction=direction: iperf(lab, args.seconds, args.streams,
                                                                                 direction), under_test, args.pairs)
                         for direction in ("up", "down")}
                flows = alternate(lambda: churn(lab), under_test, args.pairs) if with_churn else None
                rows.append((label, rates, flows))
                print(f"  measured: {label}", file=sys.stderr, flush=True)
        finally:
            datapath.close()
            iperf_server.kill()
            iperf_server.wait()

    print(f"kernel {os.uname().release}; iperf3 {args.streams} streams x {args.seconds:g} s; "
          f"ab {CHURN_REQUESTS} requests, {CHURN_CONCURRENCY} at a time; {args.pairs} pairs with no program "
          "each; ratio = median (lowest-highest pair); rates are medians, context only\n")
    print(f"{'configuration':<42}" + "".join(f"{direction + ' ratio':>22}{'Gb/s':>6}{'no prog':>8}"
                                              for direction in ("up", "down"))
          + f"{'new flows ratio':>22}{'flows/s':>9}{'no prog':>9}")
    for label, rates, flows in rows:
        rate_text = "".join(f"{rate.show():>22}{statistics.median(rate.measured) / 1e9:>6.2f}"
                            f"{statistics.median(rate.baseline) / 1e9:>8.2f}" for rate in rates.values())
        churn_text = (f"{flows.show():>22}{statistics.median(flows.measured):>9.0f}"
                      f"{statistics.median(flows.baseline):>9.0f}") if flows else f"{'-':>22}"
        print(f"{label:<42}{rate_text}{churn_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
