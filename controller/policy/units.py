# SPDX-License-Identifier: GPL-2.0-only
"""Rates, sizes, durations and domain names, from the text a policy gives them in."""

import ipaddress
import re

from ..names import normalise

NAME_MAX = 253
LABEL_MAX = 63
RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
LABEL = re.compile(r"^[a-z0-9_-]{1,63}$")
# A whole well-formed name at once: the common case of a million-name feed;
# only a name that fails it is taken apart label by label to say why.
WELL_FORMED_NAME = re.compile(rb"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")
RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)$", re.IGNORECASE)
SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)$")
DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)$")
RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
DURATION_UNITS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
                  "h": 3600 * 10**9, "d": 86400 * 10**9}


def parse_rate(text: str) -> int:
    """'128kbit' -> 128000 bits per second."""
    match = RATE.match(text.strip())
    if not match:
        raise ValueError(f"not a rate: {text!r} (use a number and bit, kbit, mbit or gbit, e.g. 128kbit)")
    return round(float(match[1]) * RATE_UNITS[match[2].lower()])


def parse_size(text: str) -> int:
    """'64KiB' -> 65536 bytes."""
    match = SIZE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (use a number and B, KB, MB, GB, KiB, MiB or GiB, e.g. 64KiB)")
    return round(float(match[1]) * SIZE_UNITS[match[2]])


def parse_duration(text: str) -> int:
    """'250ms' -> 250000000 nanoseconds."""
    match = DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use a number and ns, us, ms, s, m, h or d, e.g. 250ms)")
    return round(float(match[1]) * DURATION_UNITS[match[2]])


def check_domain(raw: str) -> tuple[bytes | None, str | None]:
    """(normalised name, None) or (None, what is wrong with it)."""
    if raw.startswith("*."):
        return None, (f"wildcard {raw!r}: write domains: [{raw[2:]}] instead; "
                      "suffix rules already cover every name below a domain")
    try:
        encoded = raw.encode("ascii")
    except UnicodeEncodeError:
        return None, f"{raw!r} is not ASCII: use its IDNA form (xn--...)"
    name = normalise(encoded)
    text = name.decode()
    # Only digits and dots, or a colon, can make an IP address.
    if ":" in text or text.replace(".", "").isdigit():
        try:
            ipaddress.ip_address(text.strip("[]"))
            return None, f"{raw!r} is an IP address: sluice matches names, not addresses"
        except ValueError:
            pass
    if len(name) <= NAME_MAX and WELL_FORMED_NAME.fullmatch(name):
        return name, None
    if not name:
        return None, "empty domain name"
    if len(name) > NAME_MAX:
        return None, f"{raw[:40]}... is {len(name)} bytes long; a domain name has at most {NAME_MAX}"
    for label in text.split("."):
        if not label:
            return None, f"{raw!r} has an empty label"
        if len(label) > LABEL_MAX:
            return None, f"{raw!r} has a label of {len(label)} characters; at most {LABEL_MAX}"
        if not LABEL.match(label):
            return None, f"{raw!r}: label {label!r} may only use letters, digits, '-' and '_'"
    return name, None
