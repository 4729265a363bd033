"""One compile per process, fresh maps per Datapath (controller/program.py),
and a policy changed by generations, without a program load (bpf/policy_maps.h).

Every Datapath after a process's first loads the compiled program again
with maps of their own: they must share nothing but the instructions, and a
closed one must leave nothing behind in the kernel. A live reload loads
nothing: it fills the generation packets are not reading and switches."""

import ctypes
import os

import pytest

from helpers import block_methods_policy, judge, needs_root
from packets import client_hello, tcp_frame
from sluice import xdp_link
from sluice.abi import ABI
from sluice.datapath import SIZED_POLICY_MAPS, Datapath
from sluice.libbpf import MapInfo, object_info
from sluice.policy import load_policy
from sluice.program import program
from sluice.testrun import run_xdp

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


def test_a_prepared_policy_takes_effect_at_the_switch_and_loads_no_program(make_datapath, tmp_path):
    datapath = make_datapath(blocking("first.example"))
    program_id = xdp_link.program_id(datapath.function.fd)
    for name in ("second.example", "third.example"):
        (tmp_path / f"{name}.yaml").write_text(blocking(name))
    prepared = datapath.prepare(load_policy(tmp_path / "second.example.yaml"))
    assert judge(datapath, client_hello(b"first.example")).verdict == "drop"
    assert judge(datapath, client_hello(b"second.example")).verdict == "pass"
    datapath.switch(prepared)
    assert judge(datapath, client_hello(b"first.example")).verdict == "pass"
    assert judge(datapath, client_hello(b"second.example")).verdict == "drop"
    # The third policy refills the first one's generation: nothing of the first is left in it.
    datapath.switch(datapath.prepare(load_policy(tmp_path / "third.example.yaml")))
    assert [judge(datapath, client_hello(name.encode())).verdict
            for name in ("first.example", "second.example", "third.example")] == ["pass", "pass", "drop"]
    assert xdp_link.program_id(datapath.function.fd) == program_id
    assert datapath.table("domain_rules").max_entries == 2
    # The second policy's maps, kept until now for packets still between stages, go.
    held = held_map_ids()
    datapath.release_previous()
    assert len(held - held_map_ids()) == len(SIZED_POLICY_MAPS)
    assert judge(datapath, client_hello(b"third.example")).verdict == "drop"
    datapath.switch(datapath.prepare(load_policy(tmp_path / "second.example.yaml")))
    assert judge(datapath, client_hello(b"second.example")).verdict == "drop"


def set_packet_generation(datapath, generation: int) -> None:
    """What the entry program leaves for the stages it calls, on every CPU."""
    slots = datapath.table("packet_generations")
    slots[ctypes.c_int(0)] = slots.Leaf(*[generation] * len(slots.Leaf()))


def test_a_stage_judges_under_the_generation_its_packet_entered(make_datapath, tmp_path):
    """The live generation may flip between a packet's entry program and a
    stage it is tail-called into: the stage still reads the policy the
    packet entered under. A blocked flow's packet is answered by the reply
    stage: under the first policy with a RST (XDP_TX), under the second,
    where its rule's method is drop, it is dropped."""
    policy = block_methods_policy("domains: [reset.example]", "domains: [page.example]", "domains: [drop.example]")
    datapath = make_datapath(policy)
    hello = client_hello(b"reset.example")
    opened = judge(datapath, hello)
    assert opened.verdict == "tx"
    entered = datapath.generation
    (tmp_path / "policy.yaml").write_text(policy.replace("method: reset", "method: drop"))
    datapath.switch(datapath.prepare(load_policy(tmp_path / "policy.yaml")))
    frame = tcp_frame(hello, sport=opened.port)
    reply_stage = datapath.stage_fd(ABI.SLUICE_STAGE_REPLY)
    set_packet_generation(datapath, entered)
    assert run_xdp(reply_stage, frame).verdict == "tx"
    set_packet_generation(datapath, datapath.generation)
    assert run_xdp(reply_stage, frame).verdict == "drop"
    # A packet entering now enters under the new policy, whatever the slot held.
    set_packet_generation(datapath, entered)
    assert run_xdp(datapath.function.fd, frame).verdict == "drop"
