# SPDX-License-Identifier: GPL-2.0-only
"""A BPF program on one of a device's clsact hooks (tc ingress or egress).

sluice puts two programs there: sluice_tc_egress, which gives shaped and
delayed packets their departure times (egress.py), and sluice_tc_reset,
which resets the servers of blocked flows (block_methods.py). Each is one
TcFilter: clsact is added if the device had none (and removed with the
filter), and the filter is replaced rather than added, so that the one a
crashed controller left behind is taken over.
"""

import logging

from pyroute2 import IPRoute, NetlinkError

from .netns import inside_netns

log = logging.getLogger(__name__)

TC_H_ROOT = 0xFFFFFFFF
TC_H_CLSACT = 0xFFFFFFF1
# clsact's two hooks: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS or TC_H_MIN_EGRESS).
TC_PARENT_INGRESS = (TC_H_CLSACT & 0xFFFF0000) | 0xFFF2
TC_PARENT_EGRESS = (TC_H_CLSACT & 0xFFFF0000) | 0xFFF3
FILTER_PRIO = 1
FILTER_HANDLE = 1


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

    def __init__(self, ifname: str, netns: str | None, parent: int, program_name: str, program_fd: int):
        self.ifname, self.netns, self.parent, self.program_name = ifname, netns, parent, program_name
        with inside_netns(netns), IPRoute() as ipr:
            index = device_index(ipr, ifname, netns)
            self.added_clsact = not any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index))
            if self.added_clsact:
                ipr.tc("add", "clsact", index)
            self._set(ipr, index, program_fd)

    def replace_program(self, program_fd: int) -> None:
        """Swap in a reloaded policy's program, in place: the filter is never absent."""
        with inside_netns(self.netns), IPRoute() as ipr:
            self._set(ipr, device_index(ipr, self.ifname, self.netns), program_fd)

    def _set(self, ipr, index: int, program_fd: int) -> None:
        ipr.tc("replace-filter", "bpf", index, parent=self.parent, handle=FILTER_HANDLE,
               fd=program_fd, name=self.program_name, direct_action=True, prio=FILTER_PRIO)

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
                           prio=FILTER_PRIO)
        except NetlinkError as error:
            log.warning("could not remove %s from %s: %s", self.program_name, self.ifname, error)
