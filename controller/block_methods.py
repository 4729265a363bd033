"""How a block rule blocks, as the data plane needs it: the 451 page, and
the tc ingress program that resets servers.

A block rule's `method:` is drop (the default), reset or page (see
bpf/block_reply.h). Under page, the data plane answers a plain-HTTP request
with the whole response built here, from the block_pages map, in one TCP
segment: `HTTP/1.1 451 Unavailable For Legal Reasons` (RFC 7725), a
`Link: <url>; rel="blocked-by"` header naming who blocks when the policy
gives one, and a short body. The response must fit in one segment at any
MTU: at most SLUICE_PAGE_BYTES_MAX bytes, headers included.

XDP answers a client from the packet it was given and cannot send a second
packet, the RST that frees the server's socket: where a rule answers
clients, sluice_tc_reset sits on tc ingress of every interface and sends
both (ServerResets).

QUIC flows are only ever dropped, whatever the method: an established QUIC
connection is closed from outside only by a stateless reset, whose token the
server derives from its own key, which sluice does not have. (A
CONNECTION_CLOSE in an Initial packet could be forged during the handshake,
Initial keys coming from the connection ID, as the controller's own
decryption shows; sluice does not build one.) A dropped QUIC flow costs a
browser little: it falls back to TCP, where the rule's method applies. The
policy loader accepts any method on a rule that matches QUIC flows and
documents this rather than refusing it.
"""

import ctypes
import logging
import re
from dataclasses import dataclass

from pyroute2 import IPRoute, NetlinkError

from .abi import ABI
from .egress import FILTER_HANDLE, FILTER_PRIO, TC_H_CLSACT, EgressError, _index
from .netns import inside_netns

log = logging.getLogger(__name__)
# clsact's ingress hook: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS).
TC_PARENT_INGRESS = (TC_H_CLSACT & 0xFFFF0000) | 0xFFF2

DEFAULT_PAGE_BODY = "This site is blocked by the network you are using.\n"
# A URL as it may stand between <> in a Link header (RFC 8288): no spaces,
# controls, quotes or angle brackets that would end it or the header early.
LINK = re.compile(r"^https?://[!#-;=?-\[\]-~]+$")


def _response(body: str, link: str | None) -> bytes:
    encoded = body.encode("utf-8")
    lines = ["HTTP/1.1 451 Unavailable For Legal Reasons",
             "Content-Type: text/plain; charset=utf-8",
             f"Content-Length: {len(encoded)}",
             *([f'Link: <{link}>; rel="blocked-by"'] if link else []),
             "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + encoded


@dataclass(frozen=True)
class BlockPage:
    """The 451 response of one rule; raises ValueError if it cannot be sent."""
    body: str
    link: str | None = None

    def __post_init__(self):
        if self.link is not None and not LINK.match(self.link):
            raise ValueError(f"link {self.link!r} is not an http:// or https:// URL without spaces, "
                             "quotes or angle brackets")
        size = len(self.response())
        if size > ABI.SLUICE_PAGE_BYTES_MAX:
            raise ValueError(f"the response would be {size} bytes with its headers; at most "
                             f"{ABI.SLUICE_PAGE_BYTES_MAX} fit in the one segment it is sent in "
                             "(shorten the body)")

    def response(self) -> bytes:
        return _response(self.body, self.link)


def ones_complement_sum(data: bytes) -> int:
    """The 16-bit ones' complement sum of data as big-endian words (RFC 1071),
    an odd last byte padded with zero: struct block_page's csum."""
    padded = data + b"\0" * (len(data) % 2)
    total = sum(int.from_bytes(padded[i:i + 2], "big") for i in range(0, len(padded), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def fill_page(leaf, page: BlockPage):
    """struct block_page for one rule's page."""
    response = page.response()
    leaf.len = len(response)
    leaf.csum = ones_complement_sum(response)
    leaf.bytes[:len(response)] = list(response)
    return leaf


def answers_clients(policy) -> bool:
    """Does any rule, now or at one of its escalation steps, block by reset or page?"""
    return any(stage.action == "block" and stage.block_method != "drop" and not stage.monitor
               for rule in policy.rules for stage in (rule, *(rule.at(step.at) for step in rule.escalate)))


class ServerResets:
    """sluice_tc_reset on one device's clsact ingress: the RST to the server
    that XDP cannot send beside its reply to the client (bpf/block_reply.h)."""

    def __init__(self, ifname: str, netns: str | None, program_fd: int):
        self.ifname, self.netns = ifname, netns
        with inside_netns(netns), IPRoute() as ipr:
            index = _index(ipr, ifname, netns)
            self.added_clsact = not any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index))
            if self.added_clsact:
                ipr.tc("add", "clsact", index)
            # replace, not add: the filter a crashed controller left is taken over.
            self._set_filter(ipr, "replace-filter", index, program_fd)

    def replace_program(self, program_fd: int) -> None:
        """Swap in a reloaded policy's program, in place."""
        with inside_netns(self.netns), IPRoute() as ipr:
            self._set_filter(ipr, "replace-filter", _index(ipr, self.ifname, self.netns), program_fd)

    @staticmethod
    def _set_filter(ipr, command, index, program_fd) -> None:
        ipr.tc(command, "bpf", index, parent=TC_PARENT_INGRESS, handle=FILTER_HANDLE,
               fd=program_fd, name="sluice_tc_reset", direct_action=True, prio=FILTER_PRIO)

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
                    ipr.tc("del-filter", "bpf", links[0], parent=TC_PARENT_INGRESS,
                           handle=FILTER_HANDLE, prio=FILTER_PRIO)
        except NetlinkError as error:
            log.warning("could not remove sluice_tc_reset from %s: %s", self.ifname, error)


def set_up_server_resets(datapath, policy, interfaces) -> list[ServerResets]:
    """Where a rule answers clients, put sluice_tc_reset on every interface's
    tc ingress and tell the data plane, so that servers are reset too.

    Without it (a device that refuses clsact) clients are still reset, by
    XDP_TX; the server's socket then lingers until its own timeout."""
    if not answers_clients(policy):
        return []
    resets = []
    try:
        for ifname, netns in interfaces:
            resets.append(ServerResets(ifname, netns, datapath.tc_reset_fd()))
    except (NetlinkError, EgressError) as error:
        for reset in resets:
            reset.close()
        log.warning("tc ingress unavailable (%s): blocked clients are reset, their servers are not", error)
        return []
    config = datapath.table("config")
    value = config[ctypes.c_uint32(0)]
    datapath.set_config(flags=value.flags | ABI.SLUICE_CFG_SERVER_RESETS)
    return resets


METHOD_EFFECTS = {
    "drop": "every packet dropped; the client waits for its own timeout",
    "reset": "the client gets a TCP RST at once, and the server one too",
    "page": "a plain-HTTP request gets the 451 page, then a RST; other TCP flows a RST",
}


def describe_method(rule) -> str:
    """What a block rule's method does to a client, for `sluice explain`."""
    return (f"{rule.block_method}: {METHOD_EFFECTS[rule.block_method]}; QUIC flows are dropped "
            "whatever the method (a client then falls back to TCP, where it applies)")


def effective_method(rule, proto: str | None) -> str:
    """How a flow of `proto` ("tls", "http", "quic" or None) blocked by rule is
    blocked: QUIC is always dropped (a stateless reset needs the server's
    key), and a page goes to plain HTTP only."""
    if proto == "quic":
        return "drop"
    if rule.block_method == "page" and proto != "http":
        return "reset"
    return rule.block_method


def follow_server_resets(resets: list[ServerResets], datapath, policy, interfaces) -> list[ServerResets]:
    """For a reloaded policy's data plane: move the tc ingress programs to it
    and tell it they are there, or set them up if this is the first policy
    whose rules answer clients. Called before the XDP swap, so that the new
    program's replies find the new tc program (and its page map) waiting."""
    if not resets:
        return set_up_server_resets(datapath, policy, interfaces)
    for reset in resets:
        reset.replace_program(datapath.tc_reset_fd())
    config = datapath.table("config")
    datapath.set_config(flags=config[ctypes.c_uint32(0)].flags | ABI.SLUICE_CFG_SERVER_RESETS)
    return resets
