"""What the test modules share besides fixtures: judging one payload, a
datapath at a hook, the lab's edge under a policy, a free port. Fixtures and
pytest's hooks stay in conftest.py; modules import these by name."""

import itertools
import json
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from sluice.block_methods import set_up_server_resets
from sluice.datapath import Datapath
from sluice.testrun import TestRun, run_tc_ingress, run_xdp
from packets import tcp_frame


def free_port() -> int:
    """A TCP port nothing listens on right now, for an exporter or a Prometheus."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# A block rule of each method, for the block-method tests in BPF_PROG_TEST_RUN
# and in the lab; each module names the domains its clients ask for.
BLOCK_PAGE_BODY, BLOCK_PAGE_LINK = "Blocked by order 42.\n", "https://authority.example/orders/42"


def block_methods_policy(reset_names: str, page_names: str, drop_names: str) -> str:
    """A policy with a reset rule, a page rule and a drop rule; each *_names is
    the rule's name keys, e.g. "domains: [reset.example]"."""
    return f"""\
version: 1
rules:
  - name: reset-rule
    action: block
    method: reset
    {reset_names}
  - name: page-rule
    action: block
    method: page
    page: {{body: {json.dumps(BLOCK_PAGE_BODY)}, link: {json.dumps(BLOCK_PAGE_LINK)}}}
    {page_names}
  - name: drop-rule
    action: block
    {drop_names}
"""


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
_ports = itertools.count(20000)
BOOKKEEPING = {"packets", "flows_created"}

@contextmanager
def enforcing(lab, datapath: Datapath, hook: str = "native", server_resets: bool = False):
    """datapath attached to every interface of the lab's edge at hook; yields
    the XDP modes the kernel reports, and detaches at the end. server_resets:
    with the tc program that resets the server's side of a reset flow, as
    `sluice run` sets up (the client's reset leaves by it too: on a veth,
    XDP_TX alone does not reach the client)."""
    modes = {datapath.attach(ifname, netns=lab.edge_ns, hook=hook) for ifname in lab.edge_ifaces}
    resets = []
    try:
        if server_resets:
            resets = set_up_server_resets(datapath, datapath.policy,
                                          [(ifname, lab.edge_ns) for ifname in lab.edge_ifaces])
            assert resets, "tc ingress must be available in the lab"
        yield modes
    finally:
        for reset in resets:
            reset.close()
        datapath.detach_all()


@contextmanager
def polling_rings(datapath: Datapath):
    """A thread reading datapath's rings while the block runs, as `sluice run`'s
    loop does (the QUIC code hears of datagrams and settled flows from them)."""
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            datapath.poll_rings(20)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield
    finally:
        stop.set()
        poller.join()


def rule_stats(datapath: Datapath, name: str | None) -> dict:
    """The counters of the rule called name (None: the flows no rule matched)."""
    return datapath.rule_stats()[datapath.policy.rule_by_name(name).id if name else 0]


class AtHook:
    """A Datapath whose frames classify() runs at one hook: "xdp" (sluice_xdp)
    or "tc" (the classifier compiled for tc ingress, --hook tc); the rest is
    the Datapath's. A module parametrizes its fixture over HOOKS to run its
    cases at both."""

    def __init__(self, datapath: Datapath, hook: str):
        self.datapath, self.hook = datapath, hook
        self.classifier_fd = datapath.tc_ingress_set().function.fd if hook == "tc" else datapath.function.fd

    def __getattr__(self, name):
        return getattr(self.datapath, name)


HOOKS = ("xdp", "tc")


def classify(datapath, frame: bytes, ifindex: int = 0) -> TestRun:
    """Run frame through the datapath's classifier: at its AtHook's hook, or
    XDP; ifindex: the interface it comes in on (0: the loopback)."""
    if isinstance(datapath, AtHook) and datapath.hook == "tc":
        return run_tc_ingress(datapath.classifier_fd, frame, ifindex=ifindex)
    return run_xdp(datapath.function.fd, frame, ifindex=ifindex)


@dataclass
class Judgement:
    verdict: str                 # of the payload packet
    counters: dict[str, int]     # how each global counter moved
    port: int                    # the client port of the flow

    def moved(self) -> dict[str, int]:
        """The parser and classification counters that moved (not the bookkeeping ones)."""
        return {name: delta for name, delta in self.counters.items() if delta and name not in BOOKKEEPING}


def judge(datapath, payload: bytes, *, syn: bool = True, wrap=bytes, **frame_options) -> Judgement:
    """Open a fresh flow (SYN unless syn=False) and send one client payload
    packet; wrap(frame) is what goes on the wire (an encapsulation)."""
    port = next(_ports)
    before = datapath.counters()
    if syn:
        syn_frame = wrap(tcp_frame(sport=port, flags="S", **frame_options))
        assert classify(datapath, syn_frame).verdict == "pass"
    verdict = classify(datapath, wrap(tcp_frame(payload, sport=port, **frame_options))).verdict
    after = datapath.counters()
    return Judgement(verdict, {name: after[name] - before[name] for name in after}, port)
