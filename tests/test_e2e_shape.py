"""shape and delay end to end: EDT at tc egress with fq, or a clear refusal without it.

This machine's own kernel may lack sch_fq; then the refusal and the
fallback are tested here, and the shaping itself in the VM kernels
(vm/run-matrix), which have it.
"""

import os
import subprocess
import sys

import pytest

from sluice.datapath import Datapath
from sluice.egress import EgressError, kernel_has_fq, set_up_egress
from sluice.lab import Lab
from sluice.policy import load_policy

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and XDP need root")]

RATE_BPS = 4_000_000
LATENCY_S = 0.1
POLICY = f"""\
version: 1
rules:
  - name: shaped
    action: shape
    rate: {RATE_BPS}bit
    burst: 16KiB
    domains: [slow.example]
  - name: lagged
    action: delay
    latency: {int(LATENCY_S * 1000)}ms
    domains: [watched.example]
"""
FALLBACK_POLICY = f"""\
version: 1
rules:
  - name: shaped
    action: shape
    rate: {RATE_BPS}bit
    burst: 128KiB
    fallback: throttle
    domains: [slow.example]
"""


HAS_FQ = os.geteuid() == 0 and kernel_has_fq()
needs_fq = pytest.mark.skipif(not HAS_FQ, reason="this kernel has no sch_fq; the VM kernels test shaping")
needs_no_fq = pytest.mark.skipif(HAS_FQ, reason="this kernel has sch_fq; the refusal needs one without it")


def policy_file(tmp_path, text):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def lab():
    with Lab() as built:
        yield built


def enforce(lab, policy, hook="native"):
    datapath = Datapath(policy)
    shapers = set_up_egress(datapath, policy, [(lab.edge_client_iface, lab.edge_ns),
                                               (lab.edge_server_iface, lab.edge_ns)])
    for ifname in (lab.edge_client_iface, lab.edge_server_iface):
        datapath.attach(ifname, netns=lab.edge_ns, hook=hook)
    return datapath, shapers


# The classifier marks a shaped or delayed flow for the egress program from
# either hook: native XDP, or tc ingress (--hook tc), where it runs on the
# skb that then leaves through the same egress program.
over_hooks = pytest.mark.parametrize("hook", ["native", "tc"])


def root_qdisc(lab, ifname) -> str:
    return subprocess.run(["tc", "-n", lab.edge_ns, "qdisc", "show", "dev", ifname, "root"],
                          capture_output=True, text=True, check=True).stdout.split()[1]


@needs_no_fq
def test_without_fq_shape_and_delay_are_refused_by_name_and_nothing_is_attached(lab, tmp_path):
    path = policy_file(tmp_path, POLICY)
    result = lab.run_in(lab.edge_ns, [sys.executable, "-m", "sluice", "run", "--policy", str(path),
                                      "--iface", lab.edge_client_iface, "--iface", lab.edge_server_iface],
                        timeout=120)
    assert result.returncode == 1
    assert "sch_fq" in result.stderr
    links = subprocess.run(["ip", "-n", lab.edge_ns, "-d", "link", "show"], capture_output=True,
                           text=True, check=True).stdout
    assert "prog/xdp" not in links
    assert root_qdisc(lab, lab.edge_client_iface) == "noqueue"


# Throttled now, shaped from a date to come: fq must be there (or its absence
# known) from the start, not when the step arrives.
ESCALATES_TO_SHAPE = """\
version: 1
rules:
  - name: later
    action: throttle
    rate: 1mbit
    domains: [slow.example]
    escalate: [{at: 2099-01-01T00:00:00Z, action: shape, rate: 512kbit}]
"""


@needs_no_fq
def test_without_fq_an_escalation_to_shape_is_refused_at_the_start(lab, tmp_path):
    policy = load_policy(policy_file(tmp_path, ESCALATES_TO_SHAPE))
    datapath = Datapath(policy)
    try:
        with pytest.raises(EgressError, match="sch_fq"):
            set_up_egress(datapath, policy, [(lab.edge_client_iface, lab.edge_ns)])
    finally:
        datapath.close()


@needs_fq
def test_an_escalation_to_shape_installs_fq_from_the_start(lab, tmp_path):
    datapath, shapers = enforce(lab, load_policy(policy_file(tmp_path, ESCALATES_TO_SHAPE)))
    try:
        assert root_qdisc(lab, lab.edge_client_iface) == "fq"
    finally:
        datapath.close()
        for shaper in shapers:
            shaper.close()


@needs_no_fq
def test_without_fq_shape_falls_back_to_throttle_when_the_policy_allows(lab, tmp_path):
    datapath, shapers = enforce(lab, load_policy(policy_file(tmp_path, FALLBACK_POLICY)))
    try:
        assert shapers == []
        achieved = lab.download_rate("slow.example", seconds=3.0)
        assert achieved <= RATE_BPS + 128 * 1024 * 8 / 3.0
        assert datapath.rule_stats()[1]["down"]["dropped_packets"] > 0, "policed: the excess is dropped"
    finally:
        datapath.close()


@needs_fq
@over_hooks
def test_shaped_download_keeps_to_the_rate_by_delaying_not_dropping(lab, tmp_path, hook):
    policy = load_policy(policy_file(tmp_path, POLICY))
    datapath, shapers = enforce(lab, policy, hook)
    try:
        assert root_qdisc(lab, lab.edge_client_iface) == "fq"
        achieved = lab.download_rate("slow.example", seconds=6.0)
        # The upper bound is the point; the lower one only shows the flow is
        # paced, not stalled (under emulation, TLS set-up eats into the time).
        assert 0.5 * RATE_BPS <= achieved <= RATE_BPS + 16 * 1024 * 8 / 6.0
        stats = datapath.rule_stats()[policy.rule_by_name("shaped").id]["down"]
        assert stats["delayed_packets"] > 0
        assert stats["dropped_packets"] <= stats["packets"] * 0.01
        # A paced flow cannot beat the rate plus its burst over the run, so a
        # fifth above that shows the other flow is not paced. Not more: under
        # emulation (the VM kernels) on a busy host the whole TLS path has
        # carried as little as 7 Mbit/s.
        open_rate = lab.download_rate("open.example", seconds=3.0)
        assert open_rate > 1.2 * (RATE_BPS + 16 * 1024 * 8 / 3.0)
        assert datapath.rule_stats()[0]["down"]["delayed_packets"] == 0, "no flow of no rule is held"
    finally:
        datapath.close()
        for shaper in shapers:
            shaper.close()
    assert root_qdisc(lab, lab.edge_client_iface) == "noqueue", "the original qdisc is back"


def tls_phases(lab, name) -> tuple[float, float]:
    """One HTTPS request, timed by curl's own clock from the TCP connection on:
    (connected to TLS done, TLS done to the answer's first byte)."""
    result = lab.run_in(lab.client_ns, [
        "curl", "-sS", "--max-time", "5", "--cacert", lab.ca_path,
        *lab.resolve(name, "https", 4), "-o", "/dev/null",
        "-w", "%{time_connect} %{time_appconnect} %{time_starttransfer}", f"https://{name}/"], timeout=10)
    assert result.returncode == 0, result.stderr
    connected, secured, answered = map(float, result.stdout.split())
    return secured - connected, answered - secured


@needs_fq
@over_hooks
def test_delay_adds_its_latency_to_each_exchange(lab, tmp_path, hook):
    policy = load_policy(policy_file(tmp_path, POLICY))
    datapath, shapers = enforce(lab, policy, hook)
    try:
        # After the ClientHello, which names the flow, the server's flight
        # crosses the edge in the handshake, then the request and the response,
        # each held LATENCY_S. Phases, not against a baseline: under emulation
        # starting curl and the TLS arithmetic vary by more than LATENCY_S.
        handshake, exchange = tls_phases(lab, "watched.example")
        assert handshake >= LATENCY_S * 0.9
        assert exchange >= 2 * LATENCY_S * 0.9
        # The best of three, so a busy emulator cannot fail it.
        assert min(tls_phases(lab, "open.example")[1] for _ in range(3)) < LATENCY_S
    finally:
        datapath.close()
        for shaper in shapers:
            shaper.close()
