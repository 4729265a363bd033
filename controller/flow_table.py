# SPDX-License-Identifier: GPL-2.0-only
"""The flow table as the controller reads and writes it: by struct flow_key.

The data plane keys its flows table by a 16-byte struct flow_id (bpf/flow.h,
bpf/sluice_abi.h): an IPv4 flow's own addresses and ports, an IPv6 flow's
number, which ipv6_flows gives its flow_key. Events, QUIC datagrams and
streams name a flow by its flow_key; this is the one place that turns one
into the other, for every reader of the flows table (reclassify, schedule
steps, QUIC verdicts, replay, the benchmarks, the tests).
"""

import ctypes

from .map_batches import delete_entries, entry_batches

IPV4_MAPPED = bytes(10) + b"\xff\xff"


class FlowTable:
    """The flows of one Datapath, by flow_key (the ctypes type: key_type)."""

    def __init__(self, datapath):
        self.flows = datapath.table("flows")
        self.ipv6_flows = datapath.table("ipv6_flows")
        self.key_type, self.id_type = self.ipv6_flows.Key, self.flows.Key

    def flow_id(self, key):
        """The flows table's key of the flow whose flow_key is key; None for an
        IPv6 flow the index has no number for (never seen, or forgotten)."""
        if key.ipv6:
            try:
                return self.ipv6_flows[key]
            except KeyError:
                return None
        raw, flow_id = bytes(key), self.id_type()
        for address, end in ((self.key_type.addr_lo, self.id_type.lo), (self.key_type.addr_hi, self.id_type.hi)):
            ctypes.memmove(ctypes.byref(flow_id, end.offset), raw[address.offset + 12:address.offset + 16], 4)
        flow_id.port_lo, flow_id.port_hi, flow_id.l4proto = key.port_lo, key.port_hi, key.l4proto
        return flow_id

    def flow_key(self, flow_id, numbered: dict):
        """The flow_key of an IPv4 flow_id, or of an IPv6 one from numbered
        (bytes of a flow_id -> its flow_key, see numbered_keys()); None for an
        IPv6 entry no flow_key leads to any more."""
        if flow_id.ipv6:
            return numbered.get(bytes(flow_id))
        raw, key = bytes(flow_id), self.key_type()
        for end, address in ((self.id_type.lo, self.key_type.addr_lo), (self.id_type.hi, self.key_type.addr_hi)):
            ctypes.memmove(ctypes.byref(key, address.offset), IPV4_MAPPED + raw[end.offset:end.offset + 4], 16)
        key.port_lo, key.port_hi, key.l4proto = flow_id.port_lo, flow_id.port_hi, flow_id.l4proto
        return key

    def numbered_keys(self) -> dict:
        """bytes of each IPv6 flow_id in the index -> its flow_key."""
        return {bytes(flow_id): self.key_type.from_buffer_copy(key)
                for keys, ids, count in entry_batches(self.ipv6_flows)
                for key, flow_id in zip(keys[:count], ids[:count])}

    def __getitem__(self, key):
        flow_id = self.flow_id(key)
        if flow_id is None:
            raise KeyError(key)
        return self.flows[flow_id]

    def __setitem__(self, key, flow) -> None:
        """Write the entry of a flow the data plane has numbered (KeyError if not)."""
        flow_id = self.flow_id(key)
        if flow_id is None:
            raise KeyError(key)
        self.flows[flow_id] = flow

    def batches(self):
        """The flows table's entries a batch at a time, (flow_ids, flow_states,
        count) as map_batches.entry_batches() gives them: flow_key() names each."""
        return entry_batches(self.flows)

    def items(self):
        """(flow_key, flow_state) of every flow a flow_key leads to, a batch
        of the table at a time: a moment's view of a live table."""
        numbered = self.numbered_keys()
        for ids, flows, count in self.batches():
            for flow_id, flow in zip(ids[:count], flows[:count]):
                key = self.flow_key(flow_id, numbered)
                if key is not None:
                    yield key, type(flow).from_buffer_copy(flow)

    def keys(self):
        return (key for key, _flow in self.items())

    def clear(self) -> None:
        """Forget every flow."""
        delete_entries(self.flows)
        delete_entries(self.ipv6_flows)
