"""tc filters (controller/tc.py) as the kernel keeps them: where an earlier
version's crashed controller left a filter, the next one takes it over."""

import os
import subprocess

import bcc
import pytest
from pyroute2 import IPRoute

from sluice import tc
from sluice.netns import inside_netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and tc need root")

PASS_ALL = b"#include <uapi/linux/pkt_cls.h>\nint pass_all(struct __sk_buff *skb) { return TC_ACT_OK; }"


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
