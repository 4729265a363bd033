# SPDX-License-Identifier: GPL-2.0-only
"""The details only some actions take: rates and bursts (throttle, shape), the
horizon and fallback (shape), latency and jitter (delay), the method and page (block)."""

from .. import block_methods
from .model import (BLOCK_METHODS, DEFAULT_BURST_MIN_BYTES, DEFAULT_BURST_SECONDS, DEFAULT_SHAPE_HORIZON_NS,
                    DIRECTIONS, FULL_FRAME_BYTES, HORIZON_MAX_NS, RATE_ACTIONS, RATE_MAX_BPS, SCOPES, RateLimit)
from .nodes import NodeReader
from .units import parse_duration, parse_rate, parse_size

ACTION_DETAIL_KEYS = ("rate", "burst", "direction", "up", "down", "scope", "horizon", "latency", "jitter",
                      "fallback", "method", "page")
DIRECTION_KEYS = ("rate", "burst")
PAGE_KEYS = ("body", "link")


class ActionReader(NodeReader):
    """The loader's reading of a rule's (or a step's) action details."""

    def action_details(self, node, keys, action) -> dict:
        """The fields of Rule that only some actions use; refuses the rest."""
        uses = {"throttle": {"rate", "burst", "direction", "up", "down", "scope"},
                "shape": {"rate", "burst", "direction", "up", "down", "scope", "horizon", "fallback"},
                "delay": {"latency", "jitter", "horizon"},
                "block": {"method", "page"}}.get(action, set())
        for key in ACTION_DETAIL_KEYS:
            if key in keys and key not in uses:
                self.problem(keys[key][0], f"{key!r} does not apply to action {action}")
        details = {}
        if "scope" in keys and "scope" in uses:
            scope = self.scalar(keys["scope"][1], "scope")
            if scope not in SCOPES:
                self.problem(keys["scope"][1], f"unknown scope {scope!r}; one of: {', '.join(SCOPES)}")
            details["scope"] = scope
        if action == "block":
            details.update(self.block_method(keys))
        if action in RATE_ACTIONS:
            details["limits"] = self.limits(node, keys, action)
            if action == "shape":
                details["horizon_ns"] = self.horizon(keys, DEFAULT_SHAPE_HORIZON_NS)
                if "fallback" in keys:
                    fallback = self.scalar(keys["fallback"][1], "fallback")
                    if fallback != "throttle":
                        self.problem(keys["fallback"][1], "fallback can only be throttle: police to the "
                                                          "same rate where the fq qdisc is missing")
                    details["fallback"] = fallback
        elif action == "delay":
            if "latency" not in keys:
                self.problem(node, "a delay rule needs latency (e.g. latency: 250ms)")
                return details
            latency = self.quantity(keys["latency"][1], "latency", parse_duration, 1, HORIZON_MAX_NS, "ns")
            jitter = (self.quantity(keys["jitter"][1], "jitter", parse_duration, 1, HORIZON_MAX_NS, "ns")
                      if "jitter" in keys else 0)
            if latency is None or jitter is None:
                return details
            details.update(latency_ns=latency, jitter_ns=jitter)
            details["horizon_ns"] = self.horizon(keys, min(HORIZON_MAX_NS, 2 * (latency + jitter)))
            if details["horizon_ns"] and details["horizon_ns"] <= latency + jitter:
                self.problem(keys.get("horizon", (node, node))[1],
                             "horizon must be longer than latency plus jitter, or every packet is dropped")
        return details

    def block_method(self, keys) -> dict:
        """method (drop, reset, page) and, for page, the page's body and link."""
        method = self.scalar(keys["method"][1], "method") if "method" in keys else "drop"
        if method is None:
            return {}
        if method not in BLOCK_METHODS:
            self.problem(keys["method"][1], f"unknown block method {method!r}; one of: {', '.join(BLOCK_METHODS)}")
            return {}
        details = {"block_method": method}
        if method != "page":
            if "page" in keys:
                self.problem(keys["page"][0], "'page' applies to method: page only")
            return details
        texts = {}
        if "page" in keys:
            page_keys = self.mapping(keys["page"][1], "page", PAGE_KEYS)
            texts = {key: self.scalar(value, f"page {key}") for key, (_, value) in page_keys.items()}
            if None in texts.values():
                return details
        try:
            details["page"] = block_methods.BlockPage(texts.get("body", block_methods.DEFAULT_PAGE_BODY),
                                                      texts.get("link"))
        except ValueError as error:
            self.problem(keys["page"][1], f"page: {error}")
        return details

    def horizon(self, keys, default: int) -> int:
        if "horizon" not in keys:
            return default
        return self.quantity(keys["horizon"][1], "horizon", parse_duration, 1, HORIZON_MAX_NS, "ns") or 0

    def limits(self, node, keys, action) -> dict[str, RateLimit]:
        limits = {}
        direction = "both"
        if "direction" in keys:
            direction = self.scalar(keys["direction"][1], "direction")
            if direction not in ("both",) + DIRECTIONS:
                self.problem(keys["direction"][1], "direction must be up, down or both")
                return limits
        if "rate" in keys:
            limit = self.rate_limit(keys["rate"][1], keys.get("burst", (None, None))[1])
            if limit:
                for d in DIRECTIONS if direction == "both" else (direction,):
                    limits[d] = limit
        elif "burst" in keys:
            self.problem(keys["burst"][0], "burst needs a rate beside it")
        for d in DIRECTIONS:
            if d in keys:
                sub = self.mapping(keys[d][1], f"{d}", DIRECTION_KEYS)
                if "rate" not in sub:
                    self.problem(keys[d][1], f"{d} needs a rate")
                    continue
                limit = self.rate_limit(sub["rate"][1], sub.get("burst", (None, None))[1])
                if limit:
                    limits[d] = limit
        if not limits and "rate" not in keys and not any(d in keys for d in DIRECTIONS):
            self.problem(node, f"a {action} rule needs a rate (e.g. rate: 128kbit), or up/down rates")
        return limits

    def rate_limit(self, rate_node, burst_node) -> RateLimit | None:
        rate = self.quantity(rate_node, "rate", parse_rate, 1, RATE_MAX_BPS, "bit/s")
        if rate is None:
            return None
        if burst_node is None:
            burst = max(round(rate / 8 * DEFAULT_BURST_SECONDS), DEFAULT_BURST_MIN_BYTES)
        else:
            burst = self.quantity(burst_node, "burst", parse_size, 1, 2**40, "bytes")
            if burst is None:
                return None
            if burst < FULL_FRAME_BYTES:
                self.problem(burst_node, f"burst of {burst} bytes is smaller than one full-size frame "
                                         f"({FULL_FRAME_BYTES} bytes): such packets could never pass")
                return None
        return RateLimit(rate, burst)
