# SPDX-License-Identifier: GPL-2.0-only
"""What a rule's flow is, beside its name: its protocol, its ClientHello's ECH
and ALPN, its server's destination set; and when the action starts (after:)."""

import re

import yaml

from ..abi import ABI
from .model import DIRECTIONS, TRIGGER_MAX, Trigger
from .nodes import NodeReader
from .units import parse_size

PROTOCOLS = ("tls", "http", "quic")         # and "any"
TLS_KEYS = ("ech", "alpn")
ECH_CONDITIONS = ("present", "absent")
AFTER_KEYS = ("bytes", "packets", "direction")
ALPN_ID = re.compile(r"^[\x21-\x7e]{1,%d}$" % ABI.SLUICE_ALPN_ID_BYTES)   # printable ASCII, as registered ids are


class FlowReader(NodeReader):
    """The loader's reading of each rule's what keys (against self.destination_names,
    the destination sets defined) and of its trigger."""

    def flow_conditions(self, keys) -> dict:
        """The rule's conditions on what the flow is; a key given counts even
        where it allows everything (protocol: any): it is the rule's condition."""
        details = {}
        if "protocol" in keys:
            node = keys["protocol"][1]
            items = node.value if isinstance(node, yaml.SequenceNode) else [node]
            protocols = [self.scalar(item, "protocol") for item in items]
            for item, protocol in zip(items, protocols):
                if protocol is not None and protocol not in PROTOCOLS + ("any",):
                    self.problem(item, f"unknown protocol {protocol!r}; one of: {', '.join(PROTOCOLS)}, any")
            details["protocols"] = () if "any" in protocols else tuple(sorted({p for p in protocols if p}))
        if "tls" in keys:
            details.update(self.tls_conditions(keys["tls"][1]))
            if details.get("protocols") == ("http",):
                self.problem(keys["tls"][0], "tls conditions need a ClientHello: protocol http never has one")
        if "destination" in keys:
            destination = self.scalar(keys["destination"][1], "destination")
            if destination not in self.destination_names:
                known = ", ".join(sorted(self.destination_names)) or "none are defined under destinations:"
                self.problem(keys["destination"][1], f"unknown destination set {destination!r}; known: {known}")
            details["destination"] = destination
        return details

    def tls_conditions(self, node) -> dict:
        details = {}
        tls = self.mapping(node, "tls", TLS_KEYS)
        if not tls:
            self.problem(node, "tls needs ech (present or absent) and/or alpn (a list of protocol ids)")
        if "ech" in tls:
            ech = self.scalar(tls["ech"][1], "ech")
            if ech not in ECH_CONDITIONS:
                self.problem(tls["ech"][1], "ech must be present or absent")
            details["ech"] = ech
        if "alpn" in tls:
            listed = tls["alpn"][1]
            if not isinstance(listed, yaml.SequenceNode) or not listed.value:
                self.problem(listed, "alpn must be a list of protocol ids, e.g. [h2, http/1.1]")
                return details
            ids = [self.scalar(item, "an ALPN protocol id") for item in listed.value]
            for item, protocol_id in zip(listed.value, ids):
                if protocol_id is not None and not ALPN_ID.match(protocol_id):
                    self.problem(item, f"ALPN id {protocol_id!r}: 1 to {ABI.SLUICE_ALPN_ID_BYTES} printable "
                                       "ASCII characters (e.g. h2, http/1.1, h3)")
            details["alpn"] = tuple(dict.fromkeys(i for i in ids if i))
        return details

    def trigger(self, node) -> Trigger | None:
        keys = self.mapping(node, "after", AFTER_KEYS)
        units = [unit for unit in ("bytes", "packets") if unit in keys]
        if len(units) != 1 or "direction" not in keys:
            self.problem(node, "after needs bytes or packets (one of them) and direction (up or down), "
                               "e.g. {bytes: 16KiB, direction: down}")
            return None
        direction = self.scalar(keys["direction"][1], "direction")
        if direction not in DIRECTIONS:
            self.problem(keys["direction"][1], "direction must be up or down")
            return None
        value = keys[units[0]][1]
        count = (self.quantity(value, "bytes", parse_size, 1, TRIGGER_MAX, "bytes") if units[0] == "bytes"
                 else self.integer(value, "packets", 1, TRIGGER_MAX))
        return Trigger(units[0], count, direction) if count else None
