"""`sluice run` on real interfaces: attach, reload live, survive a crash, stop.

State that must outlive one controller process lives in two places:
  /sys/fs/bpf/sluice/maps/    the pinned state maps (flows, counters, clocks)
  /sys/fs/bpf/sluice/links/   the pinned XDP links (fail-static mode)
  /run/sluice/state.json      rule ids by name, the interfaces, reload history
A restarted controller compiles the policy again, opens the same pinned
maps, and swaps its program into the pinned links: flows and counters carry
on. `sluice stop` removes all of it.

A reload validates the new policy completely and compiles it into a new
program with new policy maps before anything changes; then each interface's
link swaps to the new program in one atomic step. Until then, and for good
if anything fails, the running policy stays in force.
"""

import ctypes
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import schedule, xdp_link
from .abi import ABI
from .clients import flow_client
from .datapath import Datapath
from .metrics import file_digest
from .policy import ACTIONS, PolicyError, load_policy, with_stable_ids
from .quic_flows import QuicFlows

log = logging.getLogger(__name__)

# Overridable so that tests (or a second instance) never touch a deployed sluice's state.
PIN_ROOT = Path(os.environ.get("SLUICE_PIN_ROOT", "/sys/fs/bpf/sluice"))
STATE_FILE = Path(os.environ.get("SLUICE_STATE_FILE", "/run/sluice/state.json"))
RELOAD_HISTORY = 20
TOP_RULES = 5


def ensure_bpffs() -> None:
    """Pins need a BPF filesystem at /sys/fs/bpf; mount one if the system has not."""
    if subprocess.run(["mountpoint", "-q", "/sys/fs/bpf"]).returncode != 0:
        subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=True)


def what_it_does(rule) -> tuple:
    """What a rule does to its flows, as far as their entries record it."""
    return rule.action, rule.inactive, rule.monitor


def describe(rule) -> str:
    return "inactive" if rule.inactive else rule.action + (" (monitor)" if rule.monitor else "")


def read_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


class Service:
    def __init__(self, policy_path: str, interfaces: list[str], netns: str | None = None,
                 xdp_mode: str = "auto", fail_open: bool = False):
        self.policy_path = policy_path
        self.interfaces = interfaces
        self.netns = netns
        self.xdp_mode = xdp_mode
        self.fail_open = fail_open
        self.state = read_state()
        self.rule_ids: dict[str, int] = self.state.get("rule_ids", {})
        self.reloads = {"success": 0, "failure": 0}
        self.history: list[dict] = self.state.get("reloads", [])
        self.datapath: Datapath | None = None
        self.policy = None               # as loaded; self.datapath.policy is it as it stands now
        self.next_switch = None          # when a rule's schedule next changes what it does
        self.shapers: list = []
        self.loaded_at = 0.0
        self.policy_mtime = 0.0
        self.observed: dict = {}     # the last snapshot()
        self.flow_names: dict[bytes, bytes] = {}   # flow key -> name, from classification events
        self.quic: QuicFlows | None = None
        # Rules of earlier policies, by name: flows classified under them keep
        # their verdict after a reload (unless the policy says reclassify).
        self.retired_rules: dict = {}

    def start(self) -> None:
        """Load the policy and attach; raises PolicyError or AttachError with nothing changed."""
        from .cli import set_up_egress
        ensure_bpffs()
        (PIN_ROOT / "maps").mkdir(parents=True, exist_ok=True)
        (PIN_ROOT / "links").mkdir(parents=True, exist_ok=True)
        policy = self._load()
        datapath = Datapath(policy, events=True, pin_dir=str(PIN_ROOT / "maps"))
        try:
            self.shapers = set_up_egress(datapath, policy, [(i, self.netns) for i in self.interfaces])
            for ifname in self.interfaces:
                pin = None if self.fail_open else str(self._link_pin(ifname))
                datapath.attach(ifname, self.netns, self.xdp_mode, pin_path=pin)
        except Exception:
            datapath.close()
            raise
        self._install(datapath, policy)
        self._record("start", True, f"attached to {', '.join(self.interfaces)}")

    def reload(self) -> bool:
        """Validate, compile, then swap; a refused policy leaves the running one in force."""
        started = time.monotonic()
        try:
            policy = self._load()
            current = {rule.name for rule in policy.rules}
            retired = {**self.retired_rules, **{r.name: r for r in self.policy.rules if r.name not in current}}
            retired = {name: rule for name, rule in retired.items() if name not in current}
            datapath = Datapath(policy, events=True, pin_dir=str(PIN_ROOT / "maps"),
                                retired_rules=retired.values())
        except PolicyError as error:
            self.reloads["failure"] += 1
            log.error("policy reload refused, the running policy stays in force:\n%s", error)
            self._record("reload", False, str(error).splitlines()[0])
            return False
        from .egress import EgressError
        try:
            switched = self._swap(datapath, policy)
        except EgressError as error:
            self.reloads["failure"] += 1
            log.error("policy reload refused, the running policy stays in force: %s", error)
            self._record("reload", False, str(error))
            return False
        self.retired_rules = retired
        for rule in switched:
            log.info("reload: rule %s is now %s; its flows follow", rule.name, describe(rule))
        if policy.reclassify:
            self.reclassify()
        self.reloads["success"] += 1
        log.info("policy reloaded: %d rules, swapped in %.2f s", len(policy.rules), time.monotonic() - started)
        self._record("reload", True, f"{len(policy.rules)} rules")
        return True

    def switch_due(self) -> bool:
        return self.next_switch is not None and schedule.now() >= self.next_switch

    def switch_schedule(self) -> None:
        """A rule's window opened or closed, or it escalated: compile the
        policy as it stands now, swap it in, and move the flows of the rules
        that switched to their new action (none, if the rule went inactive)."""
        from .egress import EgressError
        datapath = Datapath(self.policy, events=True, pin_dir=str(PIN_ROOT / "maps"),
                            retired_rules=self.retired_rules.values())
        try:
            switched = self._swap(datapath, self.policy)
        except EgressError as error:
            log.error("schedule switch failed, the previous step stays in force: %s", error)
            self._record("schedule", False, str(error))
            return
        for rule in switched:
            log.info("schedule: rule %s is now %s", rule.name, describe(rule))
        self._record("schedule", True, ", ".join(f"{r.name}: {describe(r)}" for r in switched)
                     or "no rule changed")

    @staticmethod
    def _move_flows(datapath, switched: dict, rule_ids: set) -> None:
        """Give the classified flows of rule_ids their rule's new action."""
        if not rule_ids:
            return
        flows = datapath.table("flows")
        for key, flow in flows.items():
            rule = switched.get(flow.rule_id)
            if flow.rule_id in rule_ids and flow.state == ABI.SLUICE_FLOW_CLASSIFIED:
                flow.action = (ABI.SLUICE_ACTION_NONE if rule.inactive or rule.monitor else ACTIONS[rule.action])
                flows[key] = flow

    def poll_events(self, timeout_ms: int = 0) -> None:
        """Read what waits on the rings, or arrives within timeout_ms: the name of each
        new flow, and the QUIC Initials whose flows wait for a verdict."""
        self.datapath.bpf.ring_buffer_poll(timeout_ms)

    def _remember_name(self, _ctx, data, _size) -> None:
        event = ctypes.cast(data, self._event_type).contents
        if len(self.flow_names) >= ABI.SLUICE_FLOW_MAX:
            self._forget_gone_flows()
        self.flow_names[bytes(event.key)] = bytes(event.name[:event.name_len])

    def _remember_quic_name(self, key, _client_is_hi, name, _rule) -> None:
        if name:
            self.flow_names[bytes(key)] = name.encode()

    def _forget_gone_flows(self) -> None:
        present = {bytes(key) for key in self.datapath.table("flows").keys()}
        self.flow_names = {k: v for k, v in self.flow_names.items() if k in present}

    def reclassify(self) -> int:
        """Judge every classified flow whose name we saw by the running policy."""
        flows = self.datapath.table("flows")
        changed = 0
        for key, flow in flows.items():
            name = self.flow_names.get(bytes(key))
            if flow.state != ABI.SLUICE_FLOW_CLASSIFIED or name is None:
                continue
            rule = self.datapath.policy.decide(name, *flow_client(key, flow)).rule if name else None
            action = (ABI.SLUICE_ACTION_NONE if rule is None or rule.monitor else ACTIONS[rule.action])
            if (flow.rule_id, flow.action) != ((rule.id if rule else 0), action):
                flow.rule_id, flow.action = (rule.id if rule else 0), action
                flows[key] = flow
                changed += 1
        log.info("reclassified %d flows under the new policy", changed)
        return changed

    def snapshot(self) -> None:
        """Record how full the flow table is and the busiest rules, for `sluice status`."""
        stats = self.datapath.rule_stats()
        top = sorted((rule for rule in self.policy.rules), key=lambda r: -stats[r.id]["flows"])[:TOP_RULES]
        self.observed = {"flows": self.datapath.flow_count(), "flow_capacity": ABI.SLUICE_FLOW_MAX,
                         "top_rules": [{"rule": r.name, "flows": stats[r.id]["flows"],
                                        "packets": stats[r.id]["packets"],
                                        "dropped_packets": stats[r.id]["dropped_packets"]} for r in top],
                         "observed_at": time.time()}
        self._save()

    def policy_changed(self) -> bool:
        try:
            return os.stat(self.policy_path).st_mtime != self.policy_mtime
        except OSError:
            return False

    def stop(self) -> None:
        """Detach everything and forget all state (SIGINT, SIGTERM)."""
        if self.datapath:
            self.datapath.close()
        for shaper in self.shapers:
            shaper.close()
        remove_pins()

    def abandon(self) -> None:
        """Exit but leave pinned links enforcing (a test's stand-in for a crash)."""
        self.datapath.release()

    # --- internals ----------------------------------------------------------
    def _load(self):
        self.policy_mtime = os.stat(self.policy_path).st_mtime
        policy, ids = with_stable_ids(load_policy(self.policy_path), self.rule_ids)
        self.rule_ids = ids
        return policy

    def _swap(self, datapath, policy) -> list:
        """Move the interfaces (and egress shapers) to datapath in one atomic
        swap each; raises EgressError, with the running one untouched.

        A flow keeps its verdict (its rule and action) in its own entry, but
        reads its rule's limits from the running program's map. So the flows
        of a rule that keeps its name but changes what it does (a schedule
        step, or an edited policy) move to its new action here: kept on the
        old one they would be policed by limits the rule no longer has, and a
        throttled flow would run free. Flows bound for block or pass need no
        limits and move just before the swap; flows bound for a rate or a
        delay move just after it, once their limits are in place. Returns the
        rules that switched."""
        from .cli import set_up_egress
        before = {rule.name: rule for rule in self.datapath.policy.rules}
        switched = {rule.id: rule for rule in datapath.policy.rules
                    if rule.name in before and what_it_does(rule) != what_it_does(before[rule.name])}
        needs_limits = {rule_id for rule_id, rule in switched.items()
                        if not (rule.inactive or rule.monitor) and rule.action in ("throttle", "shape", "delay")}
        try:
            if self.shapers:
                for shaper in self.shapers:
                    shaper.replace_program(datapath.tc_egress_fd())
            else:
                self.shapers = set_up_egress(datapath, policy, [(i, self.netns) for i in self.interfaces])
        except Exception:
            datapath.close()
            raise
        self.poll_events()
        self._move_flows(datapath, switched, set(switched) - needs_limits)
        datapath.take_over(self.datapath)
        old = self.datapath
        self._install(datapath, policy)
        old.close()
        self._move_flows(datapath, switched, needs_limits)
        return list(switched.values())

    def _install(self, datapath, policy) -> None:
        self._event_type = ctypes.POINTER(datapath.table("event_buffers").sLeaf)
        datapath.table("events").open_ring_buffer(self._remember_name)
        if self.quic is None:
            self.quic = QuicFlows(datapath, on_settled=self._remember_quic_name)
        else:
            self.quic.follow(datapath)
        if not self.fail_open:
            # A program array empties itself when no process or pin holds it,
            # which would silently end inspection after a crash: pin it.
            xdp_link.pin(datapath.table("stages").map_fd, str(PIN_ROOT / "stages"))
        self.datapath, self.policy = datapath, policy
        self.next_switch = policy.next_switch(schedule.now())
        self.loaded_at = time.time()
        self._save()

    def _link_pin(self, ifname: str) -> Path:
        return PIN_ROOT / "links" / f"{self.netns or 'host'}-{ifname}"

    def _record(self, what: str, ok: bool, detail: str) -> None:
        self.history = (self.history + [{"time": time.time(), "event": what, "ok": ok,
                                         "detail": detail}])[-RELOAD_HISTORY:]
        self._save()

    def _save(self) -> None:
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        links = [{"ifname": link.ifname, "netns": link.netns, "mode": link.mode, "pinned": bool(link.pin_path)}
                 for link in (self.datapath.links if self.datapath else [])]
        state = {"pid": os.getpid(), "policy": os.path.abspath(self.policy_path),
                 "policy_sha256": file_digest(self.policy_path), "loaded_at": self.loaded_at,
                 "rules": len(self.policy.rules) if self.policy else 0,
                 "rule_ids": self.rule_ids, "interfaces": links, "fail_open": self.fail_open,
                 "reloads": self.history, **self.observed}
        tmp = STATE_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(STATE_FILE)


def remove_pins() -> None:
    """Unpin every sluice link and map; the kernel frees what nothing else holds."""
    if PIN_ROOT.exists():
        shutil.rmtree(PIN_ROOT)
    STATE_FILE.unlink(missing_ok=True)
