# SPDX-License-Identifier: GPL-2.0-only
"""Which hook the data plane runs at on each interface, and why.

  native    XDP in the driver, before the kernel builds an skb: the fastest
            on a physical NIC, whose segmentation and receive offloads work
            after (or before) XDP either way.
  generic   XDP on the kernel's skb (the "xdpgeneric" of `ip link`): the same
            program, run after the driver has built the packet. It sees
            segmentation offload (GSO/TSO) and GRO aggregates whole, up to
            64 KB in one run of the program, but copies each aggregate into
            a linear buffer first (the kernel's netif_skb_check_for_xdp).
  tc        the classifier at tc ingress, compiled from the same source
            for the skb (bpf/ctx.h): it too sees aggregates whole, and reads
            them where they lie, without the copy. Its tail-called stages
            have a program array of their own. Attached through a tcx link
            (Linux 6.6+), which lives as an XDP link does (pinned: fail-
            static; unpinned: gone with the controller, --fail-open); on an
            older kernel as a clsact filter, which outlives the controller,
            so --fail-open is refused there.
  auto      native on physical NICs; where native XDP costs the interface
            its offloads, tc if the kernel has tcx, else generic:
            - veth: a native XDP program on one end turns off the other
              end's segmentation offload, so every 64 KB segment crosses as
              some 45 frames; the lab forwards at 0.1-0.2x of its
              no-program speed that way.
            - virtio-net whose host hands over aggregates (rx-gro-hw on, the
              guest TSO/LRO offloads): the driver turns them off to attach
              native XDP, or refuses it. Not measured here; the reason is the
              same as veth's.
            There tc is the faster skb hook (bench/README.md, "tc ingress
            against generic XDP": an empty program forwards 0.94-0.96x of
            the no-program throughput at tc, 0.70-0.76x at generic XDP,
            which copies every cloned or nonlinear skb). Without tcx,
            generic XDP, whose link holds --fail-open. An interface whose
            driver refuses native XDP gets generic.
At tc, an XDP program of another's on the interface stays (an XDP hook
refuses the interface): it runs first, and sluice judges what it passes.

The kernel reports what it attached; `sluice run` logs the choice with its
reason, and `sluice status` shows both.
"""

import ctypes
import errno
import functools
import os
from dataclasses import dataclass

from .netns import inside_netns

BPF_PROG_TYPE_SCHED_CLS = 3
BPF_TCX_INGRESS = 46         # enum bpf_attach_type

HOOKS = ("native", "generic", "tc")
CHOICES = ("auto", *HOOKS)
HOOK_HELP = ("native: XDP in the driver (fastest on a physical NIC); generic: XDP on the kernel's skb, "
             "which keeps segmentation offload and GRO; tc: the classifier at tc ingress, on the skb "
             "too, without generic XDP's copy of each aggregate; auto: native on physical NICs; "
             "on veth and on virtio-net with receive offloads, where native XDP costs them, tc "
             "(generic on kernels before 6.6, which have no tcx link) (default: %(default)s)")


@dataclass(frozen=True)
class HookChoice:
    hook: str                # one of HOOKS
    reason: str
    may_fall_back: bool      # to generic, if the driver refuses native XDP


def choose(ifname: str, netns: str | None, requested: str) -> HookChoice:
    """The hook for ifname: the one requested, or under "auto" the one this kind of interface runs best at."""
    if requested not in CHOICES:
        raise ValueError(f"unknown hook {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested != "auto":
        return HookChoice(requested, "asked for (--hook)", may_fall_back=False)
    kind, bus = _interface_kind(ifname, netns)
    if kind == "veth":
        cost = "a veth, whose peer loses its segmentation offload under native XDP"
    elif bus == "virtio" and _receive_offload_on(ifname, netns):
        cost = "virtio-net with receive offload (rx-gro-hw), which native XDP turns off"
    else:
        return HookChoice("native", "auto: neither a veth nor virtio-net with receive offload, so XDP in "
                                    "its driver", may_fall_back=True)
    if tcx_available():
        return HookChoice("tc", f"auto: {cost}; tc ingress forwards faster than generic XDP there "
                                f"(bench/README.md)", may_fall_back=False)
    return HookChoice("generic", f"auto: {cost}; not tc, which forwards faster, since this kernel has no "
                                 f"tcx link (6.6+) to detach it with the controller (--fail-open)",
                      may_fall_back=False)


@functools.cache
def tcx_available() -> bool:
    """Does this kernel attach tc programs by tcx link (Linux 6.6+)? Asked
    once: a tcx link for the smallest tc program to no device. A kernel
    with tcx looks the device up and finds none (ENODEV); one without
    refuses the attach type (EINVAL)."""
    from .libbpf import LIBBPF, LinkCreateOpts, error_number
    return_zero = (ctypes.c_uint64 * 2)(0xB7, 0x95)      # r0 = 0; exit
    prog_fd = LIBBPF.bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, b"sluice_probe", b"GPL", return_zero, 2, None)
    if prog_fd < 0:
        return False        # no tc program loads here at all (a privilege short): the attach says why
    try:
        opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts))
        link_fd = LIBBPF.bpf_link_create(prog_fd, 0, BPF_TCX_INGRESS, ctypes.byref(opts))
    finally:
        os.close(prog_fd)
    return link_fd < 0 and error_number(link_fd) == errno.ENODEV      # ifindex 0 is never a device


def uses_xdp(choices) -> bool:
    """Does any of these HookChoices need the XDP build (else the tc build alone runs)?"""
    return any(choice.hook != "tc" for choice in choices)


def describe(mode: str) -> str:
    """A link's mode as sluice prints it: "native XDP", "generic XDP", "tc ingress"."""
    return "tc ingress" if mode == "tc" else f"{mode} XDP"


def _interface_kind(ifname: str, netns: str | None) -> tuple[str | None, str | None]:
    """(the link kind, e.g. "veth", None for a device; the bus of its parent device, e.g. "virtio", "pci")."""
    from pyroute2 import IPRoute    # here, not at the top: the CLI imports this module, and pyroute2 takes a second
    with inside_netns(netns), IPRoute() as ipr:
        found = ipr.get_links(ifname=ifname)
    if not found:
        return None, None
    link = found[0]
    info = link.get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") if info else None), link.get_attr("IFLA_PARENT_DEV_BUS_NAME")


def _receive_offload_on(ifname: str, netns: str | None) -> bool:
    from pyroute2.ethtool.ethtool import Ethtool    # as in _interface_kind
    with inside_netns(netns), Ethtool() as ethtool:
        features = ethtool.get_features(ifname).features
    return any(features[name].enable for name in ("rx-gro-hw", "rx-lro") if name in features)
