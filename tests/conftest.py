"""Shared fixtures: a loaded data plane per policy, a way to judge one payload,
and the lab's edge under a policy for the end-to-end modules."""

import itertools
import json
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass

# Controllers the tests start pin their state here, never where a deployed
# sluice on this machine keeps its own (set before sluice.service loads).
os.environ.setdefault("SLUICE_PIN_ROOT", f"/sys/fs/bpf/sluice-test-{os.getpid()}")
os.environ.setdefault("SLUICE_STATE_FILE", f"/run/sluice-test-{os.getpid()}/state.json")

import pytest
from hypothesis import settings

import kernel_matrix_leg
from sluice.block_methods import set_up_server_resets
from sluice.datapath import Datapath
from sluice.lab import Lab
from sluice.policy import load_policy
from sluice.service import ensure_bpffs
from sluice.testrun import TestRun, run_tc_ingress, run_xdp
from packets import tcp_frame


@pytest.fixture(scope="session", autouse=True)
def bpffs():
    """bpffs at /sys/fs/bpf, mounted as `sluice run` mounts it: a fresh boot
    has none, and tests pin links and maps there themselves."""
    ensure_bpffs()


# No per-example deadline: this machine is shared and noisy, and time is a
# benchmark's business (bench/), never a test's. A slow example is not a wrong one.
settings.register_profile("sluice", deadline=None)
settings.load_profile("sluice")


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
KERNEL_MATRIX_TESTS = "tests/test_kernel_matrix.py"


@pytest.fixture(scope="module")
def make_datapath(tmp_path_factory):
    """make_datapath(policy_yaml) -> a loaded Datapath, closed when the module ends."""
    loaded = []

    def make(policy_yaml: str, **options) -> Datapath:
        path = tmp_path_factory.mktemp("policy") / "policy.yaml"
        path.write_text(policy_yaml)
        datapath = Datapath(load_policy(path), **options)
        loaded.append(datapath)
        return datapath
    yield make
    for datapath in loaded:
        datapath.close()


@pytest.fixture(scope="module")
def lab():
    """The lab's namespaces (controller/lab.py), shared by a module's tests;
    a module whose lab needs more servers defines its own."""
    with Lab() as built:
        yield built


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


def classify(datapath, frame: bytes) -> TestRun:
    """Run frame through the datapath's classifier: at its AtHook's hook, or XDP."""
    if isinstance(datapath, AtHook) and datapath.hook == "tc":
        return run_tc_ingress(datapath.classifier_fd, frame)
    return run_xdp(datapath.function.fd, frame)


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


def pytest_collection_modifyitems(config, items):
    """SLUICE_TEST_ORDER=reverse runs the modules last to first (tests/fresh_machine.sh
    does), so a module that leans on what an earlier one left behind shows up.
    The kernel-matrix test runs last in either order: it waits for its leg."""
    if os.environ.get("SLUICE_TEST_ORDER") == "reverse":
        modules: dict[str, list] = {}
        for item in items:
            modules.setdefault(item.nodeid.split("::")[0], []).append(item)
        items[:] = [item for module in reversed(modules) for item in modules[module]]
    items.sort(key=lambda item: item.nodeid.startswith(KERNEL_MATRIX_TESTS))


def pytest_collection_finish(session):
    """Start the kernel-matrix leg now, if its test is selected and can run, so
    that it runs beside the host's tests rather than after them."""
    selected = any(item.nodeid.startswith(KERNEL_MATRIX_TESTS) for item in session.items)
    if selected and not session.config.option.collectonly and kernel_matrix_leg.why_not() is None:
        session.config.kernel_matrix_leg = kernel_matrix_leg.start()


def pytest_unconfigure(config):
    """A run that ends early (-x, Ctrl-C) takes the leg's VM with it."""
    leg = getattr(config, "kernel_matrix_leg", None)
    if leg is not None:
        kernel_matrix_leg.stop(leg)
