"""End to end: the real data plane on the lab's edge router, real servers, real clients.

curl, Python's ssl module and `openssl s_client` run in the client
namespace and reach nginx in the server namespace through the edge, where
sluice is attached to both of the edge's interfaces.
"""

import os
import subprocess
import sys

import pytest

from helpers import enforcing
from sluice.datapath import Datapath
from sluice.lab import CLIENT2_V4, CLIENT2_V6, CLIENT_V4, CLIENT_V6, Lab
from sluice.policies import lab_policy_path
from sluice.policy import load_policy

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and XDP need root")]


@pytest.fixture(scope="module")
def enforced(lab):
    """The lab policy, attached to every interface of the edge."""
    datapath = Datapath(load_policy(lab_policy_path()))
    with enforcing(lab, datapath):
        yield datapath, datapath.policy
    datapath.close()


def rule_flows(datapath, policy, rule_name):
    rule = next(r for r in policy.rules if r.name == rule_name)
    return datapath.rule_stats()[rule.id]["flows"]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("client", ["curl", "python_tls", "openssl_tls"])
def test_blocked_name_fails_and_allowed_name_on_same_server_works(lab, enforced, client, family):
    connect = {"curl": lambda name: lab.curl(name, family=family, timeout=2.0),
               "python_tls": lambda name: lab.python_tls(name, family=family, timeout=2.0),
               "openssl_tls": lambda name: lab.openssl_tls(name, family=family, timeout=2.0)}[client]
    assert not connect("blocked.example").ok
    assert not connect("cdn.blocked.example").ok
    assert connect("notblocked.example").ok, "a look-alike name must pass"
    assert connect("open.example").ok


def test_exact_rule_does_not_cover_subdomains(lab, enforced):
    assert not lab.curl("exact.example", timeout=2.0).ok
    assert lab.curl("sub.exact.example", timeout=2.0).ok


@pytest.mark.parametrize("family", [4, 6])
def test_http_host_is_blocked(lab, enforced, family):
    assert not lab.curl("blocked.example", scheme="http", family=family, timeout=2.0).ok
    result = lab.curl("open.example", scheme="http", family=family, timeout=2.0)
    assert result.ok and "open.example" in result.body


@pytest.mark.parametrize("family", [4, 6])
def test_two_client_classes_get_different_treatment_for_one_name(lab, enforced, family):
    """video-mobile blocks video.example for the mobile class (the second
    client network) only; the first client, in class fixed, is not named."""
    datapath, policy = enforced
    before = rule_flows(datapath, policy, "video-mobile")
    fixed = lab.curl("video.example", family=family, timeout=2.0)
    assert fixed.ok and "video.example" in fixed.body
    assert not lab.curl("video.example", family=family, timeout=2.0, second_client=True).ok
    assert rule_flows(datapath, policy, "video-mobile") > before
    client2 = CLIENT2_V6 if family == 6 else CLIENT2_V4
    client1 = CLIENT_V6 if family == 6 else CLIENT_V4
    assert policy.decide(b"video.example", client2).rule.name == "video-mobile", "explain agrees"
    assert policy.decide(b"video.example", client1).rule is None


def test_monitor_mode_counts_the_flow_but_lets_it_pass(lab, enforced):
    datapath, policy = enforced
    before = rule_flows(datapath, policy, "watch-lab")
    assert lab.curl("watched.example", timeout=2.0).ok
    assert lab.curl("watched.example", scheme="http", timeout=2.0).ok
    assert rule_flows(datapath, policy, "watch-lab") == before + 2


def test_allow_rule_passes_and_is_counted(lab, enforced):
    datapath, policy = enforced
    before = rule_flows(datapath, policy, "allow-lab")
    assert lab.curl("allowed.example", timeout=2.0).ok
    assert rule_flows(datapath, policy, "allow-lab") == before + 1


def test_blocked_flow_drops_are_counted(lab, enforced):
    datapath, policy = enforced
    rule = next(r for r in policy.rules if r.name == "block-lab")
    before = datapath.rule_stats()[rule.id]["dropped_packets"]
    assert not lab.curl("blocked.example", timeout=1.0).ok
    assert datapath.rule_stats()[rule.id]["dropped_packets"] > before


def test_traffic_is_untouched_after_detach():
    policy = load_policy(lab_policy_path())
    with Lab() as own_lab:
        datapath = Datapath(policy)
        datapath.attach(own_lab.edge_client_iface, netns=own_lab.edge_ns)
        datapath.attach(own_lab.edge_server_iface, netns=own_lab.edge_ns)
        assert not own_lab.curl("blocked.example", timeout=1.0).ok
        datapath.close()
        assert own_lab.curl("blocked.example", timeout=2.0).ok


def test_refused_policy_attaches_nothing(lab, tmp_path):
    """A bad policy exits 2 with file:line:column, and the interface stays bare."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: x\n    action: explode\n    domains: [blocked.example]\n")
    result = lab.run_in(lab.client_ns, [sys.executable, "-m", "sluice", "run",
                                        "--policy", str(bad), "--iface", "eth0"],
                        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{bad}:4:13" in result.stderr
    links = subprocess.run(["ip", "-n", lab.client_ns, "-j", "-d", "link", "show", "eth0"],
                           capture_output=True, text=True, check=True).stdout
    assert '"xdp"' not in links


def test_generic_mode_when_asked_and_reported_as_such():
    policy = load_policy(lab_policy_path())
    with Lab() as own_lab:
        datapath = Datapath(policy)
        try:
            modes = {datapath.attach(ifname, netns=own_lab.edge_ns, hook="generic")
                     for ifname in (own_lab.edge_client_iface, own_lab.edge_server_iface)}
            assert modes == {"generic"}
            links = subprocess.run(["ip", "-n", own_lab.edge_ns, "-d", "link", "show", own_lab.edge_client_iface],
                                   capture_output=True, text=True, check=True).stdout
            assert "xdpgeneric" in links
            assert not own_lab.curl("blocked.example", timeout=1.0).ok
            assert own_lab.curl("notblocked.example", timeout=2.0).ok
        finally:
            datapath.close()


def test_an_interface_with_someone_elses_xdp_program_is_refused():
    import bcc
    from sluice import xdp_link
    other = bcc.BPF(text=b"int other(struct xdp_md *ctx) { return XDP_PASS; }")
    with Lab() as own_lab:
        link = xdp_link.attach(other.load_func(b"other", bcc.BPF.XDP).fd, own_lab.edge_client_iface, own_lab.edge_ns)
        datapath = Datapath(load_policy(lab_policy_path()))
        try:
            with pytest.raises(xdp_link.AttachError, match="already has an XDP program"):
                datapath.attach(own_lab.edge_client_iface, netns=own_lab.edge_ns)
        finally:
            datapath.close()
            link.detach()
            other.cleanup()
