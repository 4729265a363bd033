# SPDX-License-Identifier: GPL-2.0-only
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
both (a TcFilter, controller/tc.py).

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

import logging
import re
from dataclasses import dataclass

from pyroute2 import NetlinkError

from .abi import ABI
from .tc import RESET_PRIO, TC_PARENT_INGRESS, TcError, TcFilter

log = logging.getLogger(__name__)

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


def set_up_server_resets(datapath, policy, interfaces) -> list[TcFilter]:
    """Where a rule answers clients, put sluice_tc_reset on every interface's
    tc ingress and tell the data plane, so that servers are reset too.

    Without it (a device that refuses clsact) clients are still reset, by
    XDP_TX; the server's socket then lingers until its own timeout."""
    if not answers_clients(policy):
        return []
    resets = []
    try:
        for ifname, netns in interfaces:
            # sluice_tc_reset on tc ingress: the RST to the server that XDP cannot
            # send beside its reply to the client (bpf/block_reply.h).
            resets.append(TcFilter(ifname, netns, TC_PARENT_INGRESS, "sluice_tc_reset", datapath.tc_reset_fd(),
                                   RESET_PRIO))
    except (NetlinkError, TcError) as error:
        for reset in resets:
            reset.close()
        log.warning("tc ingress unavailable (%s): blocked clients are reset, their servers are not", error)
        return []
    datapath.set_config(flags=datapath.config().flags | ABI.SLUICE_CFG_SERVER_RESETS)
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
