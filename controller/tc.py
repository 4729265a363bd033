# SPDX-License-Identifier: GPL-2.0-only
"""A BPF program on one of a device's clsact hooks (tc ingress or egress).

sluice puts three programs there: sluice_tc_egress, which gives shaped and
delayed packets their departure times (egress.py); sluice_tc_reset, which
resets the servers of blocked flows (block_methods.py); and, on an
interface at --hook tc, the classifier itself (sluice_tc_ingress), in the
place of XDP and of sluice_tc_reset. Each is one TcFilter: clsact is added
if the device had none (and removed with the filter), and the filter is
replaced rather than added, so that the one a crashed controller left
behind is taken over. The classifier is attached through a tcx link
instead where the kernel has tcx (attach_classifier()).
"""

import ctypes
import logging
import os

from pyroute2 import IPRoute, NetlinkError

from . import hooks, xdp_link
from .libbpf import LIBBPF, LinkCreateOpts, error_number
from .netns import inside_netns, netns_exists

log = logging.getLogger(__name__)

TC_H_ROOT = 0xFFFFFFFF
TC_H_CLSACT = 0xFFFFFFF1
# clsact's two hooks: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS or TC_H_MIN_EGRESS).
TC_PARENT_INGRESS = (TC_H_CLSACT & 0xFFFF0000) | 0xFFF2
TC_PARENT_EGRESS = (TC_H_CLSACT & 0xFFFF0000) | 0xFFF3
FILTER_HANDLE = 1
# The classifier (--hook tc) comes first at ingress; sluice_tc_reset after
# it, where it never runs: a direct-action filter that returns ends the
# walk, and the classifier resets servers itself.
CLASSIFIER_PRIO = 1
RESET_PRIO = 2
EGRESS_PRIO = 1
CLASSIFIER_NAME = "sluice_tc_ingress"


class TcError(RuntimeError):
    """A device sluice cannot put its tc program on."""


def device_index(ipr, ifname: str, netns: str | None) -> int:
    links = ipr.link_lookup(ifname=ifname)
    if not links:
        raise TcError(f"no interface named {ifname!r}" + (f" in netns {netns}" if netns else ""))
    return links[0]


class TcFilter:
    """The BPF program `program_name` on `parent` (TC_PARENT_INGRESS or
    TC_PARENT_EGRESS) of one device, as a direct-action filter."""

    def __init__(self, ifname: str, netns: str | None, parent: int, program_name: str, program_fd: int,
                 prio: int):
        self.ifname, self.netns, self.parent, self.program_name = ifname, netns, parent, program_name
        self.prio = prio
        with inside_netns(netns), IPRoute() as ipr:
            index = device_index(ipr, ifname, netns)
            self.added_clsact = not any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index))
            if self.added_clsact:
                ipr.tc("add", "clsact", index)
            # replace: a filter a crashed controller left here is taken over in place.
            ipr.tc("replace-filter", "bpf", index, parent=self.parent, handle=FILTER_HANDLE,
                   fd=program_fd, name=program_name, direct_action=True, prio=prio)
            self._remove_stale_copies(ipr, index)

    def _remove_stale_copies(self, ipr, index: int) -> None:
        """Take off the same program at another prio on this hook: one that a
        crashed controller of an earlier version left where that version put
        it (sluice_tc_reset was at prio 1, where the classifier is now). A
        direct-action filter that returns ends the walk, so a stale copy ahead
        of this one would answer for it with the dead controller's maps."""
        for found in ipr.get_filters(index, parent=self.parent):
            options = found.get_attr("TCA_OPTIONS")
            prio = found["info"] >> 16
            if (found.get_attr("TCA_KIND") == "bpf" and prio != self.prio and options and
                    options.get_attr("TCA_BPF_NAME") == self.program_name):
                ipr.tc("del-filter", "bpf", index, parent=self.parent, handle=found["handle"], prio=prio)
                log.info("took a stale %s off %s (prio %d)", self.program_name, self.ifname, prio)

    def close(self) -> None:
        """Take the filter (and clsact, if it was ours) off the device."""
        try:
            with inside_netns(self.netns), IPRoute() as ipr:
                links = ipr.link_lookup(ifname=self.ifname)
                if not links:
                    return
                if self.added_clsact:
                    ipr.tc("del", "clsact", links[0])
                else:
                    ipr.tc("del-filter", "bpf", links[0], parent=self.parent, handle=FILTER_HANDLE,
                           prio=self.prio)
        except NetlinkError as error:
            log.warning("could not remove %s from %s: %s", self.program_name, self.ifname, error)


def attach_classifier(program_fd: int, ifname: str, netns: str | None, reason: str,
                      pin_path: str | None) -> "xdp_link.Link | TcIngressLink":
    """The classifier on ifname's tc ingress (--hook tc). Through a tcx link
    where the kernel has tcx, pinned at pin_path (fail-static) or not (gone
    with the controller: --fail-open), as an XDP link; else as a clsact
    filter (TcIngressLink). The previous run's link pinned at pin_path is
    taken over if it is a tcx link, or unpinned (an XDP link); sluice's own
    filter of an earlier run is taken off (tcx programs run ahead of
    filters, and it would judge what the link passes with stale maps)."""
    link_fd = xdp_link.take_over(pin_path, xdp_link.BPF_LINK_TYPE_TCX, program_fd, ifname) if pin_path else None
    where = f" (netns {netns})" if netns else ""
    with inside_netns(netns), IPRoute() as ipr:
        other_xdp = xdp_link.attached_xdp(ipr, device_index(ipr, ifname, netns))
    if other_xdp:
        # Not sluice's (its own XDP link was unpinned above): left in place,
        # it runs first, and sluice judges what it passes.
        log.warning("%s%s has an XDP program (%s) that sluice did not attach: it runs before sluice, "
                    "which judges only what it passes", ifname, where, xdp_link.XDP_MODE_NAMES.get(other_xdp))
    if not hooks.tcx_available():
        return TcIngressLink(ifname, netns, reason, program_fd, fail_static=pin_path is not None)
    remove_classifier(ifname, netns)
    if link_fd is not None:
        log.info("took over the pinned tcx link on %s", ifname)
        return xdp_link.Link(ifname, netns, "tc", "taken over from the previous run's pinned link", link_fd,
                             pin_path)
    with inside_netns(netns), IPRoute() as ipr:
        index = device_index(ipr, ifname, netns)
        # The kernel finds the device by its index in the caller's namespace.
        opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts))
        link_fd = LIBBPF.bpf_link_create(program_fd, index, hooks.BPF_TCX_INGRESS, ctypes.byref(opts))
    if link_fd < 0:
        raise TcError(f"cannot attach to the tc ingress of {ifname}: {os.strerror(error_number(link_fd))}")
    if pin_path:
        xdp_link.pin(link_fd, pin_path)
    log.info("attached to %s%s at tc ingress, by tcx link (%s)", ifname, where, reason)
    return xdp_link.Link(ifname, netns, "tc", reason, link_fd, pin_path)


class TcIngressLink:
    """The classifier on one interface's tc ingress as a clsact filter, on
    kernels without tcx: what xdp_link.Link is elsewhere. A tc filter
    outlives the controller by itself, as a pinned link does: fail_static
    keeps it on the device when the controller lets go (release), else it
    goes with the controller (which cannot hold if the controller dies:
    --fail-open is refused there)."""

    mode = "tc"
    pin_path = None

    def __init__(self, ifname: str, netns: str | None, reason: str, program_fd: int, fail_static: bool):
        self.ifname, self.netns, self.reason, self.fail_static = ifname, netns, reason, fail_static
        self.filter = TcFilter(ifname, netns, TC_PARENT_INGRESS, CLASSIFIER_NAME, program_fd, CLASSIFIER_PRIO)
        self.program_id = xdp_link.program_id(program_fd)
        log.info("attached to %s%s at tc ingress (%s)", ifname, f" (netns {netns})" if netns else "", reason)

    def detach(self) -> None:
        self.filter.close()

    def release(self) -> None:
        if not self.fail_static:
            self.detach()

    def attached_program(self) -> tuple[int, int]:
        """(program id, ifindex) of the filter as the kernel has it now; ifindex 0: gone.
        pyroute2 does not decode a filter's TCA_BPF_ID, so the filter is known
        by its place (ingress, CLASSIFIER_PRIO) and its program's name, and
        the id is the one it was given."""
        with inside_netns(self.netns), IPRoute() as ipr:
            links = ipr.link_lookup(ifname=self.ifname)
            if not links:
                return 0, 0
            for found in ipr.get_filters(links[0], parent=TC_PARENT_INGRESS):
                options = found.get_attr("TCA_OPTIONS")
                if (found.get_attr("TCA_KIND") == "bpf" and found["info"] >> 16 == CLASSIFIER_PRIO and
                        options and options.get_attr("TCA_BPF_NAME") == self.filter.program_name):
                    return self.program_id, links[0]
        return 0, 0

def remove_classifier(ifname: str, netns: str | None) -> None:
    """Take the classifier's filter that an earlier controller left on
    ifname's tc ingress off, if there is one (`sluice stop`, and before a
    tcx link goes on): a tc filter, unlike a link, has no pin to remove. It
    is known by its program's name, at whatever prio its version put it.
    A namespace that is gone took its interfaces, and their filters, along."""
    if netns is not None and not netns_exists(netns):
        return
    try:
        with inside_netns(netns), IPRoute() as ipr:
            links = ipr.link_lookup(ifname=ifname)
            if not links:
                return
            for found in ipr.get_filters(links[0], parent=TC_PARENT_INGRESS):
                options = found.get_attr("TCA_OPTIONS")
                if (found.get_attr("TCA_KIND") == "bpf" and options and
                        options.get_attr("TCA_BPF_NAME") == CLASSIFIER_NAME):
                    ipr.tc("del-filter", "bpf", links[0], parent=TC_PARENT_INGRESS, handle=found["handle"],
                           prio=found["info"] >> 16)
                    log.info("took the classifier's filter of an earlier run off %s", ifname)
    except (OSError, NetlinkError) as error:
        log.debug("no classifier to remove from %s: %s", ifname, error)
