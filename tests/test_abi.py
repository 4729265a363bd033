"""The structs and constants shared by C and Python agree, as the kernel sees them.

bpf/sluice_abi.h is the single source of truth. The controller takes struct
layouts from bcc (ctypes built from the header) and constants from
controller/abi.py (parsed from the header). Here both are checked against
the BTF the kernel holds for the loaded maps, and against the map
definitions the kernel accepted.
"""

import ctypes
import json
import os
import re
import subprocess

import pytest

from sluice.abi import ABI, COUNTER_NAMES, bpf_source_dir, parse_constants
from sluice.datapath import STAGE_FUNCTIONS, STATE_MAPS
from sluice.program import program_source
from sluice.libbpf import MapInfo, object_info

pytestmark = [pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]


@pytest.fixture(scope="module")
def datapath():
    from sluice.datapath import Datapath
    loaded = Datapath(None)
    yield loaded
    loaded.close()


def map_info(table) -> MapInfo:
    info = MapInfo()
    assert object_info(table.map_fd, info) == 0
    return info


def btf_types(btf_id: int) -> dict[int, dict]:
    dump = json.loads(subprocess.check_output(["bpftool", "-j", "btf", "dump", "id", str(btf_id)]))
    return {t["id"]: t for t in dump["types"]}


def resolve(types, type_id):
    """Skip typedefs and qualifiers down to the type that has a layout."""
    t = types[type_id]
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE"):
        t = types[t["type_id"]]
    return t


def assert_same_layout(types, type_id, ctype, path):
    """The BTF type and the ctypes type agree in size and in every member's offset."""
    btf = resolve(types, type_id)
    assert btf.get("size", ctypes.sizeof(ctype)) == ctypes.sizeof(ctype), path
    if btf["kind"] != "STRUCT":
        return
    ctype_fields = [name for name, _ in ctype._fields_]
    assert [m["name"] for m in btf["members"]] == ctype_fields, path
    for member in btf["members"]:
        field = getattr(ctype, member["name"])
        assert member["bits_offset"] == field.offset * 8, f"{path}.{member['name']}"
        member_ctype = dict(ctype._fields_)[member["name"]]
        assert_same_layout(types, member["type_id"], member_ctype, f"{path}.{member['name']}")


# map name -> (key struct, value struct) as sluice_abi.h declares them
SHARED_MAPS = {
    "flows": ("flow_id", "flow_state"),
    "ipv6_flows": ("flow_key", "flow_id"),
    "domain_rules": ("name_key", None),
    "rules": (None, "rule_info"),
    "rule_clocks": (None, "rate_clocks"),
    "client_clocks": ("client_clock_key", "rate_clocks"),
    "rule_stats": (None, "rule_stats"),
    "config": (None, "sluice_config"),
    "event_buffers": (None, "classification_event"),
    "rule_sets": ("rule_set_key", "rule_set"),
    "client_classes": ("client_prefix", None),
    "destinations": ("client_prefix", None),
    "alpn_ids": ("alpn_key", None),
    "quic_datagram_layout": (None, "quic_datagram"),
    "replay_chunk": (None, "replay_chunk"),
    "replay_batch": (None, "replay_batch"),
}


@pytest.mark.parametrize("map_name", SHARED_MAPS)
def test_ctypes_layout_matches_kernel_btf(datapath, map_name):
    table = datapath.table(map_name)
    info = map_info(table)
    assert info.btf_id, "the kernel holds no BTF for this map: nothing to compare against"
    types = btf_types(info.btf_id)
    key_struct, value_struct = SHARED_MAPS[map_name]
    value_ctype = getattr(table, "sLeaf", table.Leaf)     # per-CPU maps: one CPU's value
    if key_struct:
        assert resolve(types, info.btf_key_type_id)["name"] == key_struct
    if value_struct:
        assert resolve(types, info.btf_value_type_id)["name"] == value_struct
    assert info.key_size == ctypes.sizeof(table.Key)
    assert info.value_size == ctypes.sizeof(value_ctype)
    assert_same_layout(types, info.btf_key_type_id, table.Key, f"{map_name}.key")
    assert_same_layout(types, info.btf_value_type_id, value_ctype, f"{map_name}.value")


def test_header_constants_match_the_maps_the_kernel_accepted(datapath):
    assert map_info(datapath.table("flows")).max_entries == ABI.SLUICE_FLOW_MAX
    assert map_info(datapath.table("ipv6_flows")).max_entries == ABI.SLUICE_FLOW_MAX
    assert map_info(datapath.table("rules")).max_entries == ABI.SLUICE_GENERATIONS * ABI.SLUICE_MAX_RULES
    assert map_info(datapath.table("rule_stats")).max_entries == ABI.SLUICE_MAX_RULES
    assert map_info(datapath.table("counters")).max_entries == ABI.SLUICE_CNT_MAX
    assert map_info(datapath.table("stages")).max_entries == ABI.SLUICE_STAGE_MAX
    assert map_info(datapath.table("events")).max_entries == ABI.SLUICE_EVENT_RING_BYTES
    assert len(COUNTER_NAMES) == ABI.SLUICE_CNT_MAX
    assert sorted(STAGE_FUNCTIONS) == list(range(ABI.SLUICE_STAGE_MAX))


def test_event_name_buffer_holds_the_longest_name(datapath):
    event = datapath.table("event_buffers").sLeaf
    assert ctypes.sizeof(dict(event._fields_)["name"]) == ABI.SLUICE_NAME_MAX + 1


def test_constant_parser_reads_defines_and_enums():
    text = """
    #define SLUICE_A 7
    enum e { SLUICE_B = 3, /* three */
             SLUICE_C,     /* four */
             SLUICE_D = 10, };
    """
    assert parse_constants(text) == {"SLUICE_A": 7, "SLUICE_B": 3, "SLUICE_C": 4, "SLUICE_D": 10}


def test_direction_fields_match_the_struct(datapath):
    from sluice.datapath import DIRECTION_FIELDS
    rule_stats = datapath.table("rule_stats").sLeaf
    direction_type = dict(rule_stats._fields_)["dir"]._type_
    assert tuple(name for name, _ in direction_type._fields_) == DIRECTION_FIELDS
    assert dict(rule_stats._fields_)["dir"]._length_ == ABI.SLUICE_DIRS


def test_each_stage_of_the_enum_is_the_program_named_after_it():
    """enum sluice_stage is the stage table: SLUICE_STAGE_TLS is the program
    sluice_stage_tls, so a new stage is a change to the C alone."""
    members = re.search(r"enum sluice_stage \{(.*?)\};", (bpf_source_dir() / "sluice_abi.h").read_text(),
                        re.DOTALL).group(1)
    named = {getattr(ABI, name): f"sluice_stage_{name.removeprefix('SLUICE_STAGE_').lower()}".encode()
             for name in re.findall(r"^\s*(SLUICE_STAGE_\w+)", members, re.MULTILINE) if name != "SLUICE_STAGE_MAX"}
    defined = set(re.findall(rb"^int (sluice_stage_\w+)\(struct ctx_buff \*ctx\)$", program_source().encode(),
                             re.MULTILINE))
    assert len(named) == ABI.SLUICE_STAGE_MAX
    assert STAGE_FUNCTIONS == named
    assert set(named.values()) == defined


def declared_maps(text: str) -> set[str]:
    """The names of the maps a stretch of maps.h declares."""
    names = set()
    for macro, arguments in re.findall(r"^(BPF_\w+)\((.*)\);$", text, re.MULTILINE):
        arguments = [argument.strip() for argument in arguments.split(",")]
        names.add(arguments[3] if macro == "BPF_TABLE" else arguments[0])
    return names


def test_the_pinned_block_of_maps_h_is_what_the_controller_pins():
    text = (bpf_source_dir() / "maps.h").read_text()
    _, state, policy = re.split(r"^/\* --- (?:state \(pinned\)|policy) ", text, flags=re.MULTILINE)
    assert declared_maps(state) == set(STATE_MAPS)
    assert declared_maps(policy) and not declared_maps(policy) & set(STATE_MAPS)


def test_maps_h_declares_every_map_of_the_data_plane():
    """maps.h is where the maps are: no other file of bpf/ declares one."""
    elsewhere = {path.name: declared_maps(path.read_text()) for path in bpf_source_dir().iterdir()
                 if path.name.endswith((".h", ".c")) and path.name != "maps.h"}
    assert {name: maps for name, maps in elsewhere.items() if maps} == {}
