# SPDX-License-Identifier: GPL-2.0-only
"""The lab demo (`sluice demo`, and `sluice run` without --iface): the data
plane on the edge of a namespace lab (controller/lab.py), the checks it
passes or fails, and the metrics they moved."""

import logging
import signal
import threading
import time
import urllib.request
from types import SimpleNamespace

from . import hooks, metrics
from .block_methods import set_up_server_resets
from .datapath import Datapath
from .egress import set_up_egress
from .lab import SERVER_V4, Lab
from .service import file_digest


def wait_for_signal() -> None:
    """Until SIGINT or SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()

# What the lab shows: (name, scheme, from the second client, expected to get through, why).
LAB_CHECKS = [
    ("blocked.example", "https", False, False, "suffix rule block-lab, TLS SNI"),
    ("cdn.blocked.example", "https", False, False, "below blocked.example, at a label boundary"),
    ("blocked.example", "http", False, False, "the same rule, by HTTP Host"),
    ("notblocked.example", "https", False, True, "a look-alike: no label boundary, no match"),
    ("exact.example", "https", False, False, "exact rule"),
    ("sub.exact.example", "https", False, True, "exact rules do not cover subdomains"),
    ("watched.example", "https", False, True, "rule in monitor mode: counted, not enforced"),
    ("allowed.example", "https", False, True, "allow rule"),
    ("open.example", "http", False, True, "no rule names it"),
    ("video.example", "https", False, True, "client 192.0.2.2 is in class fixed: no rule for it"),
    ("video.example", "https", True, False, "client 203.0.113.2 is in class mobile: blocked"),
    ("reset.example", "https", False, False, "block by reset: a TCP RST at once, not a timeout"),
    ("page.example", "http", False, False, "block by page: an HTTP 451 page, then a reset"),
    ("page.example", "https", False, False, "block by page over TLS: a reset"),
]
LAB_THROTTLE_RULE = "throttle-lab"


def run_lab(policy, policy_path: str, metrics_server, metrics_address: str, metrics_port: int, hook: str,
            keep_running: bool) -> int:
    """Build the lab, enforce `policy` on its edge, show the LAB_CHECKS and the
    metrics they moved, and tear it down (after Ctrl-C if keep_running).
    Returns how many checks went unexpectedly."""
    logging.getLogger().setLevel(logging.WARNING)   # the lab narrates itself on stdout
    print("sluice: building the lab (client -> edge -> server namespaces)")
    with Lab() as lab:
        choices = {ifname: hooks.choose(ifname, lab.edge_ns, hook) for ifname in lab.edge_ifaces}
        datapath = Datapath(policy, xdp=hooks.uses_xdp(choices.values()))
        shapers, server_resets = [], []
        try:
            shapers = set_up_egress(datapath, policy, [(ifname, lab.edge_ns) for ifname in lab.edge_ifaces])
            server_resets = set_up_server_resets(datapath, policy, [(ifname, lab.edge_ns)
                                                                   for ifname in lab.edge_ifaces])
            for ifname in lab.edge_ifaces:
                mode = datapath.attach(ifname, netns=lab.edge_ns, hook=choices[ifname])
                print(f"sluice: attached to {ifname} in netns {lab.edge_ns}, {hooks.describe(mode)}")
            metrics.serve(SimpleNamespace(datapath=datapath, policy=policy, loaded_at=time.time(),
                                          policy_digest=file_digest(policy_path),
                                          reloads={"success": 0, "failure": 0}), metrics_server)
            print(f"sluice: policy {policy_path}\n")
            failures = show_lab_checks(lab, policy)
            print()
            print_metrics_excerpt(metrics_address, metrics_port)
            if keep_running:
                print(f"\nsluice: lab running; try it yourself:\n"
                      f"  ip netns exec {lab.client_ns} curl -sk --resolve blocked.example:443:"
                      f"{SERVER_V4} https://blocked.example/ --max-time 3\n"
                      f"  curl -s http://{metrics_address}:{metrics_port}/metrics | grep sluice_\n"
                      f"Ctrl-C to stop and tear the lab down.")
                wait_for_signal()
        finally:
            datapath.close()
            for hook in [*shapers, *server_resets]:
                hook.close()
    print("sluice: lab torn down")
    return failures


def show_lab_checks(lab, policy) -> int:
    """Run the LAB_CHECKS and a throttled download; returns how many went unexpectedly."""
    failures = 0
    for name, scheme, second_client, expect_ok, why in LAB_CHECKS:
        result = lab.curl(name, scheme=scheme, timeout=2.0, second_client=second_client)
        outcome = (f"HTTP {result.http_code}" if result.http_code else
                   "reset" if "reset" in result.error.lower() else "blocked (no answer)")
        outcome += f", {result.seconds * 1000:.0f} ms"
        as_expected = result.ok == expect_ok
        failures += not as_expected
        print(f"  {'ok ' if as_expected else 'BAD'} {scheme}://{name:<22} {outcome:<28} {why}")
    throttle = policy.rule_by_name(LAB_THROTTLE_RULE)
    if throttle:
        limit = throttle.limits["down"].rate_bps
        open_rate = lab.download_rate("open.example", seconds=1.0)
        slow_rate = lab.download_rate("slow.example", seconds=3.0)
        as_expected = slow_rate <= limit * 1.1 and open_rate > limit * 10
        failures += not as_expected
        print(f"  {'ok ' if as_expected else 'BAD'} https://slow.example/download {slow_rate / 1e6:6.2f} Mbit/s"
              f"      throttled to {limit / 1e6:g} Mbit/s (open.example: {open_rate / 1e6:.0f} Mbit/s)")
    return failures


def print_metrics_excerpt(address: str, port: int) -> None:
    text = urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=5).read().decode()
    wanted = ("sluice_rule_flows_total", "sluice_rule_dropped_packets_total", "sluice_rule_resets_total",
              "sluice_rule_pages_total", "sluice_flows_classified_total",
              "sluice_parser_outcomes_total")
    print(f"metrics (http://{address}:{port}/metrics), excerpt:")
    for line in text.splitlines():
        if line.startswith(wanted) and not line.rstrip().endswith(" 0.0"):
            print(f"  {line}")
