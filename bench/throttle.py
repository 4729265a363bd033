"""Throttle (and shape, where fq exists) accuracy with real TLS (or HTTP) transfers through the lab.

Run as root:  .venv/bin/python bench/throttle.py [--rates 128kbit,1mbit,10mbit,100mbit]
                  [--burst-seconds 0.5] [--actions throttle,shape] [--scheme https]
                  [--hook native]

For each rate and direction, curl downloads from (or uploads to) nginx in
the server namespace through the edge, where sluice polices (throttle) or
paces (shape) the flow, and the script prints the configured rate, the
achieved goodput and their ratio. Then it measures an unthrottled download
alone and beside a throttled one, alternated (--pairs, bench/pairs.py), and
prints the share it keeps as a median ratio with its spread: on the bare
veth, where client, edge and server share two CPUs and the CPU is the
bottleneck, and on a link capped with tbf (--shared-link), which the two
flows then share.

Each transfer moves a fixed number of bytes (the rate times 6 to 12 s) and
is timed from the request to its last byte, past the TCP and TLS handshakes
(which take seconds under emulation). A transfer cut off at a time limit
would undercount a limiter that drops: the data behind a lost segment waits
in the client's socket for the retransmission, up to a drop horizon's worth.
The rate applies to whole Ethernet frames; TCP goodput is at most
1448/1514 = 95.6% of it (headers and timestamps), which the ratio includes.
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sluice import hooks  # noqa: E402
from sluice.datapath import Datapath  # noqa: E402
from sluice.egress import kernel_has_fq, set_up_egress  # noqa: E402
from sluice.lab import Lab  # noqa: E402
from sluice.policy import load_policy, parse_rate  # noqa: E402
from pairs import PairedRatio, alternate  # noqa: E402

SECONDS_FOR = {128_000: 12.0, 1_000_000: 8.0}   # slow rates need longer runs to average out
DEFAULT_SECONDS = 6.0


@contextmanager
def enforcing(lab, action: str, rate_bps: int, burst_seconds: float, hook: str):
    """sluice on the edge with one rule that applies `action` at `rate_bps` to slow.example."""
    burst = max(int(rate_bps / 8 * burst_seconds), 3028)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(f"version: 1\nrules:\n  - name: bench\n    action: {action}\n"
                        f"    rate: {rate_bps}bit\n    burst: {burst}B\n    domains: [slow.example]\n")
        policy = load_policy(path)
    datapath = Datapath(policy)
    shapers = set_up_egress(datapath, policy, [(lab.edge_client_iface, lab.edge_ns),
                                               (lab.edge_server_iface, lab.edge_ns)])
    try:
        for ifname in (lab.edge_client_iface, lab.edge_server_iface):
            datapath.attach(ifname, netns=lab.edge_ns, hook=hook)
        yield
    finally:
        datapath.close()
        for shaper in shapers:
            shaper.close()


def path_ceiling(lab, scheme: str) -> dict[str, float]:
    """What the path carries for a flow no rule names: goodput down and up, in bit/s."""
    return {"down": lab.download_rate("open.example", nbytes=16 << 20, seconds=60.0, exclude_setup=True,
                                      scheme=scheme),
            "up": lab.upload_rate("open.example", nbytes=16 << 20, timeout=60.0, exclude_setup=True,
                                  scheme=scheme)}


def measure(lab, rate_bps: int, scheme: str) -> tuple[float, float]:
    """(download, upload) goodput in bit/s of slow.example, each a complete transfer."""
    nbytes = int(rate_bps / 8 * SECONDS_FOR.get(rate_bps, DEFAULT_SECONDS))
    timeout = nbytes * 8 / rate_bps * 4
    return (lab.download_rate("slow.example", nbytes=nbytes, seconds=timeout, exclude_setup=True, scheme=scheme),
            lab.upload_rate("slow.example", nbytes=nbytes, timeout=timeout, exclude_setup=True, scheme=scheme))


@contextmanager
def throttled_download_beside(lab, scheme: str):
    worker = threading.Thread(target=lab.download_rate, args=("slow.example", 5.0), kwargs={"scheme": scheme})
    worker.start()
    try:
        yield
    finally:
        worker.join()


def unthrottled_share(lab, rate_bps: int, link: str | None, hook: str, scheme: str,
                      pairs: int) -> PairedRatio:
    """An unthrottled download's goodput beside a throttled download, as a
    ratio to its goodput alone, alternated `pairs` times (bench/pairs.py).

    link: cap the edge's client-side link at this rate with tbf, so that the
    link, not the CPU that client, edge and server share here, is what the
    two flows share; None leaves the veth uncapped."""
    tc = ["tc", "qdisc", "replace", "dev", lab.edge_client_iface, "root"]
    try:
        if link:
            lab.run_in(lab.edge_ns, [*tc, "tbf", "rate", link, "burst", "256kb", "latency", "50ms"], check=True)
        with enforcing(lab, "throttle", rate_bps, 0.5, hook):
            return alternate(lambda: lab.download_rate("open.example", seconds=3.0, exclude_setup=True,
                                                       scheme=scheme),
                             lambda: throttled_download_beside(lab, scheme), pairs)
    finally:
        if link:
            lab.run_in(lab.edge_ns, ["tc", "qdisc", "del", "dev", lab.edge_client_iface, "root"])


def print_ceiling(label: str, ceiling: dict[str, float]) -> None:
    for direction in ("down", "up"):
        print(f"{label:<41}{ceiling[direction] / 1e6:>9.3f} Mb  {direction}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="128kbit,1mbit,10mbit,100mbit")
    parser.add_argument("--burst-seconds", type=float, default=0.5,
                        help="bucket depth as time at the rate (default %(default)s s)")
    parser.add_argument("--shared-link", default="500mbit",
                        help="the capped link on which the unthrottled share is measured again "
                             "(default %(default)s)")
    parser.add_argument("--actions", default="throttle,shape",
                        help="which of throttle and shape to measure; shape is skipped where the "
                             "kernel has no sch_fq (default %(default)s)")
    parser.add_argument("--scheme", choices=("https", "http"), default="https",
                        help="transfers over TLS (SNI names the flow) or plain HTTP (the Host header "
                             "does); http lifts an emulated path's ceiling, where TLS costs most of the "
                             "CPU (default %(default)s)")
    parser.add_argument("--hook", choices=hooks.CHOICES, default="native",
                        help="how sluice attaches to the lab's veths; native XDP on a veth turns off its "
                             "peer's segmentation offload, so every 1500-byte packet crosses the edge on "
                             "its own, which an emulated CPU cannot do at 100 Mbit/s: generic keeps the "
                             "offload; auto picks generic on veth (default %(default)s)")
    parser.add_argument("--pairs", type=int, default=3,
                        help="alternations of the unthrottled download alone and beside a throttled one "
                             "(default %(default)s)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: it builds namespaces and loads BPF programs")
    rates = [parse_rate(r) for r in args.rates.split(",")]
    actions = [a for a in args.actions.split(",") if a != "shape" or kernel_has_fq()]
    if not set(actions) <= {"throttle", "shape"}:
        parser.error(f"--actions takes throttle and shape, not {args.actions}")
    print(f"kernel {os.uname().release}; actions: {', '.join(actions)}"
          + ("" if "shape" in actions else " (no sch_fq here: shape is measured in the VM kernels)"))
    print(f"{args.scheme}, hook {args.hook}; burst = {args.burst_seconds} s at the rate; ratio = achieved goodput / configured rate\n")
    print(f"{'action':<9}{'direction':<10}{'configured':>12}{'achieved':>12}{'ratio':>8}")
    with Lab() as lab:
        # What the path carries for a flow no rule names, with no program and
        # with sluice attached: a rate near it measures the machine (an
        # emulated CPU tops out well below 100 Mbit/s of TLS), not the limiter.
        ceiling = path_ceiling(lab, args.scheme)
        print_ceiling("(no program)", ceiling)
        for action in actions:
            with enforcing(lab, action, rates[0], args.burst_seconds, args.hook):
                attached = path_ceiling(lab, args.scheme)
            print_ceiling(f"({action} attached, flow unmatched)", attached)
            for rate in rates:
                with enforcing(lab, action, rate, args.burst_seconds, args.hook):
                    download, upload = measure(lab, rate, args.scheme)
                for direction, achieved in (("down", download), ("up", upload)):
                    note = ("  (beyond this path: rate > 80% of what it carries with sluice attached)"
                            if rate > 0.8 * attached[direction] else "")
                    print(f"{action:<9}{direction:<10}{rate / 1e6:>9.3f} Mb{achieved / 1e6:>9.3f} Mb"
                          f"{achieved / rate:>8.3f}{note}", flush=True)
        print()
        for link in (None, args.shared_link):
            share = unthrottled_share(lab, rates[0], link, args.hook, args.scheme, args.pairs)
            where = f"link capped at {link} (tbf)" if link else "uncapped veth (CPU-bound here)"
            print(f"{where}: an unthrottled download beside a throttled flow keeps {share.show()} of its "
                  f"speed alone ({args.pairs} pairs, median (lowest-highest)); medians: alone "
                  f"{statistics.median(share.baseline) / 1e6:.0f} Mbit/s, beside "
                  f"{statistics.median(share.measured) / 1e6:.0f} Mbit/s", flush=True)
    print("\ntargets: ratio within 0.90..1.10 for every rate and direction; unthrottled keeps >= 95%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
