"""How a block rule blocks, as the data plane needs it: the 451 page.

A block rule's `method:` is drop (the default), reset or page (see
bpf/block_reply.h). Under page, the data plane answers a plain-HTTP request
with the whole response built here, from the block_pages map, in one TCP
segment: `HTTP/1.1 451 Unavailable For Legal Reasons` (RFC 7725), a
`Link: <url>; rel="blocked-by"` header naming who blocks when the policy
gives one, and a short body. The response must fit in one segment at any
MTU: at most SLUICE_PAGE_BYTES_MAX bytes, headers included.
"""

import re
from dataclasses import dataclass

from .abi import ABI

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
