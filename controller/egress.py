# SPDX-License-Identifier: GPL-2.0-only
"""tc egress for `shape` and `delay`: the fq qdisc and the EDT program.

sluice_tc_egress sets each shaped or delayed packet's departure time
(skb->tstamp); only the fq qdisc honours it, so the device's root qdisc must
be fq. The controller installs fq only over the kernel's default root qdisc
(or none), and on exit deletes it, which makes the kernel put back that same
default: the device ends exactly as it was. A root qdisc someone configured
(an HTB tree, say) is never replaced: sluice refuses instead.
"""

import logging
import subprocess
import uuid

from pyroute2 import IPRoute, NetlinkError

from .netns import inside_netns
from .tc import EGRESS_PRIO, TC_H_ROOT, TC_PARENT_EGRESS, TcError, TcFilter, device_index

log = logging.getLogger(__name__)

# Root qdiscs the kernel installs by itself (handle 0:): replacing one of
# these with fq and deleting fq later restores it.
DEFAULT_ROOT_KINDS = {"noqueue", "pfifo_fast", "fq_codel", "mq", "fq", "pfifo", "sfq", "cake"}


class EgressError(TcError):
    """A device sluice cannot shape on."""


def kernel_has_fq() -> bool:
    """Can this kernel make an fq qdisc? Tried in a throwaway namespace."""
    ns = f"sluice-fq-probe-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        return subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "fq"],
                              capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


class EgressShaper:
    """fq as root and sluice_tc_egress on clsact egress, on one device."""

    def __init__(self, ifname: str, netns: str | None, program_fd: int):
        self.ifname, self.netns = ifname, netns
        with inside_netns(netns), IPRoute() as ipr:
            index = device_index(ipr, ifname, netns)
            root = _root_qdisc(ipr, index)
            self.installed_fq = False
            if root is None or (root["kind"] != "fq" and root["handle"] == 0):
                try:
                    ipr.tc("replace", "fq", index, parent=TC_H_ROOT, handle=0x5A1C0000)
                except NetlinkError as error:
                    raise EgressError(
                        f"{ifname}: cannot install the fq qdisc (sch_fq): {error}. shape and delay "
                        "need sch_fq: load the module (modprobe sch_fq) or use a kernel built with "
                        "CONFIG_NET_SCH_FQ, or give the rule 'fallback: throttle'") from error
                self.installed_fq = True
                self.previous_root = root["kind"] if root else "none"
            elif root["kind"] != "fq":
                raise EgressError(
                    f"{ifname}: root qdisc {root['kind']} {root['handle'] >> 16:x}: was configured "
                    "by someone else; sluice will not replace it. Remove it, or shape on another device.")
        self.program = TcFilter(ifname, netns, TC_PARENT_EGRESS, "sluice_tc_egress", program_fd, EGRESS_PRIO)
        log.info("shaping on %s egress (fq %s)", ifname,
                 f"installed over {self.previous_root}" if self.installed_fq else "already there")

    def close(self) -> None:
        """Put the device back as it was."""
        self.program.close()
        if not self.installed_fq:
            return
        try:
            with inside_netns(self.netns), IPRoute() as ipr:
                links = ipr.link_lookup(ifname=self.ifname)
                if links:
                    ipr.tc("del", index=links[0], parent=TC_H_ROOT)
        except NetlinkError as error:
            log.warning("could not restore %s egress: %s", self.ifname, error)


def set_up_egress(datapath, policy, interfaces) -> list:
    """fq and the EDT program on every interface, if any rule shapes or delays,
    now or at one of its escalation steps (a step is no time to find fq missing).

    Where fq is missing, shape rules that allow it fall back to throttle;
    otherwise EgressError says what is missing, before any XDP is attached."""
    egress_rules = [stage for rule in policy.rules for stage in (rule, *(rule.at(s.at) for s in rule.escalate))
                    if stage.action in ("shape", "delay") and not stage.monitor]
    if not egress_rules:
        return []
    shapers = []
    try:
        for ifname, netns in interfaces:
            shapers.append(EgressShaper(ifname, netns, datapath.tc_egress_fd()))
    except EgressError:
        for shaper in shapers:
            shaper.close()
        if not all(r.action == "shape" and r.fallback == "throttle" for r in egress_rules):
            raise
        log.warning("the fq qdisc is missing: shape rules fall back to throttle at the same rates")
        datapath.police_shape_rules()
        return []
    return shapers


def _root_qdisc(ipr, index) -> dict | None:
    for qdisc in ipr.get_qdiscs(index):
        if qdisc["parent"] == TC_H_ROOT:
            return {"kind": qdisc.get_attr("TCA_KIND"), "handle": qdisc["handle"]}
    return None
