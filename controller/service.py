# SPDX-License-Identifier: GPL-2.0-only
"""`sluice run` on real interfaces: attach, reload live, survive a crash, stop.

State that must outlive one controller process lives in two places:
  /sys/fs/bpf/sluice/maps/    the pinned state maps (flows, counters, clocks)
  /sys/fs/bpf/sluice/links/   the pinned XDP and tcx links (fail-static mode); an
                              interface at tc ingress on a kernel without tcx
                              keeps its tc filter instead
  /sys/fs/bpf/sluice/stages, tc_stages   the program arrays (fail-static mode)
  /run/sluice/state.json      rule ids by name, the interfaces, reload history
A restarted controller loads the program again, opens the same pinned
maps, and swaps its program into the pinned links: flows and counters carry
on. `sluice stop` removes all of it.

The program is loaded once, at start. A reload validates the new policy
completely and fills it into the generation of the policy maps that packets
are not reading, before anything changes; then one write flips the data
plane to it (controller/datapath.py, bpf/policy_maps.h). Until then, and for
good if anything fails (whatever the exception), the running policy stays
in force.
The file is watched by content: a reload happens once per change of its
digest, after the file has held still for one look (never on a half-written
file), which also covers a kubelet ConfigMap's symlink swap.

One controller runs per pin root: it holds an flock on
/run/sluice/<pin root's name>.lock (next to the state file) for its life.
Every few seconds it checks its own data plane (links attached to its
program, pins present, every stage in the program array): a missing pin is
pinned again; anything else ends the controller loudly rather than letting
it report healthy over a data plane that passes everything.
"""

import ctypes
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import hooks, schedule, tc, xdp_link
from .abi import ABI
from .block_methods import set_up_server_resets
from .abi import PROTO_NAMES
from .clients import flow_client, flow_server
from .datapath import STAGE_FUNCTIONS, STATE_MAPS, Datapath, settle_flow
from .egress import set_up_egress
from .netns import inside_netns, netns_exists
from .policy import ACTIONS, InputFileError, load_policy, read_text_file, with_stable_ids
from .quic_flows import QuicFlows

log = logging.getLogger(__name__)

# Overridable so that tests (or a second instance) never touch a deployed sluice's state.
PIN_ROOT = Path(os.environ.get("SLUICE_PIN_ROOT", "/sys/fs/bpf/sluice"))
STATE_FILE = Path(os.environ.get("SLUICE_STATE_FILE", "/run/sluice/state.json"))
RELOAD_HISTORY = 20
# After a switch, how long the previous policy's maps are kept for packets
# that entered under it and are still between stages (microseconds, in
# truth) before the kernel may free them.
PREVIOUS_POLICY_GRACE_SECONDS = 1.0
TOP_RULES = 5
BPFFS = "/sys/fs/bpf"


class InputError(Exception):
    """What the operator asked for cannot be done as asked (exit 2)."""


class SetupError(Exception):
    """The machine lacks what sluice needs: a privilege, bpffs, the lock (exit 1)."""


def mounted_fs_type(mount_point: str) -> str | None:
    """The type of the filesystem mounted last (the visible one) at mount_point."""
    found = None
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[4] == mount_point:
                found = fields[fields.index("-") + 1]
    return found


def ensure_bpffs() -> None:
    """Pins need a BPF filesystem at /sys/fs/bpf; mount one if the system has not."""
    if mounted_fs_type(BPFFS) == "bpf":
        return
    mounted = subprocess.run(["mount", "-t", "bpf", "bpf", BPFFS], capture_output=True, text=True)
    if mounted.returncode != 0 or mounted_fs_type(BPFFS) != "bpf":
        raise SetupError(f"{BPFFS} is not a BPF filesystem and mounting one failed (that takes CAP_SYS_ADMIN): "
                         f"mount it first (mount -t bpf bpf {BPFFS}, or systemd's sys-fs-bpf.mount)")


def lock_path() -> Path:
    return STATE_FILE.parent / f"{PIN_ROOT.name}.lock"


def take_lock() -> int | None:
    """The controller lock's descriptor, held while it stays open; None if another process holds it."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_holder() -> int | None:
    """The pid the lock file names (the holder, while the lock is held)."""
    try:
        return int(lock_path().read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def prepare_pin_root() -> bool:
    """Create the pin root (0700) or adopt ours; True if this call created it.
    A pin root another user owns is refused: its pins are not ours to enforce."""
    created = False
    try:
        PIN_ROOT.mkdir(mode=0o700)
        created = True
    except FileExistsError:
        owner = PIN_ROOT.stat().st_uid
        if owner != os.geteuid():
            raise SetupError(f"pin root {PIN_ROOT} belongs to uid {owner}, not to uid {os.geteuid()}: "
                             f"refusing to adopt it; remove it (rm -r {PIN_ROOT}) as root") from None
    for sub in ("maps", "links"):
        (PIN_ROOT / sub).mkdir(mode=0o700, exist_ok=True)
    return created


def file_digest(path: str) -> str | None:
    """The first 16 hex digits of the file's SHA-256 (which version of the policy
    runs); None if it cannot be read as a policy."""
    try:
        return hashlib.sha256(read_text_file(path).encode()).hexdigest()[:16]
    except InputFileError:
        return None


def file_signature(path: str) -> tuple | None:
    """What changes whenever the file (or the file a symlink leads to) is rewritten or swapped."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def what_it_does(rule) -> tuple:
    """What a rule does to its flows, as far as their entries record it."""
    return rule.action, rule.inactive, rule.monitor


def describe(rule) -> str:
    return "inactive" if rule.inactive else rule.action + (" (monitor)" if rule.monitor else "")


@dataclass(frozen=True)
class SeenHello:
    """What named a flow, as its classification event (or its QUIC Initial) told: enough to judge it again."""
    name: bytes
    ech: bool = False
    alpn: tuple[str, ...] = ()


def offered_alpn(body: bytes) -> tuple[str, ...]:
    """The protocol ids of an ALPN extension body (RFC 7301: a 2-byte list length, then ids of a
    1-byte length each) that lie whole in body, which the data plane may have cut short."""
    offered, at = [], 2
    while at < len(body) and 0 < body[at] and at + 1 + body[at] <= len(body):
        offered.append(body[at + 1:at + 1 + body[at]].decode("ascii", "replace"))
        at += 1 + body[at]
    return tuple(offered)


def read_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


class Service:
    def __init__(self, policy_path: str, interfaces: list[str], netns: str | None = None,
                 hook: str = "auto", fail_open: bool = False):
        self.policy_path = policy_path
        self.interfaces = interfaces
        self.netns = netns
        self.hook = hook
        self.fail_open = fail_open
        self.state = read_state()
        self.rule_ids: dict[str, int] = self.state.get("rule_ids", {})
        self.reloads = {"success": 0, "failure": 0}
        self.history: list[dict] = self.state.get("reloads", [])
        self.datapath: Datapath | None = None
        self.policy = None               # as loaded; self.datapath.policy is it as it stands now
        self.next_switch = None          # when a rule's schedule next changes what it does
        self.compiled_at = None          # the moment the data plane being installed was compiled for
        self.switched_at: float | None = None   # monotonic time of the last switch, while its previous policy is kept
        self.shapers: list = []
        self.server_resets: list = []      # tc.TcFilter of sluice_tc_reset, where rules answer clients
        self.loaded_at = 0.0
        self.policy_digest: str | None = None       # of the running policy's file
        self.seen_signature: tuple | None = None    # the file as last judged
        self.moving_signature: tuple | None = None  # the file as last seen, still changing
        self.policy_missing = False
        self.lock_fd: int | None = None
        self.datapath_healthy = True
        self.observed: dict = {}     # the last snapshot()
        self.flow_hellos: dict[bytes, SeenHello] = {}   # flow key -> what named it, from classification events
        self.quic: QuicFlows | None = None
        # Rules of earlier policies, by name: flows classified under them keep
        # their verdict after a reload (unless the policy says reclassify).
        self.retired_rules: dict = {}

    def check(self) -> tuple:
        """Everything that can be checked before touching the kernel; returns
        (policy, digest) for start(). Raises InputError or PolicyError."""
        if len(set(self.interfaces)) != len(self.interfaces):
            twice = sorted({i for i in self.interfaces if self.interfaces.count(i) > 1})
            raise InputError(f"interface {', '.join(twice)} given more than once")
        if self.fail_open and self.hook == "tc" and not hooks.tcx_available():
            # Without tcx the classifier is a tc filter: no link that dies with this process.
            raise InputError("--fail-open cannot hold at --hook tc on this kernel: it has no tcx link (Linux 6.6+), "
                             "and a tc filter outlives the controller; use --hook generic with it")
        if self.netns is not None and not netns_exists(self.netns):
            raise InputError(f"no network namespace named {self.netns!r} (ip netns list shows those there are)")
        with inside_netns(self.netns):
            for ifname in self.interfaces:
                if ifname not in {name for _, name in socket.if_nameindex()}:
                    where = f" in network namespace {self.netns}" if self.netns else ""
                    raise InputError(f"no interface named {ifname!r}{where}")
        return self._load()

    def start(self, loaded: tuple) -> None:
        """Attach the policy check() loaded; all or nothing: on any failure every
        pin, link and map this start created is undone before the exception goes on."""
        policy, self.policy_digest = loaded
        ensure_bpffs()
        self.lock_fd = take_lock()
        if self.lock_fd is None:
            holder = lock_holder()
            for _ in range(10):      # the holder writes its pid just after taking the lock
                if holder:
                    break
                time.sleep(0.05)
                holder = lock_holder()
            raise SetupError(f"another sluice controller (pid {holder or 'unknown'}) runs on pin root "
                             f"{PIN_ROOT}; stop it first (sluice stop)")
        datapath = created_root = None
        try:
            created_root = prepare_pin_root()
            choices = {ifname: hooks.choose(ifname, self.netns, self.hook) for ifname in self.interfaces}
            datapath = self._compile(policy, xdp=hooks.uses_xdp(choices.values()))
            self.shapers = set_up_egress(datapath, policy, [(i, self.netns) for i in self.interfaces])
            self.server_resets = set_up_server_resets(datapath, policy, [(i, self.netns) for i in self.interfaces])
            for ifname in self.interfaces:
                pin = None if self.fail_open else str(self._link_pin(ifname))
                datapath.attach(ifname, self.netns, choices[ifname], pin_path=pin)
            self._install(datapath, policy)
        except BaseException:
            for hook in [*self.shapers, *self.server_resets]:
                hook.close()
            self.shapers, self.server_resets = [], []
            if datapath is not None:
                if created_root:
                    datapath.close()
                else:
                    # Links taken over from a crashed run's pins are that run's
                    # fail-static data plane: leave them enforcing.
                    datapath.release()
                    datapath.unload()
            self.datapath = None
            if created_root:
                shutil.rmtree(PIN_ROOT, ignore_errors=True)
                STATE_FILE.unlink(missing_ok=True)
            self.release_lock()
            raise
        self._record("start", True, f"attached to {', '.join(self.interfaces)}")

    def reload(self) -> bool:
        """Validate, fill, then switch; a refused policy leaves the running one in force."""
        started = time.monotonic()
        # Any exception is a refused reload: whatever a new file holds (bytes
        # that are not UTF-8, a vanished file, a map the kernel refuses), the
        # running policy stays in force and the controller keeps serving.
        try:
            policy, digest = self._load()
            current = {rule.name for rule in policy.rules}
            retired = {**self.retired_rules, **{r.name: r for r in self.policy.rules if r.name not in current}}
            retired = {name: rule for name, rule in retired.items() if name not in current}
            switched = self._switch_policy(policy, retired.values())
        except Exception as error:
            return self._refuse(error)
        self.retired_rules = retired
        self.policy_digest = digest
        for rule in switched:
            log.info("reload: rule %s is now %s; its flows follow", rule.name, describe(rule))
        if policy.reclassify:
            self.reclassify()
        self.reloads["success"] += 1
        log.info("policy reloaded: %d rules, swapped in %.2f s", len(policy.rules), time.monotonic() - started)
        self._record("reload", True, f"{len(policy.rules)} rules")
        return True

    def release_previous_policy(self) -> None:
        """Free the maps of the policy before the running one, once no packet can still be judged under it."""
        if self.switched_at is not None and time.monotonic() - self.switched_at > PREVIOUS_POLICY_GRACE_SECONDS:
            self.datapath.release_previous()
            self.switched_at = None

    def _refuse(self, error: Exception) -> bool:
        self.reloads["failure"] += 1
        reason = str(error).strip() or type(error).__name__
        log.error("policy reload refused, the running policy stays in force:\n%s", reason)
        self._record("reload", False, reason.splitlines()[0])
        return False

    def switch_due(self) -> bool:
        return self.next_switch is not None and schedule.now() >= self.next_switch

    def switch_schedule(self) -> None:
        """A rule's window opened or closed, or it escalated: fill the policy
        as it stands now, switch to it, and move the flows of the rules that
        switched to their new action (none, if the rule went inactive)."""
        try:
            switched = self._switch_policy(self.policy, self.retired_rules.values())
        except Exception as error:
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
        flows = datapath.flow_table()
        for key, flow in flows.items():
            rule = switched.get(flow.rule_id)
            # A flow still counting toward its rule's trigger takes the action then.
            if flow.rule_id in rule_ids and flow.state == ABI.SLUICE_FLOW_CLASSIFIED and not flow.trigger_pending:
                flow.action = (ABI.SLUICE_ACTION_NONE if rule.inactive or rule.monitor else ACTIONS[rule.action])
                flows[key] = flow

    def poll_events(self, timeout_ms: int = 0) -> None:
        """Read what waits on the rings, or arrives within timeout_ms: the name of each
        new flow, and the QUIC Initials whose flows wait for a verdict."""
        self.datapath.poll_rings(timeout_ms)

    def _remember_name(self, _ctx, data, _size) -> None:
        event = ctypes.cast(data, self._event_type).contents
        if event.opening:
            return          # settled before any of it was read: it keeps its verdict (docs/operations.md)
        if len(self.flow_hellos) >= ABI.SLUICE_FLOW_MAX:
            self._forget_gone_flows()
        self.flow_hellos[bytes(event.key)] = SeenHello(bytes(event.name[:event.name_len]), bool(event.ech),
                                                       offered_alpn(bytes(event.alpn[:event.alpn_len])))

    def _remember_quic_name(self, key, _client_is_hi, hello, _rule) -> None:
        if hello and hello.sni:
            self.flow_hellos[bytes(key)] = SeenHello(hello.sni.encode(), hello.ech, hello.alpn)

    def _forget_gone_flows(self) -> None:
        present = {bytes(key) for key in self.datapath.flow_table().keys()}
        self.flow_hellos = {k: v for k, v in self.flow_hellos.items() if k in present}

    def reclassify(self) -> int:
        """Judge every classified flow whose name we saw by the running policy."""
        flows = self.datapath.flow_table()
        changed = 0
        for key, flow in flows.items():
            seen = self.flow_hellos.get(bytes(key))
            if flow.state != ABI.SLUICE_FLOW_CLASSIFIED or seen is None:
                continue
            rule = self.datapath.policy.decide(seen.name, *flow_client(key, flow), server=flow_server(key, flow),
                                               protocol=PROTO_NAMES[flow.proto] or "tls", ech=seen.ech,
                                               alpn=seen.alpn).rule
            action = ABI.SLUICE_ACTION_NONE if rule is None or rule.monitor else ACTIONS[rule.action]
            # A flow kept under a rule with a trigger keeps its count (and, once fired, its action).
            if flow.rule_id != (rule.id if rule else 0) or (not (rule and rule.trigger) and flow.action != action):
                settle_flow(flow, rule)
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

    @property
    def flow_entries(self) -> int | None:
        """Flows in the table as the last snapshot counted them."""
        return self.observed.get("flows")

    def policy_changed(self) -> bool:
        """True once per change of the file's content, when the file has held
        still since the last look (a writer may be half way through it)."""
        signature = file_signature(self.policy_path)
        if signature is None:
            if not self.policy_missing:
                log.warning("policy file %s is gone; the running policy stays in force until it is back",
                            self.policy_path)
                self.policy_missing = True
            return False
        if self.policy_missing:
            log.info("policy file %s is back", self.policy_path)
            self.policy_missing = False
        if signature == self.seen_signature:
            return False
        if signature != self.moving_signature:
            self.moving_signature = signature
            return False
        self.seen_signature = signature
        digest = file_digest(self.policy_path)
        return digest is None or digest != self.policy_digest

    def check_datapath(self) -> bool:
        """Is our data plane as we built it? Pins that went missing are pinned
        again; a link detached or running another program, or a stage gone from
        the program array, is damage this controller cannot vouch for: False."""
        damage = []
        for link in self.datapath.links:
            program, ifindex = link.attached_program()
            ours = self.program_ids[link.mode == "tc"]
            if ifindex == 0:
                damage.append(f"the {link.mode} hook on {link.ifname} was detached")
            elif program != ours:
                damage.append(f"{link.ifname} runs program {program}, not ours ({ours})")
            if link.pin_path and not os.path.exists(link.pin_path):
                self._repin(link.fd, link.pin_path)
        for stages, pin in program_arrays(self.datapath):
            for index in STAGE_FUNCTIONS:
                try:
                    stages[ctypes.c_int(index)]
                except KeyError:
                    damage.append(f"stage {index} is missing from the program array {pin}")
            if not self.fail_open:
                self._repin(stages.map_fd, str(PIN_ROOT / pin))
        for name in STATE_MAPS:
            self._repin(self.datapath.table(name).map_fd, str(PIN_ROOT / "maps" / name))
        for problem in damage:
            log.error("data plane damaged: %s", problem)
        self.datapath_healthy = not damage
        return self.datapath_healthy

    @staticmethod
    def _repin(fd: int, path: str) -> None:
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            xdp_link.pin(fd, path)
            log.warning("pinned %s again: it was removed under the running controller", path)

    def stop(self) -> None:
        """Detach everything and forget all state (SIGINT, SIGTERM)."""
        if self.datapath:
            self.datapath.close()
        for hook in [*self.shapers, *self.server_resets]:
            hook.close()
        remove_pins()
        self.release_lock()

    def release_lock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def abandon(self) -> None:
        """Exit but leave pinned links enforcing (a test's stand-in for a crash)."""
        self.datapath.release()

    # --- internals ----------------------------------------------------------
    def _load(self):
        """(policy, digest of the file it came from); raises PolicyError."""
        # Judge the file as it is now; the digest taken before the read
        # means a write during it is seen as one more change, never missed.
        self.seen_signature = self.moving_signature = file_signature(self.policy_path)
        digest = file_digest(self.policy_path)
        policy, ids = with_stable_ids(load_policy(self.policy_path), self.rule_ids)
        self.rule_ids = ids
        return policy, digest

    def _compile(self, policy, xdp: bool) -> Datapath:
        """The data plane, loaded with the policy as its schedule stands now,
        with its XDP program if an interface is at an XDP hook (xdp).
        The next switch is counted from the moment filled for, so a step
        that falls due meanwhile is taken right after, not missed."""
        self.compiled_at = schedule.now()
        return Datapath(policy, events=True, pin_dir=str(PIN_ROOT / "maps"), at=self.compiled_at, xdp=xdp)

    def _switch_policy(self, policy, retired_rules) -> list:
        """Fill policy (as its schedule stands now) into the data plane's
        spare generation and switch to it; raises, with the running policy
        untouched, if it cannot.

        A flow keeps its verdict (its rule and action) in its own entry, but
        reads its rule's limits from the running generation. So the flows
        of a rule that keeps its name but changes what it does (a schedule
        step, or an edited policy) move to its new action here: kept on the
        old one they would be policed by limits the rule no longer has, and a
        throttled flow would run free. Flows bound for block or pass need no
        limits and move just before the switch; flows bound for a rate or a
        delay move just after it, once their limits are in place. Returns the
        rules that switched."""
        datapath = self.datapath
        interfaces = [(i, self.netns) for i in self.interfaces]
        # The tc programs are the data plane's own: set up here the first
        # time a policy needs them, before the fill, which takes over what
        # they set (the shape fallback, the server resets flag).
        if not self.shapers:
            self.shapers = set_up_egress(datapath, policy, interfaces)
        if not self.server_resets:
            self.server_resets = set_up_server_resets(datapath, policy, interfaces)
        compiled_at = schedule.now()
        prepared = datapath.prepare(policy, retired_rules, at=compiled_at)
        before = {rule.name: rule for rule in datapath.policy.rules}
        switched = {rule.id: rule for rule in prepared.policy.rules
                    if rule.name in before and what_it_does(rule) != what_it_does(before[rule.name])}
        needs_limits = {rule_id for rule_id, rule in switched.items()
                        if not (rule.inactive or rule.monitor) and rule.action in ("throttle", "shape", "delay")}
        try:
            self.poll_events()
            self._move_flows(datapath, switched, set(switched) - needs_limits)
        except BaseException:
            datapath.discard(prepared)
            raise
        datapath.switch(prepared)
        self.switched_at = time.monotonic()
        self.compiled_at = compiled_at
        self.policy = policy
        self.next_switch = policy.next_switch(compiled_at)
        self.loaded_at = time.time()
        self._save()
        self._move_flows(datapath, switched, needs_limits)
        return list(switched.values())

    def _install(self, datapath, policy) -> None:
        self._event_type = ctypes.POINTER(datapath.table("event_buffers").sLeaf)
        datapath.table("events").open_ring_buffer(self._remember_name)
        self.quic = QuicFlows(datapath, on_settled=self._remember_quic_name)
        if not self.fail_open:
            # A program array empties itself when no process or pin holds it,
            # which would silently end inspection after a crash: pin it.
            for stages, pin in program_arrays(datapath):
                xdp_link.pin(stages.map_fd, str(PIN_ROOT / pin))
        self.datapath, self.policy = datapath, policy
        # The programs on the links: XDP's, and the classifier at tc ingress.
        self.program_ids = (xdp_link.program_id(datapath.function.fd) if datapath.function else None,
                            xdp_link.program_id(datapath.tc_ingress.function.fd) if datapath.tc_ingress else None)
        self.next_switch = policy.next_switch(self.compiled_at)
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
        links = [{"ifname": link.ifname, "netns": link.netns, "mode": link.mode, "why": link.reason,
                  "pinned": bool(link.pin_path)}
                 for link in (self.datapath.links if self.datapath else [])]
        state = {"pid": os.getpid(), "policy": os.path.abspath(self.policy_path),
                 "policy_sha256": self.policy_digest, "loaded_at": self.loaded_at,
                 "rules": len(self.policy.rules) if self.policy else 0,
                 "rule_ids": self.rule_ids, "interfaces": links, "fail_open": self.fail_open,
                 "reloads": self.history, **self.observed}
        tmp = STATE_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(STATE_FILE)


def program_arrays(datapath) -> list[tuple]:
    """(program array, its pin's name under PIN_ROOT) of a data plane: XDP's
    if it has its XDP program, and the tc classifier's if an interface is at
    tc ingress."""
    arrays = [(datapath.table("stages"), "stages")] if datapath.function else []
    if datapath.tc_ingress is not None:
        arrays.append((datapath.tc_ingress.stages, "tc_stages"))
    return arrays


def remove_pins() -> None:
    """Unpin every sluice link and map, and take the classifier's filter off
    the interfaces the state file has at tc ingress (a kernel without tcx);
    the kernel frees what nothing else holds."""
    for link in read_state().get("interfaces", []):
        if link["mode"] == "tc":
            tc.remove_classifier(link["ifname"], link["netns"])
    if PIN_ROOT.exists():
        shutil.rmtree(PIN_ROOT)
    STATE_FILE.unlink(missing_ok=True)
