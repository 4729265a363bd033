# SPDX-License-Identifier: GPL-2.0-only
"""Load the data plane, fill its maps from a policy, attach it.

One Datapath is one loaded copy of bpf/sluice_xdp.c with its own maps (the
program is compiled once per process: program.py). The
same program fd can be attached to several interfaces; they then share one
flow table, which is what a router needs: a flow's two directions arrive on
different interfaces.
"""

import ctypes
import logging
import os
import struct
import threading
from contextlib import contextmanager
from typing import NamedTuple

import bcc
import numpy

from . import block_methods, hooks, precedence, schedule, tc, xdp_link
from .abi import ABI, COUNTER_NAMES, TUNNEL_KINDS, TUNNEL_OUTCOMES
from .clocks import coarse_tick_ns, in_jiffies, limit_times, police_clock
from .flow_table import FlowTable
from .map_batches import count_entries
from .names import name_hashes_many
from .program import LoadError, Rings, program, tc_ingress_program
from .quic import VERSIONS as QUIC_VERSIONS

log = logging.getLogger(__name__)

PROGRAM_FUNCTION = b"sluice_xdp"
REPLAY_DRIVER_FUNCTION = b"sluice_replay_driver"     # bpf/replay_driver.c
TC_INGRESS_FUNCTION = b"sluice_tc_ingress"      # the classifier at tc ingress (program.tc_ingress_program())
TC_EGRESS_FUNCTION = b"sluice_tc_egress"
TC_RESET_FUNCTION = b"sluice_tc_reset"
# The maps whose contents outlive a policy (bpf/maps.h): a reloaded policy,
# or a controller restarted after a crash, takes them over from their pins.
STATE_MAPS = ("flows", "ipv6_flows", "ipv6_flow_numbers", "rule_stats", "counters", "tunnel_counters", "rule_clocks",
              "client_clocks", "streams")
# The policy maps sized to their policy (bpf/maps.h): each generation's is
# an inner map of the outer map named after it with BY_GENERATION.
SIZED_POLICY_MAPS = ("domain_rules", "rule_sets", "client_classes", "destinations", "alpn_ids", "block_pages")
BY_GENERATION = "_by_generation"
# enum sluice_stage index -> the program that implements it, named after the
# member (SLUICE_STAGE_TLS: sluice_stage_tls), so a new stage is a change to
# the C alone (tests/test_abi.py holds the names to the functions defined).
STAGE_FUNCTIONS = {index: name.lower().encode() for name, index in vars(ABI).items()
                   if name.startswith("SLUICE_STAGE_") and name != "SLUICE_STAGE_MAX"}

# struct direction_stats, as summed by rule_stats().
DIRECTION_FIELDS = ("packets", "bytes", "dropped_packets", "dropped_bytes", "delayed_packets")
# ...and its fields for the rule as a whole.
RULE_FIELDS = ("flows", "resets", "pages")


class LoadedProgram(NamedTuple):
    name: bytes
    fd: int


class PreparedPolicy(NamedTuple):
    """A policy filled into the generation packets are not reading: Datapath.switch() makes it live."""
    generation: int
    policy: object
    retired_rules: list
    alpn_bits: dict
    inner_maps: dict        # map name -> fd, the generation's maps sized to its policy


class Datapath:
    """A loaded data plane, its policy changed live by generations.

    The programs are loaded once, with maps of their own. A policy fills
    the generation of the policy maps that packets are not reading
    (prepare()), then policy_generation flips to it (switch()), so a packet
    is judged under the old policy or the new, never a mix
    (bpf/policy_maps.h). A reload or a schedule step loads no program."""

    def __init__(self, policy=None, *, events: bool = False, pin_dir: str | None = None,
                 retired_rules=(), at=None, xdp: bool = True, ring_wakeups: bool = True):
        """pin_dir: pin the state maps (flows, counters, clocks) there, or
        reuse the ones already pinned there by an earlier Datapath.
        retired_rules: rules of earlier policies that flows may still be
        classified under; their actions stay defined, though no name leads
        to them any more.
        at: the moment whose schedule steps apply (default: now).
        xdp: load the XDP program; False for a data plane only at tc ingress,
        which then compiles the tc build alone (a compile is most of a start).
        ring_wakeups: False when whoever reads the rings looks at them after
        every frame it runs (sluice replay): the program then sends its
        records without waking a reader (bpf/common.h ring_flags())."""
        self.events = events
        self.ring_wakeups = ring_wakeups
        self.policy = None
        self.retired_rules: list = []
        self.alpn_bits: dict[str, int] = {}
        self.generation = 0             # the one packets read; its maps are empty until a policy fills one
        self.shape_as_throttle = False  # police_shape_rules() was called: every policy's shape rules throttle
        # The key of QUIC datagram signatures (bpf/quic.h): a client that knew
        # it could make its real hello sign as its fake does.
        self.datagram_key = struct.unpack("<QQ", os.urandom(16))
        self.program = program() if xdp else tc_ingress_program()
        self._rings = Rings(self.program.module)
        self._tables: dict[str, object] = {}
        self._flow_table = None
        self._maps: dict[str, int] = {}
        self._inner_maps: dict[int, dict[str, int]] = {generation: {} for generation in range(ABI.SLUICE_GENERATIONS)}
        self._programs: dict[bytes, int] = {}
        self._in_use = threading.Lock()  # a scrape's reads against unload()
        self.unloaded = False
        self.function: LoadedProgram | None = None     # the XDP program
        self.tc_ingress: TcIngressSet | None = None
        self.links: list = []           # xdp_link.Link, tc.TcIngressLink
        try:
            self._make_maps(pin_dir)
            self._fill_quic_versions()
            self.switch(self.prepare(policy, retired_rules, at))
            if xdp:
                self.function = LoadedProgram(PROGRAM_FUNCTION, self._load(PROGRAM_FUNCTION, bcc.BPF.XDP))
                load_stages(self.table("stages"), lambda name: self._load(name, bcc.BPF.XDP))
        except BaseException:
            self.unload()
            raise

    # --- maps -------------------------------------------------------------
    def _make_maps(self, pin_dir: str | None) -> None:
        """This Datapath's own maps; with pin_dir, the state maps are the ones
        pinned there (or ours, pinned). The maps sized to their policy come
        with each policy (prepare()); their outer maps are made here, from a
        one-entry template of the inner maps they take."""
        for name in self.program.maps:
            if pin_dir and name in STATE_MAPS:
                self._maps[name] = self._pinned_state(pin_dir, name)
            elif name.endswith(BY_GENERATION):
                template = self.program.make_map(name.removesuffix(BY_GENERATION), 1)
                try:
                    self._maps[name] = self.program.make_map(name, inner_map_fd=template)
                finally:
                    os.close(template)
            elif name not in SIZED_POLICY_MAPS:
                self._maps[name] = self.program.make_map(name)

    def _fill_quic_versions(self) -> None:
        """The QUIC versions the controller reads (quic.VERSIONS), for the data
        plane to judge a QUIC flow at its first Initial (bpf/quic.h
        quic_judged_at_opening()): keys in network byte order."""
        versions = self.table("quic_versions")
        for version in QUIC_VERSIONS:
            versions[versions.Key(struct.unpack("=I", version.to_bytes(4, "big"))[0])] = versions.Leaf(1)

    def _pinned_state(self, pin_dir: str, name: str) -> int:
        """The state map pinned in pin_dir, or a new one pinned there.

        (bcc's own BPF_TABLE_PINNED reopens a pin with BPF_MAP_GET_FD_BY_ID,
        which takes CAP_SYS_ADMIN, a capability the systemd unit does not grant.)"""
        path = os.path.join(pin_dir, name)
        if not os.path.exists(path):
            fd = self.program.make_map(name)
            xdp_link.pin(fd, path)
            return fd
        pinned = xdp_link.get_pinned(path)
        spec = self.program.maps[name].info
        if xdp_link.map_layout(pinned) != (spec.type, spec.key_size, spec.value_size, spec.max_entries):
            os.close(pinned)
            raise RuntimeError(f"the map pinned at {path} has another layout than this sluice's "
                               f"(left by another version?): `sluice stop` discards the pinned state")
        return pinned

    def _load(self, function: bytes, prog_type: int) -> int:
        """Load one of the program's functions, bound to this Datapath's maps."""
        if function not in self._programs:
            self._programs[function] = self.program.load(function, prog_type, self._maps)
        return self._programs[function]

    def tc_ingress_set(self) -> "TcIngressSet":
        """The classifier for tc ingress (--hook tc) and its stages, bound to
        this Datapath's maps; compiled and loaded on first use."""
        if self.tc_ingress is None:
            self.tc_ingress = TcIngressSet(self._maps, self._rings)
        return self.tc_ingress

    def stage_fd(self, stage: int) -> int:
        """The loaded program of an inspection stage (enum sluice_stage)."""
        return self._programs[STAGE_FUNCTIONS[stage]]

    def replay_driver(self) -> int:
        """The program that runs a batch of frames through the XDP program in
        one test run (bpf/replay_driver.c), loaded on first use: only
        `sluice replay` runs it."""
        if REPLAY_DRIVER_FUNCTION not in self._programs:
            self.table("replay_target")[ctypes.c_int(0)] = ctypes.c_int(self.function.fd)
            self._load(REPLAY_DRIVER_FUNCTION, bcc.BPF.XDP)
        return self._programs[REPLAY_DRIVER_FUNCTION]

    def poll_rings(self, timeout_ms: int) -> None:
        """Hand what waits on the open ring buffers (or arrives within timeout_ms) to their callbacks."""
        self._rings.poll(timeout_ms)

    def consume_rings(self) -> None:
        """Hand what waits on the open ring buffers to their callbacks, without waiting."""
        self._rings.consume()

    def map_fd(self, name: str) -> int:
        return self._maps[name]

    def table(self, name: str):
        """bcc's table object for this Datapath's map `name`, made once: a ring
        buffer's callback lives in it, so a fresh one each time would let it be freed."""
        if name not in self._tables:
            self._tables[name] = self.program.table(self._rings, name, self._maps[name])
        return self._tables[name]

    def prepare(self, policy, retired_rules=(), at=None) -> PreparedPolicy:
        """Fill policy, as its schedule stands at `at` (default: now), into
        the generation packets are not reading; nothing they see changes
        until switch(). On failure the running policy is untouched."""
        generation = 1 - self.generation
        policy = policy.at(at or schedule.now()) if policy else None
        retired_rules = list(retired_rules)
        bits = alpn_bits(policy.rules) if policy else {}
        paged = [rule for rule in [*retired_rules, *(policy.rules if policy else [])] if rule.page is not None]
        sets = policy.rule_sets() if policy else None
        sizes = {"domain_rules": len(sets.names) if sets else 0,
                 "rule_sets": len(sets.sets) if sets else 0,
                 "client_classes": len(policy.classes) if policy else 0,
                 "destinations": len(policy.destinations) if policy else 0,
                 "alpn_ids": None,
                 "block_pages": len(paged)}
        inner_maps: dict[str, int] = {}
        try:
            for name, size in sizes.items():
                inner_maps[name] = self.program.make_map(name, None if size is None else max(1, size))
            tables = {name: self.program.table(self._rings, name, fd) for name, fd in inner_maps.items()}
            if policy is not None:
                self._fill_policy(tables, policy, sets, bits)
            pages = tables["block_pages"]
            for rule in paged:
                pages[ctypes.c_uint32(rule.id)] = block_methods.fill_page(pages.Leaf(), rule.page)
            self._fill_rules(generation, [*retired_rules, *(policy.rules if policy else [])], bits,
                             policy.destinations if policy else None)
            self._write_config(generation, policy)
            for name, fd in inner_maps.items():
                self._set_inner_map(name, generation, fd)
        except BaseException:
            for fd in inner_maps.values():
                os.close(fd)
            raise
        return PreparedPolicy(generation, policy, retired_rules, bits, inner_maps)

    def switch(self, prepared: PreparedPolicy) -> None:
        """Make a prepared policy the one packets are judged under: one write
        of policy_generation. The maps of the policy before it stay in their
        generation until the next prepare() replaces them."""
        assert prepared.generation == 1 - self.generation, "prepared for another generation"
        key, value = ctypes.c_uint32(0), ctypes.c_uint32(prepared.generation)
        if bcc.lib.bpf_update_elem(self._maps["policy_generation"], ctypes.byref(key), ctypes.byref(value), 0) < 0:
            raise LoadError(f"switching to policy generation {prepared.generation}: "
                            f"{os.strerror(ctypes.get_errno())}")
        for fd in self._inner_maps[prepared.generation].values():
            os.close(fd)
        self._inner_maps[prepared.generation] = dict(prepared.inner_maps)
        self.generation, self.policy = prepared.generation, prepared.policy
        self.retired_rules, self.alpn_bits = prepared.retired_rules, prepared.alpn_bits
        for name, fd in prepared.inner_maps.items():
            self._maps[name] = fd
            self._tables.pop(name, None)

    def release_previous(self) -> None:
        """Let the kernel free the maps of the policy before the running one
        (as much memory again as the running policy's, for a large one).
        Not at the switch itself: a packet that entered under the previous
        generation may be between its stages. Call it a moment later."""
        previous = 1 - self.generation
        key = ctypes.c_uint32(previous)
        for name in self._inner_maps[previous]:
            if bcc.lib.bpf_delete_elem(self._maps[name + BY_GENERATION], ctypes.byref(key)) < 0:
                raise LoadError(f"taking map {name} out of generation {previous}: {os.strerror(ctypes.get_errno())}")
        for fd in self._inner_maps[previous].values():
            os.close(fd)
        self._inner_maps[previous] = {}

    def discard(self, prepared: PreparedPolicy) -> None:
        """Let go of a prepared policy that will not be switched to."""
        for fd in prepared.inner_maps.values():
            os.close(fd)

    def _set_inner_map(self, name: str, generation: int, fd: int) -> None:
        key, value = ctypes.c_uint32(generation), ctypes.c_uint32(fd)
        if bcc.lib.bpf_update_elem(self._maps[name + BY_GENERATION], ctypes.byref(key), ctypes.byref(value), 0) < 0:
            raise LoadError(f"putting map {name} in generation {generation}: {os.strerror(ctypes.get_errno())}")

    def _fill_policy(self, tables: dict, policy, sets, bits: dict[str, int]) -> None:
        """The maps sized to the policy: names, rule sets, prefixes, ALPN ids."""
        alpn_ids = tables["alpn_ids"]
        for protocol_id, bit in bits.items():
            key = alpn_ids.Key()
            key.len = len(protocol_id)
            key.id[:len(protocol_id)] = list(protocol_id.encode())
            alpn_ids[key] = ctypes.c_uint32(bit)
        self._fill_domain_rules(tables["domain_rules"], sets.names, sets.kinds, sets.set_ids)
        rule_sets = tables["rule_sets"]
        for (set_id, class_id), members in sets.sets.items():
            value = rule_sets.Leaf()
            for index, rule in enumerate(members):
                value.rule_ids[index] = rule.id
            rule_sets[rule_sets.Key(set_id, class_id)] = value
        self._fill_prefixes(tables["client_classes"], policy.classes)
        self._fill_prefixes(tables["destinations"], policy.destinations)

    def _fill_rules(self, generation: int, rules_in_force, bits: dict[str, int], destinations) -> None:
        """generation's half of the rules array, every entry: one a rule
        leaves empty must not keep what a policy two reloads ago wrote there."""
        table = self.table("rules")
        infos = (table.Leaf * ABI.SLUICE_MAX_RULES)()
        for rule in rules_in_force:
            infos[rule.id] = rule_info(table.Leaf, rule, bits, destinations, self.shape_as_throttle)
        first = generation * ABI.SLUICE_MAX_RULES
        keys = (table.Key * ABI.SLUICE_MAX_RULES)(*range(first, first + ABI.SLUICE_MAX_RULES))
        table.items_update_batch(keys, infos)

    def _fill_prefixes(self, table, classes) -> None:
        """An LPM trie (client classes, destinations), one update per prefix: tries take no batches."""
        keys = (table.Key * len(classes)).from_buffer_copy(classes.prefixes.tobytes())
        for key, class_id in zip(keys, classes.class_ids.tolist()):
            table[key] = ctypes.c_uint32(class_id)

    def police_shape_rules(self) -> None:
        """Turn every shape rule into a throttle at the same rates, in the
        running policy and every one after it: the `fallback: throttle` of
        kernels without the fq qdisc."""
        self.shape_as_throttle = True
        rules = self.table("rules")
        first = self.generation * ABI.SLUICE_MAX_RULES
        for rule in self.policy.rules:
            if rule.action == "shape":
                rules[ctypes.c_uint32(first + rule.id)] = rule_info(rules.Leaf, rule, self.alpn_bits,
                                                                    self.policy.destinations, shape_as_throttle=True)

    def tc_reset_fd(self) -> int:
        """The tc ingress program that resets servers (block methods reset, page)."""
        return self._load(TC_RESET_FUNCTION, bcc.BPF.SCHED_CLS)

    def tc_egress_fd(self) -> int:
        """The tc egress program (shape, delay), loaded on first use."""
        return self._load(TC_EGRESS_FUNCTION, bcc.BPF.SCHED_CLS)

    @staticmethod
    def _fill_domain_rules(table, domain_names, kinds, set_ids) -> None:
        if not domain_names:
            return
        fnv, mix = name_hashes_many(domain_names)
        key_type = numpy.dtype([("fnv", "<u8"), ("mix", "<u8"), ("len", "<u4"), ("kind", "<u4")])
        assert key_type.itemsize == ctypes.sizeof(table.Key), "name_key layout changed"
        keys = numpy.empty(len(domain_names), dtype=key_type)
        keys["fnv"], keys["mix"] = fnv, mix
        keys["len"] = [len(n) for n in domain_names]
        keys["kind"] = kinds
        values = numpy.asarray(set_ids, dtype="<u4")
        count = len(domain_names)
        table.items_update_batch((table.Key * count).from_buffer_copy(keys.tobytes()),
                                 (table.Leaf * count).from_buffer_copy(values.tobytes()))

    def _write_config(self, generation: int, policy) -> None:
        """generation's sluice_config. What the controller set on the data
        plane rather than the policy (server resets on tc ingress, a test's
        frozen clock) carries over from the running one."""
        config = self.table("config")
        running = config[ctypes.c_uint32(self.generation)]
        value = config.Leaf()
        value.generation = generation
        value.clock_ns, value.clock_tick_ns = running.clock_ns, running.clock_tick_ns
        if policy is None:
            from .policy import DEFAULT_FLOW_IDLE_NS, DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_PACKETS
            flow_idle_ns, value.window_packets = DEFAULT_FLOW_IDLE_NS, DEFAULT_WINDOW_PACKETS
            value.window_bytes = DEFAULT_WINDOW_BYTES
        else:
            flow_idle_ns, value.window_packets = policy.flow_idle_ns, policy.window_packets
            value.window_bytes = policy.window_bytes
        value.jiffy_ns = coarse_tick_ns()
        value.datagram_key[0], value.datagram_key[1] = self.datagram_key
        value.flow_idle_jiffies = in_jiffies(flow_idle_ns, value.jiffy_ns)
        value.ttl_margin = policy.ttl_margin if policy is not None else ABI.SLUICE_TTL_MARGIN_DEFAULT
        on_evasion = policy.on_evasion if policy is not None else "judge"
        value.flags = ((running.flags & ABI.SLUICE_CFG_SERVER_RESETS) |
                       (ABI.SLUICE_CFG_EVENTS if self.events else 0) |
                       (0 if self.ring_wakeups else ABI.SLUICE_CFG_RINGS_POLLED) |
                       (ABI.SLUICE_CFG_NO_REASSEMBLY if policy is not None and not policy.reassemble else 0) |
                       (ABI.SLUICE_CFG_DROP_FRAGMENTS if policy is not None and policy.fragments == "drop" else 0) |
                       (ABI.SLUICE_CFG_UNNAMED_RULES if policy is not None and
                        any(precedence.is_unnamed(rule) for rule in policy.rules) else 0) |
                       (ABI.SLUICE_CFG_OPENING_RULES if policy is not None and
                        any(precedence.applies_to_any_flow(rule) for rule in policy.rules) else 0) |
                       (ABI.SLUICE_CFG_QUIC_AT_OPENING if policy is not None and
                        precedence.judges_quic_at_opening(policy.rules) else 0) |
                       (ABI.SLUICE_CFG_WHOLE_HELLO if policy is not None and policy.reassemble and
                        any(rule.ech or rule.alpn for rule in policy.rules) else 0) |
                       (ABI.SLUICE_CFG_PROXY_PROTOCOL if policy is not None and policy.proxy_protocol else 0) |
                       (ABI.SLUICE_CFG_BLOCK_EVASION if on_evasion == "block" else 0) |
                       (ABI.SLUICE_CFG_NO_RECEIVER_MODEL if on_evasion == "ignore" else 0))
        if policy is not None:
            value.rollout_key[0], value.rollout_key[1] = struct.unpack("<QQ", policy.rollout_key)
            value.closed_tunnels = sum(1 << kind for kind, name in TUNNEL_KINDS.items() if name not in policy.tunnels)
        config[ctypes.c_uint32(generation)] = value

    def config(self):
        """The running policy's sluice_config."""
        return self.table("config")[ctypes.c_uint32(self.generation)]

    def set_config(self, **fields) -> None:
        """Change fields of the running sluice_config (tests shorten timeouts)."""
        value = self.config()
        for name, field_value in fields.items():
            setattr(value, name, field_value)
        self.table("config")[ctypes.c_uint32(self.generation)] = value

    def counters(self) -> dict[str, int]:
        """Global counters summed over CPUs, by name (see enum sluice_counter)."""
        table = self.table("counters")
        return {name: sum(table[ctypes.c_uint32(index)]) for index, name in COUNTER_NAMES.items()}

    def tunnel_counters(self) -> dict[tuple[str, str], int]:
        """Encapsulated packets summed over CPUs, by (kind, outcome) (see enum sluice_tunnel)."""
        table = self.table("tunnel_counters")
        return {(kind, outcome): sum(table[ctypes.c_uint32(kind_id * ABI.SLUICE_TUNNELLED_OUTCOMES + outcome_id)])
                for kind_id, kind in TUNNEL_KINDS.items() for outcome_id, outcome in TUNNEL_OUTCOMES.items()}

    def rule_stats(self) -> dict[int, dict]:
        """Per rule id (0: no rule), struct rule_stats summed over CPUs.

        Each entry has the RULE_FIELDS, the direction_stats fields summed over both
        directions, and "up" and "down" with each direction's own fields.
        """
        table = self.table("rule_stats")
        ids = [0] + ([rule.id for rule in self.policy.rules] if self.policy else [])
        result = {}
        for rule_id in ids:
            per_cpu = table[ctypes.c_uint32(rule_id)]
            stats = {field: sum(getattr(cpu, field) for cpu in per_cpu) for field in RULE_FIELDS}
            for direction, label in ((ABI.SLUICE_DIR_UP, "up"), (ABI.SLUICE_DIR_DOWN, "down")):
                stats[label] = {f: sum(getattr(cpu.dir[direction], f) for cpu in per_cpu)
                                for f in DIRECTION_FIELDS}
            for f in DIRECTION_FIELDS:
                stats[f] = stats["up"][f] + stats["down"][f]
            result[rule_id] = stats
        return result

    def flow_table(self) -> FlowTable:
        """The flows table by flow_key (controller/flow_table.py): how every
        reader of the flows finds them."""
        if self._flow_table is None:
            self._flow_table = FlowTable(self)
        return self._flow_table

    def flow_count(self) -> int:
        return count_entries(self.table("flows"))

    def fragment_count(self) -> int:
        """Datagrams whose IP fragments are being gathered (bpf/ip_frag.h)."""
        return count_entries(self.table("frags"))

    # --- attach -----------------------------------------------------------
    def attach(self, ifname: str, netns: str | None = None, hook: "str | hooks.HookChoice" = "native",
               pin_path: str | None = None) -> str:
        """Attach to ifname at hook (controller/hooks.py: auto, native or
        generic XDP, or tc ingress; or what hooks.choose() chose); returns
        the mode the kernel reports. `sluice run` passes its --hook, auto
        unless told otherwise.

        An interface that already has an XDP program is refused at an XDP
        hook rather than silently taken over, unless it is the pinned link
        (pin_path) of an earlier sluice run; at tc ingress it is left to run
        first. A pinned link of the other hook is unpinned.
        """
        choice = hook if isinstance(hook, hooks.HookChoice) else hooks.choose(ifname, netns, hook)
        if choice.hook == "tc":
            link = tc.attach_classifier(self.tc_ingress_set().function.fd, ifname, netns, choice.reason, pin_path)
        elif self.function is None:
            raise xdp_link.AttachError(f"cannot attach {ifname} at {choice.hook} XDP: this data plane was "
                                       f"loaded for tc ingress only")
        else:
            link = xdp_link.attach(self.function.fd, ifname, netns, choice, pin_path)
        self.links.append(link)
        return link.mode

    def detach_all(self) -> None:
        """Detach from every interface this Datapath attached to."""
        while self.links:
            link = self.links.pop()
            link.detach()
            log.info("detached from %s", link.ifname)

    def release(self) -> None:
        """Let go of the interfaces but leave pinned links in place (fail-static)."""
        while self.links:
            self.links.pop().release()

    @contextmanager
    def in_use(self):
        """Holds off unload() while another thread (a scrape) reads the maps;
        yields False if this Datapath was unloaded first (a reload swapped it
        out, or the controller stopped, under the scrape)."""
        with self._in_use:
            yield not self.unloaded

    def unload(self) -> None:
        """Close this Datapath's programs, maps and rings, leaving its links as
        they are: what the kernel still uses (attached or pinned) stays."""
        with self._in_use:
            if self.unloaded:
                return
            self.unloaded = True
            self._rings.close()
            if self.tc_ingress is not None:
                self.tc_ingress.unload()
                self.tc_ingress = None
            inner = {fd for maps in self._inner_maps.values() for fd in maps.values()}
            for fd in {*self._programs.values(), *self._maps.values(), *inner}:
                os.close(fd)
            self._programs, self._maps, self._tables, self._flow_table = {}, {}, {}, None
            self._inner_maps = {generation: {} for generation in self._inner_maps}

    def close(self) -> None:
        self.detach_all()
        self.unload()


def load_stages(stages, load) -> None:
    """Load each stage with load(name) -> fd into the program array stages."""
    for index, name in STAGE_FUNCTIONS.items():
        stages[ctypes.c_int(index)] = ctypes.c_int(load(name))


class TcIngressSet:
    """The classifier compiled for tc ingress (program.tc_ingress_program())
    and its stages, bound to a Datapath's maps: the same flows, rules and
    counters as its XDP program. Only the program array is its own, since a
    tail call stays within one program type."""

    def __init__(self, maps: dict[str, int], rings: Rings):
        self.program = tc_ingress_program()
        self.stages_fd = self.program.make_map("stages")
        self._maps = {**maps, "stages": self.stages_fd}
        self._fds: list[int] = []
        try:
            self.function = LoadedProgram(TC_INGRESS_FUNCTION, self._load(TC_INGRESS_FUNCTION))
            self.stages = self.program.table(rings, "stages", self.stages_fd)
            load_stages(self.stages, self._load)
        except BaseException:
            self.unload()
            raise

    def _load(self, function: bytes) -> int:
        fd = self.program.load(function, bcc.BPF.SCHED_CLS, self._maps)
        self._fds.append(fd)
        return fd

    def unload(self) -> None:
        for fd in [*self._fds, self.stages_fd]:
            os.close(fd)
        self._fds = []


def settle_flow(flow, rule, action: str | None = None) -> None:
    """Write rule's verdict into a flow table entry from user space (QUIC
    flows, reclassify), as verdict_classify() in bpf/verdict.h does in the kernel:
    a rule in monitor mode never acts, a rule with a trigger holds its action
    back until the data plane has counted to it. action: instead of the rule's."""
    from .policy import ACTIONS
    flow.rule_id = rule.id if rule else 0
    flow.action = (ABI.SLUICE_ACTION_NONE if rule is None or rule.monitor or rule.trigger
                   else ACTIONS[action or rule.action])
    flow.trigger_pending = int(bool(rule and rule.trigger))
    flow.trigger_count = 0
    flow.state = ABI.SLUICE_FLOW_CLASSIFIED


def alpn_bits(rules) -> dict[str, int]:
    """ALPN protocol id -> its bit in rule_info.alpn_ids, for every id the rules name."""
    named = sorted({protocol_id for rule in rules for protocol_id in rule.alpn})
    return {protocol_id: 1 << index for index, protocol_id in enumerate(named)}


PROTOCOLS = {"tls": ABI.SLUICE_PROTO_TLS, "http": ABI.SLUICE_PROTO_HTTP, "quic": ABI.SLUICE_PROTO_QUIC}
ECH_CONDITIONS = {None: ABI.SLUICE_ECH_ANY, "present": ABI.SLUICE_ECH_PRESENT, "absent": ABI.SLUICE_ECH_ABSENT}
TRIGGER_UNITS = {"bytes": ABI.SLUICE_TRIGGER_BYTES, "packets": ABI.SLUICE_TRIGGER_PACKETS}
DIRECTIONS = {"up": ABI.SLUICE_DIR_UP, "down": ABI.SLUICE_DIR_DOWN}


def rule_info(leaf_type, rule, alpn_ids: dict[str, int], destinations, shape_as_throttle: bool = False):
    """struct rule_info for one policy rule; alpn_ids: see alpn_bits()."""
    from .policy import ACTIONS, BLOCK_METHODS, SCOPES
    from .rollout import threshold
    info = leaf_type()
    action = "throttle" if rule.action == "shape" and shape_as_throttle else rule.action
    info.action = ACTIONS[action]
    info.flags = ((ABI.SLUICE_RULE_MONITOR if rule.monitor else 0) |
                  (ABI.SLUICE_RULE_INACTIVE if rule.inactive else 0) |
                  (ABI.SLUICE_RULE_CLIENT_OPENED if rule.opened_by_client else 0))
    info.scope = SCOPES[rule.scope]
    info.port_ranges = len(rule.ports)
    for index, (first, last) in enumerate(rule.ports):
        info.ports[index].first, info.ports[index].last = first, last
    info.rollout_threshold = threshold(rule.percent)
    tick_ns = coarse_tick_ns() if action == "throttle" else 0
    for direction, index in (("up", ABI.SLUICE_DIR_UP), ("down", ABI.SLUICE_DIR_DOWN)):
        limit = rule.limits.get(direction)
        if limit:
            info.limit[index].ps_per_byte, info.limit[index].burst_ns = limit_times(limit)
            if action == "throttle":
                info.limit[index].clock = police_clock(info.limit[index].burst_ns, tick_ns)
    info.delay_ns = rule.latency_ns
    info.jitter_ns = rule.jitter_ns
    info.horizon_ns = rule.horizon_ns
    info.block_method = BLOCK_METHODS[rule.block_method]
    info.protocols = sum(1 << PROTOCOLS[protocol] for protocol in rule.protocols)
    info.ech = ECH_CONDITIONS[rule.ech]
    # A retired rule is in no rule set: its conditions are never checked
    # again, and may name ids and sets this policy no longer has.
    info.alpn_ids = sum(alpn_ids.get(protocol_id, 0) for protocol_id in rule.alpn)
    destination = destinations.by_name.get(rule.destination)
    info.destination_id = destination.id if destination else 0
    if rule.trigger:
        info.trigger_unit = TRIGGER_UNITS[rule.trigger.unit]
        info.trigger_direction = DIRECTIONS[rule.trigger.direction]
        info.trigger_at = rule.trigger.count
    return info
