# SPDX-License-Identifier: GPL-2.0-only
"""Attach XDP programs through BPF links, so that what happens when the
controller dies is a choice rather than an accident. (tc.py attaches the
classifier at tc ingress through a tcx link, a Link too.)

A link keeps the program on the interface for as long as someone holds it:
the controller's file descriptor, or a pin in bpffs. Pinned (fail-static,
the default), the data plane keeps enforcing after a crash and the next
`sluice run` takes the link over and swaps its program atomically, without
touching the flow table. Unpinned (fail-open), the kernel detaches the
program as soon as the controller is gone.

bcc 0.26 attaches XDP only by netlink, which has no such lifetime, so this
calls libbpf's bpf_link_create() and friends (controller/libbpf.py).
"""

import ctypes
import logging
import os
from dataclasses import dataclass

from pyroute2 import IPRoute

from . import hooks
from .libbpf import LIBBPF, LinkCreateOpts, LinkInfo, MapInfo, ProgInfo, error_number, object_info
from .netns import inside_netns

log = logging.getLogger(__name__)

BPF_XDP = 37                 # enum bpf_attach_type
BPF_LINK_TYPE_XDP = 6        # enum bpf_link_type
BPF_LINK_TYPE_TCX = 11
LINK_TYPE_NAMES = {BPF_LINK_TYPE_XDP: "XDP", BPF_LINK_TYPE_TCX: "tcx"}
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED, as pyroute2 names its values.
XDP_MODE_NAMES = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload"}


class AttachError(RuntimeError):
    pass


def _check(result: int, what: str) -> int:
    if result < 0:
        raise AttachError(f"{what}: {os.strerror(error_number(result))}")
    return result


@dataclass
class Link:
    """A BPF link that holds a program on one interface's hook: XDP, or tc ingress (tcx)."""
    ifname: str
    netns: str | None
    mode: str               # "native" or "generic" as the kernel reports it, or "tc"
    reason: str             # why this hook (controller/hooks.py)
    fd: int
    pin_path: str | None

    def update(self, prog_fd: int) -> None:
        """Swap the program atomically: each packet sees the old program or the new."""
        _check(LIBBPF.bpf_link_update(self.fd, prog_fd, None), f"replacing the program on {self.ifname}")

    def detach(self) -> None:
        """Remove the pin and close the link: the kernel detaches the program."""
        if self.pin_path and os.path.exists(self.pin_path):
            os.unlink(self.pin_path)
        os.close(self.fd)

    def release(self) -> None:
        """Close our descriptor only: a pinned link stays (fail-static)."""
        os.close(self.fd)

    def attached_program(self) -> tuple[int, int]:
        """(program id, ifindex) as the kernel has the link now; ifindex 0: detached."""
        info = LinkInfo()
        _check(object_info(self.fd, info), f"reading the link on {self.ifname}")
        return info.prog_id, info.ifindex


def pin(fd: int, path: str) -> None:
    """Pin a BPF object at path, replacing what was pinned there in one rename."""
    staging = f"{path}_new"          # bpffs refuses names with a dot
    if os.path.exists(staging):
        os.unlink(staging)
    _check(LIBBPF.bpf_obj_pin(fd, staging.encode()), f"pinning at {staging}")
    os.replace(staging, path)


def program_id(fd: int) -> int:
    """The kernel's id of the program behind fd."""
    info = ProgInfo()
    _check(object_info(fd, info), "reading program info")
    return info.id


def take_over(pin_path: str, link_type: int, prog_fd: int, ifname: str) -> int | None:
    """The link a previous run pinned at pin_path, now running prog_fd, if
    it is a link_type link (BPF_LINK_TYPE_XDP or _TCX); None if there is no
    pin. A link of the other hook is unpinned instead, which detaches it:
    else both hooks would judge each packet."""
    if not os.path.exists(pin_path):
        return None
    fd = get_pinned(pin_path)
    info = LinkInfo()
    try:
        _check(object_info(fd, info), f"reading the link pinned at {pin_path}")
        if info.type == link_type:
            _check(LIBBPF.bpf_link_update(fd, prog_fd, None), f"replacing the program on {ifname}")
            return fd
    except AttachError:
        os.close(fd)
        raise
    os.close(fd)
    os.unlink(pin_path)
    log.info("took the previous run's %s link off %s", LINK_TYPE_NAMES.get(info.type, "other"), ifname)
    return None


def get_pinned(path: str) -> int:
    """A new descriptor of the BPF object pinned at path."""
    return _check(LIBBPF.bpf_obj_get(path.encode()), f"opening {path}")


def map_layout(fd: int) -> tuple[int, int, int, int]:
    """(type, key size, value size, max entries) of the map behind fd."""
    info = MapInfo()
    _check(object_info(fd, info), "reading map info")
    return info.type, info.key_size, info.value_size, info.max_entries


def attach(prog_fd: int, ifname: str, netns: str | None = None, hook: "str | hooks.HookChoice" = "native",
           pin_path: str | None = None) -> Link:
    """Attach prog_fd to ifname at hook (controller/hooks.py: auto, native or
    generic XDP, or what hooks.choose() chose), or take over the pinned XDP
    link a previous run left there (in the mode it has: a link cannot change it)."""
    fd = take_over(pin_path, BPF_LINK_TYPE_XDP, prog_fd, ifname) if pin_path else None
    if fd is not None:
        link = Link(ifname, netns, _mode(ifname, netns), "taken over from the previous run's pinned link",
                    fd, pin_path)
        log.info("took over the pinned XDP link on %s (%s XDP)", ifname, link.mode)
        return link
    with inside_netns(netns), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise AttachError(f"no interface named {ifname!r}" + (f" in netns {netns}" if netns else ""))
        if attached_xdp(ipr, found[0]):
            raise AttachError(f"{ifname} already has an XDP program that sluice did not attach; "
                              f"remove it first (ip link set dev {ifname} xdp off)")
        choice = hook if isinstance(hook, hooks.HookChoice) else hooks.choose(ifname, netns, hook)
        errors, reason = [], choice.reason
        for attempt in ([choice.hook, "generic"] if choice.may_fall_back else [choice.hook]):
            opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts), flags=MODE_FLAGS[attempt])
            fd = LIBBPF.bpf_link_create(prog_fd, found[0], BPF_XDP, ctypes.byref(opts))
            if fd >= 0:
                break
            errors.append(f"{attempt}: {os.strerror(error_number(fd))}")
            reason = f"auto: the driver refuses native XDP ({os.strerror(error_number(fd))})"
        else:
            raise AttachError(f"cannot attach XDP to {ifname}: " + "; ".join(errors))
        attached_mode = XDP_MODE_NAMES.get(attached_xdp(ipr, found[0]), "unknown")
    if pin_path:
        _check(LIBBPF.bpf_obj_pin(fd, pin_path.encode()), f"pinning the link at {pin_path}")
    log.info("attached to %s%s in %s XDP mode (%s)", ifname, f" (netns {netns})" if netns else "", attached_mode,
             reason)
    return Link(ifname, netns, attached_mode, reason, fd, pin_path)


def attached_xdp(ipr, index: int) -> str | None:
    """How an XDP program is attached to device index (IFLA_XDP_ATTACHED: "xdp", "xdpgeneric"), or None."""
    xdp = ipr.get_links(index)[0].get_attr("IFLA_XDP")
    return xdp.get_attr("IFLA_XDP_ATTACHED") if xdp else None


def _mode(ifname: str, netns: str | None) -> str:
    with inside_netns(netns), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        return XDP_MODE_NAMES.get(attached_xdp(ipr, found[0]), "unknown") if found else "unknown"
