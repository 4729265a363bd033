# SPDX-License-Identifier: GPL-2.0-only
"""Prometheus exporter: counters read from the data plane's maps at scrape time.

The data plane counts in per-CPU maps; nothing in user space runs per
packet. Each scrape sums the per-CPU slots and reports them as counters in
base units with the `_total` suffix, following Prometheus conventions.
"""

import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

from .abi import ABI
from .quic import EVICTION_REASONS, FAMILIES

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 9477

# enum sluice_counter names, grouped into labelled families.
PARSER_OUTCOMES = {
    "tls_sni_found": ("tls", "sni_found"), "tls_no_sni": ("tls", "no_sni"),
    "tls_truncated": ("tls", "truncated"), "tls_malformed": ("tls", "malformed"),
    "not_tls": ("tls", "not_tls"), "tls_reassembled": ("tls", "reassembled"),
    "tls_ech": ("tls", "ech"),
    "http_host_found": ("http", "host_found"), "http_no_host": ("http", "no_host"),
    "http_truncated": ("http", "truncated"),
    "proxy_headers": ("proxy_protocol", "header"),
}
FLOWS_BY_PROTO = {"flows_tls": "tls", "flows_http": "http"}
EVASION_PREFIX = "evasion_"      # enum sluice_counter's SLUICE_CNT_EVASION_*: the family's kinds


class SluiceCollector:
    """A custom collector: prometheus-client calls collect() on each scrape.

    `source` is whatever runs the data plane (a Service, or the lab): the
    collector reads its current datapath, policy, load time and reload
    counts at each scrape, so a reload needs no re-registration."""

    def __init__(self, source):
        self.source = source

    def collect(self):
        datapath = self.source.datapath
        if datapath is None:            # bound, not yet attached: nothing to report
            return
        with datapath.in_use() as loaded:
            if loaded:                  # else swapped out or stopped under this scrape: the next one reads the new
                yield from self._collect(datapath)

    def _collect(self, datapath):
        # The policy as it stands now: an escalated rule is counted under its current action.
        self.datapath = datapath
        self.policy = self.datapath.policy
        # QUIC flows are settled in user space (controller/quic_flows.py), and counted there.
        self.quic = getattr(self.source, "quic", None)
        counters = self.datapath.counters()
        yield CounterMetricFamily("sluice_packets", "Packets the XDP program saw.",
                                  value=counters["packets"])
        yield CounterMetricFamily("sluice_skipped_packets",
                                  "Packets not inspected: not TCP/UDP over IP, later fragments, bad headers.",
                                  value=counters["skipped"])
        flows = CounterMetricFamily("sluice_flows_classified", "Flows given a name (or none) by protocol.",
                                    labels=["proto"])
        for counter, proto in FLOWS_BY_PROTO.items():
            flows.add_metric([proto], counters[counter])
        flows.add_metric(["quic"], sum(self.quic.flows_by_rule.values()) if self.quic else 0)
        yield flows
        datagrams = CounterMetricFamily("sluice_quic_datagrams",
                                        "QUIC client Initial datagrams the data plane handed to the controller "
                                        "(sent), or could not (ring_full: the flow passed unjudged), or did not, "
                                        "as they repeated one sent byte for byte (repeat).",
                                        labels=["result"])
        datagrams.add_metric(["sent"], counters["quic_datagrams"])
        datagrams.add_metric(["ring_full"], counters["quic_ring_full"])
        datagrams.add_metric(["repeat"], counters["quic_repeats"])
        yield datagrams
        families = CounterMetricFamily("sluice_quic_versions",
                                       "QUIC datagrams the controller read, by version family (ietf-draft, v1, v2, "
                                       "mvfst, gquic), or grease and unknown versions (counted, not read), or a "
                                       "server's Version Negotiation (negotiation).", labels=["family"])
        for family in FAMILIES:
            families.add_metric([family], self.quic.families[family] if self.quic else 0)
        yield families
        evicted = CounterMetricFamily("sluice_quic_flows_evicted",
                                      "QUIC flows whose half-read ClientHello the controller dropped for others, "
                                      "over its bound on pending flows (count) or on the bytes they hold (memory): "
                                      "each passed unjudged.", labels=["reason"])
        for reason in EVICTION_REASONS:
            evicted.add_metric([reason], self.quic.evicted[reason] if self.quic else 0)
        yield evicted
        outcomes = CounterMetricFamily("sluice_parser_outcomes", "Payload packets by parser and outcome.",
                                       labels=["parser", "outcome"])
        for counter, labels in PARSER_OUTCOMES.items():
            outcomes.add_metric(list(labels), counters[counter])
        for outcome in ("sni_found", "no_sni", "ech", "malformed", "gave_up", "another_hello"):
            outcomes.add_metric(["quic", outcome], self.quic.outcomes[outcome] if self.quic else 0)
        yield outcomes
        yield from self._fragment_families(counters)
        tunnelled = CounterMetricFamily("sluice_tunnelled_packets",
                                        "Encapsulated packets by kind (ipip, gre, gtpu, vxlan, qinq) and outcome: "
                                        "opened (the flow inside judged), unread (it carries no TCP or UDP over IP), "
                                        "malformed (passed unread), closed (a kind the policy does not open).",
                                        labels=["kind", "outcome"])
        for labels, value in self.datapath.tunnel_counters().items():
            tunnelled.add_metric(list(labels), value)
        yield tunnelled
        evasions = CounterMetricFamily("sluice_evasion_detected",
                                       "Client segments of flows still inspected that the server would not "
                                       "keep as they came (bpf/receiver.h), by kind; forged_server: segments in "
                                       "the server's name that came in on the client's interface.",
                                       labels=["kind"])
        for name, value in counters.items():
            if name.startswith(EVASION_PREFIX):
                evasions.add_metric([name.removeprefix(EVASION_PREFIX)], value)
        yield evasions
        yield CounterMetricFamily("sluice_low_ttl_confirmed",
                                  "Server ACKs that confirmed client bytes held tentatively for their low TTL "
                                  "(bpf/tentative.h): the server received them, and they were read.",
                                  value=counters["low_ttl_confirmed"])
        yield CounterMetricFamily("sluice_flows_gave_up",
                                  "Flows whose inspection window ran out without a name.",
                                  value=counters["gave_up"])
        yield CounterMetricFamily("sluice_flows_expired", "Idle flows seen again and inspected afresh.",
                                  value=counters["flows_expired"])
        yield CounterMetricFamily("sluice_flows_reopened",
                                  "Known flows whose 5-tuple a new connection took over: its client's data came "
                                  "at the stream start of a SYN held until then (bpf/flow.h); inspected afresh.",
                                  value=counters["flows_reopened"])
        yield CounterMetricFamily("sluice_triggers_fired",
                                  "Flows whose rule's trigger (after:) was reached: its action applies from then on.",
                                  value=counters["triggers_fired"])
        yield CounterMetricFamily("sluice_stage_missed",
                                  "Tail calls into an inspection stage that found no program there (a stage "
                                  "this kernel refused, or lost pins): the packet went on without it, "
                                  "unjudged, or a blocked flow's packet dropped without its reply.",
                                  value=counters["stage_missed"])
        yield from self._rule_families()
        yield GaugeMetricFamily("sluice_policy_loaded_timestamp_seconds",
                                "When the running policy was loaded (Unix time).", value=self.source.loaded_at)
        reloads = CounterMetricFamily("sluice_policy_reloads", "Policy reloads by result.", labels=["result"])
        for result, value in self.source.reloads.items():
            reloads.add_metric([result], value)
        yield reloads
        # Walking a full flow table takes most of a second: a controller counts
        # it on its own schedule (Service.snapshot) and a scrape reports that.
        entries = getattr(self.source, "flow_entries", None)
        if entries is None:
            entries = self.datapath.flow_count()
        yield GaugeMetricFamily("sluice_flow_table_entries", "Flows in the flow table.", value=entries)
        # Nothing but the LRU removes a key, so every key created and no longer
        # present was evicted to make room.
        yield CounterMetricFamily("sluice_flow_table_evictions",
                                  "Flows evicted from the full flow table (least recently used first).",
                                  value=max(0, counters["flows_created"] - entries))
        yield GaugeMetricFamily("sluice_flow_table_capacity", "Flows the flow table holds before evicting.",
                                value=ABI.SLUICE_FLOW_MAX)
        yield GaugeMetricFamily("sluice_policy_rules", "Rules in the running policy.",
                                value=len(self.policy.rules) if self.policy else 0)
        info = InfoMetricFamily("sluice_policy", "The running policy: file and content digest.")
        info.add_metric([], {"path": self.policy.path if self.policy else "",
                             "sha256": self.source.policy_digest or ""})
        yield info
        healthy = getattr(self.source, "datapath_healthy", None)
        if healthy is not None:
            yield GaugeMetricFamily("sluice_datapath_healthy",
                                    "1 while the controller's last check found its links attached to its "
                                    "program, its pins present and every stage loaded; 0 otherwise.",
                                    value=int(healthy))

    def _fragment_families(self, counters):
        fragments = CounterMetricFamily("sluice_ip_fragments", "IP fragments (IPv4, IPv6 Fragment header) seen, "
                                        "dropped under inspection.fragments: drop, and not gathered for a TTL "
                                        "that expires before the server (low_ttl).", labels=["result"])
        fragments.add_metric(["seen"], counters["fragments"])
        fragments.add_metric(["dropped"], counters["frag_dropped"])
        fragments.add_metric(["low_ttl"], counters["frag_low_ttl"])
        yield fragments
        # Nothing but these outcomes and the LRU removes a datagram, so every
        # one started and neither ended nor present was evicted to make room.
        ended = counters["frag_reassembled"] + counters["frag_timeouts"] + counters["frag_overlaps"]
        datagrams = CounterMetricFamily(
            "sluice_fragmented_datagrams",
            "Datagrams gathered out of IP fragments: started, then reassembled (and judged), timed_out, "
            "overlapping (discarded, as the receiver discards them), oversize (past the data plane's bounds: "
            "passed unread), or evicted from the full table.", labels=["outcome"])
        for outcome, counter in (("started", "frag_datagrams"), ("reassembled", "frag_reassembled"),
                                 ("timed_out", "frag_timeouts"), ("overlapping", "frag_overlaps"),
                                 ("oversize", "frag_oversize")):
            datagrams.add_metric([outcome], counters[counter])
        datagrams.add_metric(["evicted"], max(0, counters["frag_datagrams"] - ended - self.datapath.fragment_count()))
        yield datagrams

    def _rule_families(self):
        labels = ["rule", "action", "mode"]
        direction_labels = labels + ["direction"]
        flows = CounterMetricFamily("sluice_rule_flows", "Flows classified under a rule.", labels=labels)
        # What a block rule sent its clients, by method (bpf/block_reply.h).
        answers = {
            "resets": CounterMetricFamily("sluice_rule_resets", "TCP RSTs sent to the clients of flows a block "
                                          "rule resets (method reset, or page for other than plain HTTP).",
                                          labels=labels),
            "pages": CounterMetricFamily("sluice_rule_pages", "HTTP 451 pages sent to the clients of flows a "
                                         "block rule answers (method page).", labels=labels),
        }
        families = {
            "packets": CounterMetricFamily("sluice_rule_packets", "Packets judged under a rule.",
                                           labels=direction_labels),
            "bytes": CounterMetricFamily("sluice_rule_bytes", "Bytes judged under a rule.",
                                         labels=direction_labels),
            "dropped_packets": CounterMetricFamily(
                "sluice_rule_dropped_packets", "Packets dropped: block, policer, or shaping horizon.",
                labels=direction_labels),
            "dropped_bytes": CounterMetricFamily("sluice_rule_dropped_bytes", "Bytes dropped.",
                                                 labels=direction_labels),
            "delayed_packets": CounterMetricFamily(
                "sluice_rule_delayed_packets", "Packets given a later departure time (shape, delay).",
                labels=direction_labels),
        }
        for rule_id, stats in self.datapath.rule_stats().items():
            rule = self.policy.rule_by_id(rule_id) if self.policy and rule_id else None
            label_values = ([rule.name, rule.action, "monitor" if rule.monitor else "enforce"]
                            if rule else ["", "none", ""])
            flows.add_metric(label_values, stats["flows"] + (self.quic.flows_by_rule[rule_id] if self.quic else 0))
            for field, family in answers.items():
                family.add_metric(label_values, stats[field])
            for direction in ("up", "down"):
                for field, family in families.items():
                    family.add_metric(label_values + [direction], stats[direction][field])
        yield flows
        yield from answers.values()
        yield from families.values()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_args):
        pass


def bind(address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT) -> ThreadingWSGIServer:
    """The exporter's listening socket, bound before anything is attached: a
    port in use or an address not ours is found (OSError) while nothing has
    changed yet."""
    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return make_server(address, port, make_wsgi_app(REGISTRY), Server, handler_class=_QuietHandler)


def serve(source, server: ThreadingWSGIServer) -> SluiceCollector:
    """Register the collector and answer /metrics on the bound server."""
    collector = SluiceCollector(source)
    REGISTRY.register(collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return collector
