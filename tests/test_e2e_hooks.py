"""End to end at the hooks that keep a veth's offloads: generic XDP and tc
ingress, the ones `--hook auto` picks for the lab's veths (tc on kernels
with tcx links, generic XDP before them).

On a veth, native XDP costs the peer its segmentation offload (controller/
hooks.py), so these run the classifier on the kernel's skb instead: generic
XDP, or the same source compiled for tc ingress (bpf/ctx.h). There it sees
the server's segmentation-offload aggregates whole, up to 64 KB in one run,
and its replies (reset, page) leave through the kernel's generic XDP
transmit path, or by tc's redirect, instead of the driver's. These tests
check the actions whose mechanics that changes: the block replies, freeze,
and the policer judging aggregates (shape and delay at tc: test_e2e_shape.py,
in the VM kernels that have sch_fq). The other e2e modules run native XDP.
"""

import os
import subprocess

import pytest

from helpers import block_methods_policy, enforcing, rule_stats
from sluice import hooks, xdp_link
from sluice.abi import ABI
from test_tc import link_ids, link_info

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and XDP need root")]

DOWN_BPS, BURST = 4_000_000, 128 * 1024
SECONDS = 3.0
ETHERNET_FRAME = 1514          # the largest frame on the lab's veths (MTU 1500)
POLICY = block_methods_policy("domains: [blocked.example]", "exact: [exact.example]", "exact: [video.example]") + f"""\
  - name: slow
    action: throttle
    down: {{rate: {DOWN_BPS}bit, burst: {BURST}B}}
    domains: [slow.example]
  - name: frozen
    action: freeze
    domains: [watched.example]
"""


@pytest.fixture(scope="module", params=["generic", "tc"])
def attached(lab, make_datapath, request):
    """The Datapath on the lab's edge at a hook (--hook generic or tc), the hook, and the modes the kernel reports."""
    datapath = make_datapath(POLICY)
    with enforcing(lab, datapath, hook=request.param, server_resets=True) as modes:
        yield datapath, request.param, modes


@pytest.fixture
def enforced(attached):
    return attached[0]


@pytest.fixture
def once(attached):
    """For a test that attaches on its own: run it with one of the module's hooks."""
    if attached[1] != "generic":
        pytest.skip("runs once")


def tc_ingress_filters(lab, ifname) -> str:
    return subprocess.run(["tc", "-n", lab.edge_ns, "filter", "show", "dev", ifname, "ingress"],
                          capture_output=True, text=True).stdout


def test_auto_picks_tc_on_veth_where_the_kernel_has_tcx_and_says_why(lab):
    choice = hooks.choose(lab.edge_client_iface, lab.edge_ns, "auto")
    assert "veth" in choice.reason
    if hooks.tcx_available():
        assert choice.hook == "tc" and "tc ingress forwards faster" in choice.reason
    else:
        assert choice.hook == "generic" and "no tcx link" in choice.reason


def test_generic_is_attached_as_generic_xdp(lab, attached):
    datapath, hook, modes = attached
    if hook != "generic":
        pytest.skip("--hook generic")
    assert modes == {"generic"}
    links = subprocess.run(["ip", "-n", lab.edge_ns, "-d", "link", "show", lab.edge_client_iface],
                           capture_output=True, text=True, check=True).stdout
    assert "xdpgeneric" in links


def test_tc_puts_the_classifier_on_tc_ingress_by_tcx_link_or_filter(lab, attached):
    """A tcx link where the kernel has tcx, else a clsact filter; never XDP."""
    datapath, hook, modes = attached
    if hook != "tc":
        pytest.skip("--hook tc")
    assert modes == {"tc"}
    assert {link.reason for link in datapath.links} == {"asked for (--hook)"}
    for link in datapath.links:
        filters = tc_ingress_filters(lab, link.ifname)
        if hooks.tcx_available():
            assert link_info(link).type == xdp_link.BPF_LINK_TYPE_TCX
            assert link.attached_program()[0] == xdp_link.program_id(datapath.tc_ingress.function.fd)
            assert "sluice_tc_ingress" not in filters
        else:
            assert "sluice_tc_ingress" in filters and "direct-action" in filters
        links = subprocess.run(["ip", "-n", lab.edge_ns, "-d", "link", "show", link.ifname],
                               capture_output=True, text=True, check=True).stdout
        assert "xdp" not in links


def test_detaching_tc_takes_the_classifier_off(lab, enforced):
    """On the edge namespace's loopback, which had no clsact: its tcx link
    goes, or its filter and the clsact sluice added for it."""
    assert enforced.attach("lo", netns=lab.edge_ns, hook="tc") == "tc"
    link = enforced.links.pop()
    if hooks.tcx_available():
        link_id = link_info(link).id
        assert link_id in link_ids()
        link.detach()
        assert link_id not in link_ids()
        assert tc_ingress_filters(lab, "lo") == ""
        return
    assert "sluice_tc_ingress" in tc_ingress_filters(lab, "lo")
    link.detach()
    assert tc_ingress_filters(lab, "lo") == ""
    qdiscs = subprocess.run(["tc", "-n", lab.edge_ns, "qdisc", "show", "dev", "lo"],
                            capture_output=True, text=True, check=True).stdout
    assert "clsact" not in qdiscs


def test_auto_falls_back_to_generic_where_the_driver_has_no_native_xdp(lab, enforced, once):
    """The edge namespace's loopback: no veth, no virtio, and no native XDP in its driver."""
    datapath = enforced
    assert hooks.choose("lo", lab.edge_ns, "auto").hook == "native"
    assert datapath.attach("lo", netns=lab.edge_ns, hook="auto") == "generic"
    link = datapath.links.pop()
    link.detach()
    assert "refuses native XDP" in link.reason


def test_the_program_sees_the_servers_aggregates_whole(lab, enforced):
    """What generic XDP is chosen for: the server's segmentation offload stays
    on, so a download reaches the program as packets larger than any frame
    (under native XDP on a veth, none is)."""
    before = rule_stats(enforced, None)["down"]
    assert lab.download_rate("open.example", seconds=1.0) > 0
    after = rule_stats(enforced, None)["down"]
    packets, nbytes = after["packets"] - before["packets"], after["bytes"] - before["bytes"]
    assert packets and nbytes / packets > ETHERNET_FRAME


@pytest.mark.parametrize("family", [4, 6])
def test_reset_fails_curl_at_once(lab, enforced, family):
    before = rule_stats(enforced, "reset-rule")["resets"]
    result = lab.curl("blocked.example", family=family, timeout=3.0)
    assert not result.ok and "connection reset" in result.error.lower(), result.error
    assert result.seconds < 1.0
    assert rule_stats(enforced, "reset-rule")["resets"] > before
    assert lab.curl("open.example", family=family).ok, "other names on the same server pass"


def test_page_answers_plain_http_with_451(lab, enforced):
    before = rule_stats(enforced, "page-rule")["pages"]
    result = lab.curl("exact.example", scheme="http", timeout=3.0, extra_args=("-i",))
    assert result.exit_code == 0 and result.http_code == 451
    assert rule_stats(enforced, "page-rule")["pages"] > before


def test_drop_leaves_curl_to_its_timeout(lab, enforced):
    result = lab.curl("video.example", timeout=1.0)
    assert result.exit_code == 28


def test_freeze_answers_nothing_and_drops_what_the_client_sends(lab, enforced):
    before = rule_stats(enforced, "frozen")["up"]["dropped_packets"]
    result = lab.curl("watched.example", timeout=1.0)
    assert result.exit_code == 28, "no reset, no answer: the client waits for its own timeout"
    assert rule_stats(enforced, "frozen")["up"]["dropped_packets"] > before


def test_throttle_holds_a_download_of_aggregates_to_rate_and_burst(lab, enforced):
    achieved = lab.download_rate("slow.example", seconds=SECONDS)
    assert achieved <= (DOWN_BPS * SECONDS + BURST * 8) / SECONDS
    assert achieved >= DOWN_BPS / 3, "the flow is throttled, not stalled"
    assert rule_stats(enforced, "slow")["down"]["dropped_packets"] > 0, "the policer, not the path, held it"


@pytest.fixture
def replies_sent_back(enforced):
    """Without server resets (a device that refuses clsact), the reply to
    the client leaves by XDP_TX: at the generic hook, the kernel's own
    transmit path, not the driver's; at tc, by a redirect out of the
    interface it came in on."""
    datapath = enforced
    flags = datapath.config().flags
    datapath.set_config(flags=flags & ~ABI.SLUICE_CFG_SERVER_RESETS)
    yield
    datapath.set_config(flags=flags)


def test_the_hook_sends_the_reset_back_itself(lab, enforced, replies_sent_back):
    before = rule_stats(enforced, "reset-rule")["resets"]
    result = lab.curl("blocked.example", timeout=3.0)
    assert not result.ok and "connection reset" in result.error.lower(), result.error
    assert result.seconds < 1.0
    assert rule_stats(enforced, "reset-rule")["resets"] > before


def test_the_hook_sends_the_page_back_itself(lab, enforced, replies_sent_back):
    before = rule_stats(enforced, "page-rule")["pages"]
    result = lab.curl("exact.example", scheme="http", timeout=3.0, extra_args=("-i",))
    assert result.exit_code == 0 and result.http_code == 451, result.error
    assert rule_stats(enforced, "page-rule")["pages"] > before
