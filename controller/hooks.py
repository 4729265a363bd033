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
  tc        the classifier at tc ingress (clsact, direct action), compiled
            from the same source for the skb (bpf/ctx.h): it too sees
            aggregates whole, and reads them where they lie, without the
            copy. Its tail-called stages have a program array of their own.
  auto      native on physical NICs, generic where native XDP costs the
            interface its offloads:
            - veth: a native XDP program on one end turns off the other
              end's segmentation offload, so every 64 KB segment crosses as
              some 45 frames; the lab forwards at 0.1-0.2x of its
              no-program speed that way, and at about no-program speed with
              generic XDP (bench/README.md, bench/forwarding.py).
            - virtio-net whose host hands over aggregates (rx-gro-hw on, the
              guest TSO/LRO offloads): the driver turns them off to attach
              native XDP, or refuses it. Not measured here; the reason is the
              same as veth's.
            An interface whose driver refuses native XDP gets generic.
            tc is faster there (bench/README.md, "tc ingress against
            generic XDP": an empty program costs nothing measurable at tc
            and a fifth to a quarter of the throughput at generic XDP, which
            copies every cloned or nonlinear skb), but auto keeps generic
            for what only an XDP link gives: --fail-open, and the refusal of
            an interface where another XDP program runs. --hook tc asks for
            it (docs/operations.md).

The kernel reports what it attached; `sluice run` logs the choice with its
reason, and `sluice status` shows both.
"""

from dataclasses import dataclass

from .netns import inside_netns

HOOKS = ("native", "generic", "tc")
CHOICES = ("auto", *HOOKS)
HOOK_HELP = ("native: XDP in the driver (fastest on a physical NIC); generic: XDP on the kernel's skb, "
             "which keeps segmentation offload and GRO; tc: the classifier at tc ingress, on the skb "
             "too, without generic XDP's copy of each aggregate; auto: native on physical NICs, "
             "generic on veth and on virtio-net with receive offloads, where native XDP costs them "
             "(default: %(default)s)")


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
        return HookChoice("generic", "auto: a veth, whose peer loses its segmentation offload under "
                                     "native XDP (--hook tc forwards faster still, without --fail-open)",
                          may_fall_back=False)
    if bus == "virtio" and _receive_offload_on(ifname, netns):
        return HookChoice("generic", "auto: virtio-net with receive offload (rx-gro-hw), which native XDP "
                                     "turns off", may_fall_back=False)
    return HookChoice("native", "auto: neither a veth nor virtio-net with receive offload, so XDP in "
                                "its driver", may_fall_back=True)


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
