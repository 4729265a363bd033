"""tc filters and tcx links (controller/tc.py) as the kernel keeps them:
where an earlier version's crashed controller left a filter or pinned a
link, the next one takes it over or off."""

import json
import os
import shutil
import subprocess
import time

import bcc
import pytest
from pyroute2 import IPRoute

from sluice import hooks, tc, xdp_link
from sluice.libbpf import LinkInfo, object_info
from sluice.netns import inside_netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and tc need root")

PASS_ALL = b"#include <uapi/linux/pkt_cls.h>\nint pass_all(struct __sk_buff *skb) { return TC_ACT_OK; }"
XDP_PASS_ALL = b"int pass_all(struct xdp_md *ctx) { return XDP_PASS; }"
needs_tcx = pytest.mark.skipif(not hooks.tcx_available(), reason="this kernel has no tcx links (6.6+)")


@pytest.fixture(scope="module")
def veth():
    """(namespace, interface): one end of a veth pair in a namespace of this test's own."""
    ns = f"sluice-tc-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "tc0", "type", "veth", "peer", "name", "tc1"], check=True)
        yield ns, "tc0"
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


@pytest.fixture(scope="module")
def program_fd():
    program = bcc.BPF(text=PASS_ALL)
    yield program.load_func(b"pass_all", bcc.BPF.SCHED_CLS).fd
    program.cleanup()


@pytest.fixture(scope="module")
def another_program_fd():
    """A second tc program, as the next controller's classifier is one."""
    program = bcc.BPF(text=PASS_ALL)
    yield program.load_func(b"pass_all", bcc.BPF.SCHED_CLS).fd
    program.cleanup()


@pytest.fixture
def pin_path():
    """Where a link is pinned, in a bpffs directory of this test's own."""
    directory = f"/sys/fs/bpf/sluice-tc-{os.getpid()}"
    os.makedirs(directory, exist_ok=True)
    yield f"{directory}/link"
    shutil.rmtree(directory)


def link_info(link) -> LinkInfo:
    """What the kernel says of a link (xdp_link.Link): its id, type, program."""
    info = LinkInfo()
    assert object_info(link.fd, info) == 0
    return info


def link_ids() -> set[int]:
    """The ids of the BPF links the kernel has now."""
    listed = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["id"] for link in json.loads(listed)}


def xdp_attached(ns: str, ifname: str) -> bool:
    """Is an XDP program on the device? A link unpinned goes a moment later (the kernel frees it deferred)."""
    for _ in range(20):
        with inside_netns(ns), IPRoute() as ipr:
            if not xdp_link.attached_xdp(ipr, ipr.link_lookup(ifname=ifname)[0]):
                return False
        time.sleep(0.05)
    return True


def ingress_filters(ns: str, ifname: str) -> set[tuple[str, int]]:
    """(program name, prio) of each BPF filter on the device's tc ingress."""
    with inside_netns(ns), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        return {(found.get_attr("TCA_OPTIONS").get_attr("TCA_BPF_NAME"), found["info"] >> 16)
                for found in ipr.get_filters(index, parent=tc.TC_PARENT_INGRESS)
                if found.get_attr("TCA_KIND") == "bpf" and found.get_attr("TCA_OPTIONS")}


def test_a_filter_takes_its_stale_copy_at_another_prio_off_and_leaves_others(veth, program_fd):
    ns, ifname = veth
    # An earlier version put sluice_tc_reset at prio 1, where the classifier
    # now goes; a crash left it there, beside another program of the device's.
    stale = tc.TcFilter(ifname, ns, tc.TC_PARENT_INGRESS, "sluice_tc_reset", program_fd, tc.CLASSIFIER_PRIO)
    tc.TcFilter(ifname, ns, tc.TC_PARENT_INGRESS, "someone_elses", program_fd, 7)
    assert ingress_filters(ns, ifname) == {("sluice_tc_reset", tc.CLASSIFIER_PRIO), ("someone_elses", 7)}
    current = tc.TcFilter(ifname, ns, tc.TC_PARENT_INGRESS, "sluice_tc_reset", program_fd, tc.RESET_PRIO)
    assert ingress_filters(ns, ifname) == {("sluice_tc_reset", tc.RESET_PRIO), ("someone_elses", 7)}
    current.close()
    assert ("sluice_tc_reset", tc.RESET_PRIO) not in ingress_filters(ns, ifname)
    stale.close()    # clsact was the stale one's to add: it goes, with what is left on it
    assert ingress_filters(ns, ifname) == set()


@needs_tcx
def test_a_tcx_link_takes_sluices_stale_classifier_filter_off_and_leaves_others(veth, program_fd):
    """The classifier's filter a controller without tcx left: tcx programs
    run ahead of filters, and it would judge what the link passes with the
    dead controller's maps."""
    ns, ifname = veth
    stale = tc.TcFilter(ifname, ns, tc.TC_PARENT_INGRESS, tc.CLASSIFIER_NAME, program_fd, tc.CLASSIFIER_PRIO)
    others = tc.TcFilter(ifname, ns, tc.TC_PARENT_INGRESS, "someone_elses", program_fd, 7)
    link = tc.attach_classifier(program_fd, ifname, ns, "asked for (--hook)", None)
    try:
        assert link_info(link).type == xdp_link.BPF_LINK_TYPE_TCX
        assert ingress_filters(ns, ifname) == {("someone_elses", 7)}
    finally:
        link.detach()
        others.close()
        stale.close()     # its clsact


@needs_tcx
def test_a_pinned_tcx_link_is_taken_over_and_runs_the_new_program(veth, program_fd, another_program_fd, pin_path):
    """Fail-static at tc: the link outlives its controller by its pin, and
    the next one swaps its program into the same link."""
    ns, ifname = veth
    first = tc.attach_classifier(program_fd, ifname, ns, "asked for (--hook)", pin_path)
    link_id = link_info(first).id
    first.release()                 # the controller dies
    assert link_id in link_ids()
    taken_over = tc.attach_classifier(another_program_fd, ifname, ns, "asked for (--hook)", pin_path)
    assert link_info(taken_over).id == link_id
    assert taken_over.attached_program()[0] == xdp_link.program_id(another_program_fd)
    taken_over.detach()             # sluice stop
    assert not os.path.exists(pin_path)
    assert link_id not in link_ids()


@needs_tcx
def test_a_pinned_xdp_link_gives_way_to_a_tcx_link(veth, program_fd, pin_path):
    """An earlier run's XDP link, where this run puts the interface at tc: left, both hooks would judge."""
    ns, ifname = veth
    xdp = bcc.BPF(text=XDP_PASS_ALL)
    try:
        earlier = xdp_link.attach(xdp.load_func(b"pass_all", bcc.BPF.XDP).fd, ifname, ns, "generic", pin_path)
        earlier.release()
        link = tc.attach_classifier(program_fd, ifname, ns, "asked for (--hook)", pin_path)
        try:
            assert not xdp_attached(ns, ifname)
            assert link_info(link).type == xdp_link.BPF_LINK_TYPE_TCX
            assert os.path.exists(pin_path)
        finally:
            link.detach()
    finally:
        xdp.cleanup()


def test_tc_leaves_another_programs_xdp_in_place_to_run_first(veth, program_fd, caplog):
    """An XDP hook refuses such an interface (test_e2e.py); tc ingress comes
    after XDP, so sluice attaches there and judges what that program passes."""
    ns, ifname = veth
    other = bcc.BPF(text=XDP_PASS_ALL)
    theirs = xdp_link.attach(other.load_func(b"pass_all", bcc.BPF.XDP).fd, ifname, ns, "generic")
    try:
        their_program = theirs.attached_program()
        ours = tc.attach_classifier(program_fd, ifname, ns, "asked for (--hook)", None)
        ours.detach()
        assert theirs.attached_program() == their_program, "their XDP program stays attached"
        assert "has an XDP program (generic) that sluice did not attach: it runs before sluice" in caplog.text
    finally:
        theirs.detach()
        other.cleanup()
