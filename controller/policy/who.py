# SPDX-License-Identifier: GPL-2.0-only
"""Who a rule applies to: client classes (their prefixes), percent of clients by
rollout hash, server ports, flows the client opened, and QUIC."""

import re
from decimal import Decimal, InvalidOperation

import numpy
import yaml

from ..abi import ABI
from ..clients import PREFIX_DTYPE, ClientClass, ClientClasses, parse_prefix
from .model import Problem
from .nodes import NodeReader
from .units import RULE_NAME

CLASS_KEYS = ("description", "prefixes", "prefixes_file")
PERCENT = re.compile(r"^\d{1,3}(\.\d{1,2})?$")      # shares in steps of 0.01%
PORT_RANGE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
CLASS_NAME = RULE_NAME


class AudienceReader(NodeReader):
    """The loader's reading of classes, and of each rule's who keys (against self.class_names, the classes defined)."""

    def classes(self, node, kind: str = "class") -> ClientClasses:
        """Every class's prefixes; a prefix may belong to one class only. The
        destination sets (kind "destination set") are read alike."""
        what = "classes" if kind == "class" else "destinations"
        found, prefixes, class_ids = [], [], []
        where: dict[tuple[int, bytes], str] = {}       # prefix -> "class at file:line"
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must map {kind} names to their prefixes")
            node = yaml.MappingNode("tag:yaml.org,2002:map", [])
        for key_node, value_node in node.value:
            name = key_node.value
            if not CLASS_NAME.match(str(name)) or any(c.name == name for c in found):
                self.problem(key_node, f"{kind} name {name!r}: use lower-case letters, digits, '-', '_' "
                                       "and '.', each name once")
                continue
            client_class = ClientClass(len(found) + 1, name, key_node.start_mark.line + 1)
            found.append(client_class)
            keys = self.mapping(value_node, f"{kind} {name}", CLASS_KEYS)
            listed = []                                 # (text, file, line, column)
            if "prefixes" in keys:
                items = keys["prefixes"][1]
                if not isinstance(items, yaml.SequenceNode):
                    self.problem(items, "prefixes must be a list of CIDR prefixes")
                else:
                    listed += [(self.scalar(item, "a prefix"), self.path, item.start_mark.line + 1,
                                item.start_mark.column + 1) for item in items.value]
            if "prefixes_file" in keys:
                listed += self.listed_file(keys["prefixes_file"][1], "prefixes_file")
            if not listed and "prefixes" not in keys and "prefixes_file" not in keys:
                self.problem(value_node, f"{kind} {name} has no prefixes (give prefixes or prefixes_file)")
            for text, file, line, column in listed:
                if text is None:
                    continue
                try:
                    prefix = parse_prefix(text.strip())
                except ValueError as error:
                    self.problems.append(Problem(file, line, column, str(error)))
                    continue
                first = where.get(prefix)
                if first:
                    self.problems.append(Problem(file, line, column, f"{text.strip()} is already in {first}: "
                                                 f"a prefix can belong to one {kind} only"))
                    continue
                where[prefix] = f"{kind} {name} ({file}:{line})"
                prefixes.append(prefix)
                class_ids.append(client_class.id)
        table = numpy.empty(len(prefixes), PREFIX_DTYPE)
        if prefixes:
            table["prefixlen"] = [length for length, _ in prefixes]
            table["addr"] = numpy.frombuffer(b"".join(addr for _, addr in prefixes),
                                             dtype=numpy.uint8).reshape(-1, 16)
        return ClientClasses(found, table, numpy.asarray(class_ids, dtype=numpy.uint32))

    def audience(self, keys) -> dict:
        details = {}
        if "class" in keys:
            name = self.scalar(keys["class"][1], "class")
            if name not in self.class_names:
                known = ", ".join(sorted(self.class_names)) or "none are defined under classes:"
                self.problem(keys["class"][1], f"unknown client class {name!r}; known: {known}")
            details["client_class"] = name
        if "percent" in keys:
            text = self.scalar(keys["percent"][1], "percent") or ""
            try:
                percent = Decimal(text) if PERCENT.match(text) else None
            except InvalidOperation:
                percent = None
            if percent is None or not 0 <= percent <= 100:
                self.problem(keys["percent"][1], f"percent must be 0 to 100 in steps of 0.01, not {text!r}")
            else:
                details["percent"] = percent
        if "ports" in keys:
            details["ports"] = self.ports(keys["ports"][1])
        if "opened_by_client" in keys:
            details["opened_by_client"] = self.boolean(keys["opened_by_client"][1], "opened_by_client")
        if "quic" in keys:
            details["quic"] = self.scalar(keys["quic"][1], "quic")
            if details["quic"] not in ("same", "block"):
                self.problem(keys["quic"][1], "quic must be same (the rule's action) or block (so that "
                                              "clients fall back to TCP)")
        return details

    def ports(self, node) -> tuple[tuple[int, int], ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.problem(node, "ports must be a list of ports or ranges, e.g. [443, 8000-8999]")
            return ()
        ranges = []
        for item in node.value:
            text = self.scalar(item, "a port") or ""
            match = PORT_RANGE.match(text)
            first, last = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
            if not match or not 1 <= first <= last <= 65535:
                self.problem(item, f"not a port or range of ports 1-65535: {text!r}")
                continue
            ranges.append((first, last))
        if len(ranges) > ABI.SLUICE_PORT_RANGES_MAX:
            self.problem(node, f"{len(ranges)} port ranges; at most {ABI.SLUICE_PORT_RANGES_MAX} (merge them)")
        return tuple(ranges)
