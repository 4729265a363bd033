"""Forwarding throughput and flow churn through the lab's edge, against no program.

Run as root:  .venv/bin/python bench/forwarding.py [--seconds 5] [--streams 4]

Throughput: iperf3 (4 parallel TCP streams, bounded duration) from the
client to the server namespace, through the edge, with:
  - no program on the edge (the baseline), measured first and last;
  - an empty XDP program (on veth, native XDP alone turns off the peers'
    segmentation offloads: this line shows what that costs by itself);
  - sluice with 1,000,000 domain rules, none matching;
  - sluice while it throttles another flow on the same link;
  - iptables `-m string --algo bm` rules on the same kind of names, 10 and
    1,000 of them (what users would otherwise reach for).
Churn: ApacheBench opens a new HTTP connection per request (bounded count),
without and with sluice, which must inspect and classify each new flow.
Every figure is printed with its ratio to the baseline of the same run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import bcc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from controller import xdp_link  # noqa: E402
from controller.datapath import Datapath  # noqa: E402
from controller.lab import SERVER_V4, Lab  # noqa: E402
from controller.policy import load_policy  # noqa: E402

CHURN_REQUESTS = 5000
CHURN_CONCURRENCY = 8


def bench_names(count: int) -> list[str]:
    return [f"host{i}.bench-{i % 997}.example" for i in range(count)]


def iperf(lab, seconds: float, streams: int) -> float:
    """Client -> server TCP goodput in bit/s, as iperf3's receiver saw it."""
    result = lab.run_in(lab.client_ns, ["iperf3", "-c", SERVER_V4, "-P", str(streams), "-t", str(seconds), "-J"],
                        timeout=seconds + 30, check=True)
    return json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"]


def churn(lab) -> float:
    """New HTTP connections per second that ApacheBench completes through the edge."""
    result = lab.run_in(lab.client_ns, ["ab", "-q", "-n", str(CHURN_REQUESTS), "-c", str(CHURN_CONCURRENCY),
                                        "-H", "Host: open.example", f"http://{SERVER_V4}/"], timeout=300, check=True)
    for line in result.stdout.splitlines():
        if line.startswith("Requests per second:"):
            return float(line.split()[3])
    raise RuntimeError(f"ab printed no rate: {result.stdout[-500:]}")


def attached(lab, policy):
    datapath = Datapath(policy)
    for ifname in (lab.edge_client_iface, lab.edge_server_iface):
        datapath.attach(ifname, netns=lab.edge_ns)
    return datapath


@contextmanager
def empty_xdp(lab):
    """An XDP program that passes everything, on both edge interfaces: on veth,
    any native XDP program turns off the peers' segmentation offloads, which
    by itself costs throughput; this separates that from sluice's own cost."""
    program = bcc.BPF(text=b"int pass_all(struct xdp_md *ctx) { return XDP_PASS; }")
    fd = program.load_func(b"pass_all", bcc.BPF.XDP).fd
    links = [xdp_link.attach(fd, ifname, lab.edge_ns) for ifname in (lab.edge_client_iface, lab.edge_server_iface)]
    try:
        yield
    finally:
        for link in links:
            link.detach()
        program.cleanup()


def million_rule_policy(directory: Path):
    (directory / "feed.txt").write_text("\n".join(bench_names(1_000_000)) + "\n")
    (directory / "policy.yaml").write_text(
        "version: 1\nrules:\n  - {name: feed, action: block, domains_file: feed.txt}\n"
        "  - {name: slow, action: throttle, rate: 10mbit, domains: [slow.example]}\n")
    return load_policy(directory / "policy.yaml")


def with_iptables(lab, rules: int):
    for name in bench_names(rules):
        lab.run_in(lab.edge_ns, ["iptables", "-A", "FORWARD", "-m", "string", "--algo", "bm",
                                 "--string", name, "-j", "DROP"], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="each iperf3 run (default %(default)s)")
    parser.add_argument("--streams", type=int, default=4, help="parallel TCP streams (default %(default)s)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: it builds namespaces and loads BPF programs")

    results = []
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        iperf_server = subprocess.Popen(["ip", "netns", "exec", lab.server_ns, "iperf3", "-s"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            results.append(("no program", iperf(lab, args.seconds, args.streams), churn(lab)))
            with empty_xdp(lab):
                results.append(("empty XDP program", iperf(lab, args.seconds, args.streams), churn(lab)))
            policy = million_rule_policy(Path(tmp))
            datapath = attached(lab, policy)
            try:
                results.append(("sluice, 1M rules, no match", iperf(lab, args.seconds, args.streams), churn(lab)))
                throttled = threading.Thread(target=lab.download_rate, args=("slow.example", args.seconds + 2))
                throttled.start()
                time.sleep(0.5)
                results.append(("sluice, throttling another flow", iperf(lab, args.seconds, args.streams), None))
                throttled.join()
            finally:
                datapath.close()
            for rules in (10, 1000):
                with_iptables(lab, rules)
                results.append((f"iptables string bm, {rules} rules", iperf(lab, args.seconds, args.streams),
                                churn(lab)))
                lab.run_in(lab.edge_ns, ["iptables", "-F", "FORWARD"], check=True)
            results.append(("no program, again", iperf(lab, args.seconds, args.streams), churn(lab)))
        finally:
            iperf_server.kill()
            iperf_server.wait()

    base_rate, base_churn = results[0][1], results[0][2]
    print(f"kernel {os.uname().release}; iperf3 {args.streams} streams x {args.seconds:g} s; "
          f"ab {CHURN_REQUESTS} requests, {CHURN_CONCURRENCY} at a time\n")
    print(f"{'configuration':<34}{'throughput':>14}{'ratio':>8}{'new flows/s':>14}{'ratio':>8}")
    for label, rate, flows in results:
        churn_text = f"{flows:>14.0f}{flows / base_churn:>8.2f}" if flows else f"{'-':>14}{'':>8}"
        print(f"{label:<34}{rate / 1e9:>9.2f} Gb/s{rate / base_rate:>8.2f}{churn_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
