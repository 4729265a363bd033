# SPDX-License-Identifier: GPL-2.0-only
"""QUIC flows: the controller's half of classifying them (bpf/quic.h is the kernel's).

The data plane sends each client Initial datagram of a young QUIC flow, of
any version, and a server's Version Negotiation, over the quic_datagrams
ring and lets the flow pass. Here each datagram is counted by its version's
family, and each flow's go to its own InitialReassembler (controller/quic.py),
which reads the versions it knows; once the ClientHello
is whole, the flow's rule is chosen as for TCP (Policy.decide, from its
name, ECH and ALPN, with protocol quic) and written into its flow table
entry, which every later packet of the flow obeys (a rule with a trigger:
once the data plane has counted to it). A
rule with `quic: block` blocks the QUIC flows it matches whatever its
action, so that clients fall back to TCP, where the rule's own action
applies.

A flow's addresses and ports may carry Initials of more than one
connection, each of its own DCID, whole and valid: a server reads each
(it tells connections apart by DCID), and a client goes on with only one.
zapret's usual QUIC strategy sends a fake one, naming an unblocked host,
several times ahead of the real one, or between the datagrams of a real
hello of two. So a flow named here stays open to the Initials of other
connections (the data plane hands them over for the rest of its window)
and obeys the strictest hello of them: a block over a limit (throttle,
shape, delay) over none; and its reassembler stays while a hello is half
read, so that a whole fake between the halves cannot cost the real hello
its first. A broken connection ends its own stream, not the flow, or
broken fakes sent ahead would hide the real hello behind them: a flow
without a name is given up only once the data plane has handed over its
window's Initials, or its reassembler is done.

Flows whose hellos never complete (a flood of clients, or an adversary's
half hellos, each claiming its streams' most) are bounded twice: by count
(PENDING_FLOWS_MAX) and by the bytes their reassemblies hold together
(PENDING_BYTES_MAX, each reassembler's own count of its bytes). Past
either, the oldest pending flows give way, never the one just fed (its
reassembly keeps within its own bound, quic.MAX_FLOW_CRYPTO_BYTES): an
evicted flow's reassembly is dropped, nothing is written to its entry, so
it passes unjudged as a flow still inspected does, and any Initials of it
still to come are read afresh.
"""

import ctypes
import logging
from collections import Counter

from .abi import ABI
from .clients import flow_client, flow_server
from .datapath import settle_flow
from .policy import DEFAULT_WINDOW_PACKETS
from .quic import EVICTION_REASONS, FAMILIES, InitialReassembler, QuicError, family

log = logging.getLogger(__name__)

PENDING_FLOWS_MAX = 4096        # flows whose ClientHello is still incomplete
# The bytes their reassemblies hold together, as they count them (a little
# over what tracemalloc finds: docs/operations.md has the figures). A
# browser's two-datagram hello half sent holds 3.7 KB (counted 4.4), so
# PENDING_FLOWS_MAX of them 18 MB, which this leaves room for: the count
# bounds ordinary flows, the bytes the hoarders. A flow whose Initials make
# each stream claim its most (quic.MAX_FLOW_CRYPTO_BYTES, and as much of
# bitmap) within the default window of 20 holds 97.5 KB: PENDING_FLOWS_MAX
# of them 400 MB, which an edge box has not to spare; here some 330 at once,
# 32 MB.
PENDING_BYTES_MAX = 32 * 1024 * 1024
NAMED_FLOWS_MAX = 65536         # flows named here, whose later hellos of other connections are weighed


class QuicFlows:
    """Reads the ring, settles flows; `on_settled(key, client_is_hi, hello, rule)` hears of each
    (hello: its quic.ClientHelloInfo, None if it gave up), and `on_renamed`
    (the same arguments; on_settled if not given) of a named flow that a
    stricter hello of another connection names again.

    One QuicFlows outlives reloads (its counts are Prometheus counters, and
    flows in the middle of their handshake keep their reassembly): follow()
    each new Datapath."""

    def __init__(self, datapath, on_settled=None, open_ring: bool = True, on_renamed=None):
        self.on_settled = on_settled
        self.on_renamed = on_renamed or on_settled
        self.pending: dict[bytes, InitialReassembler] = {}      # oldest first
        self.pending_bytes = 0                   # what their reassemblies hold together (their `held`)
        self.evicted: Counter = Counter(dict.fromkeys(EVICTION_REASONS, 0))   # pending flows dropped, by bound
        self.named: dict[bytes, object] = {}     # flow key -> the rule its strictest hello so far chose (or None)
        self.outcomes: Counter = Counter()       # sni_found, no_sni, ech, malformed, gave_up, another_hello
        self.flows_by_rule: Counter = Counter()  # rule id (0: none) -> QUIC flows settled
        # Datagrams by what they are (quic.family): client Initials of each
        # version family, grease and unknown versions, servers' negotiation.
        self.families: Counter = Counter(dict.fromkeys(FAMILIES, 0))
        self.follow(datapath, open_ring)

    def follow(self, datapath, open_ring: bool = True) -> None:
        """open_ring False: the caller reads the ring itself (replay's
        MappedRing) and hands each datagram to add_datagram."""
        self.datapath = datapath
        self._datagram_type = ctypes.POINTER(datapath.table("quic_datagram_layout").Leaf)
        if open_ring:
            datapath.table("quic_datagrams").open_ring_buffer(
                lambda _ctx, data, _size: self._add_record(ctypes.cast(data, self._datagram_type).contents))

    def _add_record(self, datagram) -> None:
        """One quic_datagram, the ring's record as quic_datagram_layout's ctypes type."""
        # string_at: one copy; a slice of the ctypes array would make a list of its ints first.
        self.add_datagram(datagram.key, ctypes.string_at(ctypes.addressof(datagram.bytes),
                                                         min(datagram.len, len(datagram.bytes))))

    def add_datagram(self, flow_key, payload: bytes) -> None:
        """A datagram the program handed over: its flow's struct flow_key (ctypes) and its bytes."""
        key = bytes(flow_key)
        self.families[family(payload)] += 1
        self._feed(key, flow_key, payload)
        # A datagram grows its flow's reassembly by at most a stream's buffers:
        # the bound is kept once it is read, by the flows before it.
        while self.pending_bytes > PENDING_BYTES_MAX:
            oldest = next((other for other in self.pending if other != key), None)
            if oldest is None:
                break           # one flow alone: it keeps within its own bound
            self._evict(oldest, "memory")

    def _feed(self, key: bytes, flow_key, payload: bytes) -> None:
        """The datagram to its flow's reassembly: the flow settled once a hello is whole, given up once none can be."""
        reassembler = self.pending.get(key)
        if reassembler is None:
            if len(self.pending) >= PENDING_FLOWS_MAX:
                self._evict(next(iter(self.pending)), "count")
            reassembler = self.pending[key] = InitialReassembler()
            self.pending_bytes += reassembler.held
        held = reassembler.held
        try:
            hello = reassembler.feed(payload)
        except QuicError as error:
            hello = None
            # A named flow's Initials include the client's next flight, sealed
            # with keys of a DCID a reassembler begun since may never have seen:
            # nothing to read and nothing wrong.
            if not self._named(flow_key):
                self.outcomes["malformed"] += 1
                log.debug("QUIC Initial refused: %s", error)
        finally:
            self.pending_bytes += reassembler.held - held
        if hello is not None:
            self.outcomes["sni_found" if hello.sni else "no_sni"] += 1
            self.outcomes["ech"] += hello.ech
            self._settle(flow_key, hello)
        # The data plane hands over at most the window's Initials of a flow
        # (fakes and repeats count): past them nothing more is to come.
        spent = reassembler.done or reassembler.fed >= self._window_packets()
        if reassembler.gathering and not spent:
            return
        # No hello half read: a named flow keeps no reassembly (another
        # connection's next Initials start one afresh); a flow that can
        # read no more without a name is given up. One that can waits: a
        # real hello may follow the broken ones.
        named = self._named(flow_key)
        if named or spent:
            self._drop(key)
            if not named:
                self._settle(flow_key, gave_up=True)

    def _drop(self, key: bytes) -> None:
        """The flow's reassembly, if it has one, and the bytes it held."""
        reassembler = self.pending.pop(key, None)
        if reassembler is not None:
            self.pending_bytes -= reassembler.held

    def _evict(self, key: bytes, reason: str) -> None:
        """A pending flow gives way to others (reason: the bound, EVICTION_REASONS)."""
        self._drop(key)
        self.evicted[reason] += 1

    def forget_flows(self) -> None:
        """Forget every flow, pending and named (replay's next capture starts afresh); the counts stay."""
        self.pending.clear()
        self.pending_bytes = 0
        self.named.clear()

    def _window_packets(self) -> int:
        policy = self.datapath.policy
        return policy.window_packets if policy else DEFAULT_WINDOW_PACKETS

    def _named(self, flow_key) -> bool:
        """Is the flow one named here, still in that life (not inspected afresh)?"""
        if bytes(flow_key) not in self.named:
            return False
        try:
            return self.datapath.flow_table()[flow_key].state == ABI.SLUICE_FLOW_CLASSIFIED
        except KeyError:
            return False

    def _settle(self, key, hello=None, gave_up: bool = False) -> None:
        """Write the verdict for the flow whose ClientHello is hello (quic.ClientHelloInfo)."""
        name = hello.sni if hello else None
        raw_key = bytes(key)
        flows = self.datapath.flow_table()
        try:
            flow = flows[key]
        except KeyError:
            return                                  # evicted, or expired, meanwhile
        # Named here before, by another connection's hello (a flow inspected
        # again is a new one on the same addresses and ports).
        earlier = flow.state != ABI.SLUICE_FLOW_INSPECTING and raw_key in self.named
        if earlier and not gave_up:
            self.outcomes["another_hello"] += 1
        elif flow.state != ABI.SLUICE_FLOW_INSPECTING:
            return          # settled at its opening datagram, or its trigger fired; or a connection saying nothing
        rule = None
        if gave_up:
            self.outcomes["gave_up"] += 1
            flow.state = ABI.SLUICE_FLOW_GAVE_UP
        else:
            if self.datapath.policy:
                client, server_port, opened = flow_client(key, flow)
                rule = self.datapath.policy.decide(
                    (name or "").encode(), client, server_port, opened, server=flow_server(key, flow),
                    protocol="quic", ech=hello.ech, alpn=hello.alpn).rule
            if earlier:
                if strictness(rule) <= strictness(self.named[raw_key]):
                    return
                self.flows_by_rule[flow.rule_id] -= 1
            settle_flow(flow, rule, "block" if rule and rule.quic == "block" else None)
            self.flows_by_rule[flow.rule_id] += 1
            if len(self.named) >= NAMED_FLOWS_MAX:
                self.named.pop(next(iter(self.named)))          # the oldest gives way
            self.named[raw_key] = rule
        flows[key] = flow
        tell = self.on_renamed if earlier else self.on_settled
        if tell:
            tell(key, flow.client_is_hi, hello, rule)


def strictness(rule) -> int:
    """How hard a rule holds a QUIC flow: 2 a block (its own action, or
    quic: block), 1 a limit (throttle, shape, delay), 0 none (allow, a rule
    in monitor mode, no rule)."""
    if rule is None or rule.monitor:
        return 0
    action = "block" if rule.quic == "block" else rule.action
    return 2 if action == "block" else 0 if action == "allow" else 1
