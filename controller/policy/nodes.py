# SPDX-License-Identifier: GPL-2.0-only
"""yaml nodes to values: each reader method records a Problem where the node
stands in its file, and returns None (or a safe default) to let reading go on."""

import re
from pathlib import Path

import yaml

from .input_files import InputFileError, read_text_file
from .model import Problem


class NodeReader:
    """Reads one policy file's nodes; problems accumulate in self.problems."""

    def __init__(self, path: str):
        self.path = path
        self.problems: list[Problem] = []

    def problem(self, node, message: str, file: str | None = None) -> None:
        mark = node.start_mark
        self.problems.append(Problem(file or self.path, mark.line + 1, mark.column + 1, message))

    def scalar(self, node, what: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, f"{what} must be a single value")
            return None
        return node.value

    def integer(self, node, what: str, low: int, high: int) -> int | None:
        value = self.scalar(node, what)
        if value is None:
            return None
        if not re.fullmatch(r"\d+", value):
            self.problem(node, f"{what} must be a whole number, not {value!r}")
            return None
        if not low <= int(value) <= high:
            self.problem(node, f"{what} must be between {low} and {high}, not {value}")
            return None
        return int(value)

    def quantity(self, node, what: str, parse, low: int, high: int, unit_name: str) -> int | None:
        value = self.scalar(node, what)
        if value is None:
            return None
        try:
            amount = parse(value)
        except ValueError as error:
            self.problem(node, f"{what}: {error}")
            return None
        if amount <= 0:
            self.problem(node, f"{what} must be more than zero, not {value!r}")
            return None
        if not low <= amount <= high:
            self.problem(node, f"{what} {value!r} is out of range ({low} to {high} {unit_name})")
            return None
        return amount

    def mapping(self, node, what: str, allowed: tuple[str, ...]) -> dict[str, tuple]:
        """key -> (key node, value node), refusing unknown and repeated keys."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping of keys to values")
            return {}
        result = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in allowed:
                self.problem(key_node, f"unknown key {key!r} in {what}; allowed: {', '.join(allowed)}")
            elif key in result:
                self.problem(key_node, f"{key!r} appears twice in {what}")
            else:
                result[key] = (key_node, value_node)
        return result

    def boolean(self, node, what: str) -> bool:
        value = self.scalar(node, what)
        if value not in ("true", "false"):
            self.problem(node, f"{what} must be true or false")
        return value == "true"

    def listed_file(self, node, key: str) -> list[tuple[str, str, int, int]]:
        """(entry, file, line, column) of each entry of a file of one entry a
        line, relative to the policy; '#' starts a comment."""
        relative = self.scalar(node, key)
        if relative is None:
            return []
        path = Path(self.path).parent / relative
        try:
            lines = read_text_file(path).splitlines()
        except InputFileError as error:
            if error.line is None:
                self.problem(node, f"cannot read {key} {str(path)!r}: {error}")
            else:
                self.problems.append(Problem(str(path), error.line, error.column, f"cannot read {key}: {error}"))
            return []
        listed, file = [], str(path)
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if text:
                listed.append((text, file, number, line.index(text) + 1))
        return listed
