# SPDX-License-Identifier: GPL-2.0-only
"""Constants shared with the data plane, read from bpf/sluice_abi.h.

The header is the single source of truth. Structs reach Python as the ctypes
bcc builds from the same header (``table.Key`` and ``table.Leaf``); the
numbers below are parsed from it, so the controller never restates a value
the C side defines. tests/test_abi.py checks both against the kernel's BTF.
"""

import re
from importlib.resources import files
from types import SimpleNamespace

ABI_HEADER = "sluice_abi.h"

_DEFINE = re.compile(r"^\s*#define\s+(SLUICE_\w+)\s+(\d+)\b", re.MULTILINE)
_ENUM = re.compile(r"enum\s+(\w+)\s*\{(.*?)\};", re.DOTALL)
_MEMBER = re.compile(r"^\s*(SLUICE_\w+)\s*(?:=\s*(\d+))?\s*,", re.MULTILINE)


def bpf_source_dir():
    """Where the C sources are, in a checkout or an installed copy alike."""
    return files("sluice.bpf")


def parse_constants(text: str) -> dict[str, int]:
    """Every ``#define SLUICE_X n`` and enum member in a header's text."""
    constants = {name: int(value) for name, value in _DEFINE.findall(text)}
    for _enum_name, body in _ENUM.findall(text):
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.DOTALL)
        next_value = 0
        for name, value in _MEMBER.findall(body):
            next_value = int(value) if value else next_value
            constants[name] = next_value
            next_value += 1
    return constants


def _load() -> SimpleNamespace:
    text = bpf_source_dir().joinpath(ABI_HEADER).read_text()
    return SimpleNamespace(**parse_constants(text))


ABI = _load()

PROTO_NAMES = {ABI.SLUICE_PROTO_UNKNOWN: None, ABI.SLUICE_PROTO_TLS: "tls",
               ABI.SLUICE_PROTO_HTTP: "http", ABI.SLUICE_PROTO_QUIC: "quic"}
# enum sluice_counter, index -> lower-case name without the prefix.
COUNTER_NAMES = {value: name.removeprefix("SLUICE_CNT_").lower()
                 for name, value in vars(ABI).items()
                 if name.startswith("SLUICE_CNT_") and name != "SLUICE_CNT_MAX"}
# enum sluice_tunnel, kind -> lower-case name (inspection.tunnels' names)...
TUNNEL_KINDS = {value: name.removeprefix("SLUICE_TUNNEL_").lower()
                for name, value in vars(ABI).items()
                if name.startswith("SLUICE_TUNNEL_") and name not in ("SLUICE_TUNNEL_NONE", "SLUICE_TUNNEL_KINDS")}
# ...and enum sluice_tunnel_outcome (together, sluice_tunnelled_packets_total's labels).
TUNNEL_OUTCOMES = {value: name.removeprefix("SLUICE_TUNNELLED_").lower()
                   for name, value in vars(ABI).items()
                   if name.startswith("SLUICE_TUNNELLED_") and name != "SLUICE_TUNNELLED_OUTCOMES"}
