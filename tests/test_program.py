"""One compile per process, fresh maps per Datapath (controller/program.py).

A live reload and every Datapath after a process's first load the compiled
program again with maps of their own: they must share nothing but the
instructions, and a closed one must leave nothing behind in the kernel."""

import os

import pytest

from conftest import judge, needs_root
from packets import client_hello
from sluice.datapath import Datapath
from sluice.libbpf import MapInfo, object_info
from sluice.policy import load_policy
from sluice.program import program

pytestmark = [pytest.mark.bpf, needs_root]


def blocking(name: str, *, prefixes: int = 0) -> str:
    classes = ""
    if prefixes:
        listed = ", ".join(f"\"2001:db8:{i:x}::/48\"" for i in range(prefixes))
        classes = f"classes:\n  lab: {{prefixes: [{listed}]}}\n"
    return f"version: 1\n{classes}rules:\n  - {{name: b, action: block, domains: [{name}, www.{name}]}}\n"


def map_ids(datapath) -> set[int]:
    ids = set()
    for name in datapath.program.maps:
        info = MapInfo()
        assert object_info(datapath.map_fd(name), info) == 0
        ids.add(info.id)
    return ids


def test_datapaths_share_the_compile_and_nothing_else(make_datapath):
    first = make_datapath(blocking("one.example"))
    second = make_datapath(blocking("two.example"))
    assert first.program is second.program is program()
    assert map_ids(first).isdisjoint(map_ids(second))
    assert judge(first, client_hello(b"one.example")).verdict == "drop"
    assert judge(first, client_hello(b"two.example")).verdict == "pass"
    assert judge(second, client_hello(b"two.example")).verdict == "drop"
    assert judge(second, client_hello(b"one.example")).verdict == "pass"
    assert first.flow_count() == 2 and second.flow_count() == 2


def test_policy_maps_are_sized_to_their_policy(make_datapath):
    small = make_datapath(blocking("small.example"))
    large = make_datapath(blocking("large.example", prefixes=300))
    for datapath, names, prefixes in ((small, 2, 1), (large, 2, 300)):
        assert datapath.table("domain_rules").max_entries == names
        info = MapInfo()
        assert object_info(datapath.map_fd("client_classes"), info) == 0
        assert info.max_entries == prefixes


def held_map_ids() -> set[int]:
    """The ids of the maps this process holds a descriptor of."""
    ids = set()
    for entry in os.listdir("/proc/self/fdinfo"):
        try:
            text = open(f"/proc/self/fdinfo/{entry}").read()
        except OSError:
            continue
        ids.update(int(line.split()[1]) for line in text.splitlines() if line.startswith("map_id:"))
    return ids


def test_a_closed_datapath_lets_go_of_every_map_and_the_others_keep_working(make_datapath, tmp_path):
    """The kernel frees a map once nothing refers to it, from a work queue
    and after RCU grace periods (long on a loaded machine), so what is checked
    is that this process refers to none of the closed Datapath's maps."""
    kept = make_datapath(blocking("kept.example"))
    (tmp_path / "policy.yaml").write_text(blocking("closed.example"))
    closed = Datapath(load_policy(tmp_path / "policy.yaml"))
    ids = map_ids(closed)
    assert ids <= held_map_ids()
    closed.close()
    assert not ids & held_map_ids()
    assert map_ids(kept) <= held_map_ids()
    assert judge(kept, client_hello(b"kept.example")).verdict == "drop"
