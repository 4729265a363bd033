/* SPDX-License-Identifier: GPL-2.0-only */
/* maps.h - every map of the data plane, declared in one place, and nothing
 * else.
 *
 * The controller finds these by name (controller/datapath.py); their key
 * and value types come from sluice_abi.h (shared with Python) and scratch.h
 * (the data plane's own).
 *
 * Three blocks. State maps outlive any one policy: the controller pins them
 * (STATE_MAPS in controller/datapath.py; tests/test_abi.py holds the two
 * lists together), so that a reloaded policy, or a controller restarted
 * after a crash, finds the same flows and counters. The policy maps hold
 * two generations, so that a reload fills one while packets read the other
 * (policy_maps.h); the stage array, rings and scratch buffers belong to the
 * loaded programs.
 */
#ifndef SLUICE_MAPS_H
#define SLUICE_MAPS_H

#include "sluice_abi.h"
#include "scratch.h"

#ifndef SLUICE_DOMAIN_RULES_MAX
#define SLUICE_DOMAIN_RULES_MAX SLUICE_DOMAIN_RULES_DEFAULT
#endif

#ifndef SLUICE_CLIENT_PREFIXES_MAX
#define SLUICE_CLIENT_PREFIXES_MAX SLUICE_CLIENT_PREFIXES_DEFAULT
#endif

#ifndef SLUICE_DESTINATION_PREFIXES_MAX
#define SLUICE_DESTINATION_PREFIXES_MAX SLUICE_DESTINATION_PREFIXES_DEFAULT
#endif

#ifndef SLUICE_RULE_SETS_MAX
#define SLUICE_RULE_SETS_MAX SLUICE_RULE_SETS_DEFAULT
#endif

#ifndef SLUICE_BLOCK_PAGES_MAX
#define SLUICE_BLOCK_PAGES_MAX SLUICE_BLOCK_PAGES_DEFAULT
#endif

#define PAGE_BYTES 4096

/* --- state (pinned) ---------------------------------------------------- */

/* Both directions of every flow seen, least recently used evicted; one
 * table for both families, so that every stage finds a flow through one
 * map pointer (the verifier would check each stage once per table). */
BPF_TABLE("lru_hash", struct flow_id, struct flow_state, flows, SLUICE_FLOW_MAX);

/* An IPv6 flow's flow_key -> its key in flows (flow.h). When this forgets
 * a flow, its next packet numbers it afresh, and its inspection starts
 * over; its old entry is never found again, and ages out of flows. */
BPF_TABLE("lru_hash", struct flow_key, struct flow_id, ipv6_flows, SLUICE_FLOW_MAX);

/* Each CPU's count of the IPv6 flows it numbered: outlives a policy with
 * the flows, or a restarted controller would number flows again. */
BPF_PERCPU_ARRAY(ipv6_flow_numbers, __u64, 1);

/* rule id -> counters; per CPU so that no packet waits on another CPU. */
BPF_TABLE("percpu_array", __u32, struct rule_stats, rule_stats, SLUICE_MAX_RULES);

/* enum sluice_counter -> count. */
BPF_TABLE("percpu_array", __u32, __u64, counters, SLUICE_CNT_MAX);

/* enum sluice_tunnel * SLUICE_TUNNELLED_OUTCOMES + enum sluice_tunnel_outcome -> packets. */
BPF_TABLE("percpu_array", __u32, __u64, tunnel_counters, SLUICE_TUNNEL_KINDS * SLUICE_TUNNELLED_OUTCOMES);

/* Throttle and shape clocks shared by a rule's flows (rule scope), by rule id. */
BPF_TABLE("array", __u32, struct rate_clocks, rule_clocks, SLUICE_MAX_RULES);

/* ... and by the flows of one client under one rule (client scope). */
BPF_TABLE("lru_hash", struct client_clock_key, struct rate_clocks, client_clocks, SLUICE_CLIENT_CLOCKS_MAX);

/* The first client bytes of flows whose ClientHello spans segments or
 * records, by flow (tcp_stream.h); an entry lives only until the hello is
 * whole or the window runs out. */
BPF_TABLE("lru_hash", struct flow_key, struct client_stream, streams, SLUICE_STREAMS_MAX);

/* --- policy (two generations: the running policy, the next one) ------- */

/* Which generation packets are judged under (policy_maps.h): the
 * controller fills the other one, then flips this. */
BPF_ARRAY(policy_generation, __u32, 1);

/* The generation the packet in hand entered under, for the stages it is
 * tail-called into: the live one may flip meanwhile. */
BPF_PERCPU_ARRAY(packet_generations, __u32, 1);

/* Maps sized to their policy: one per generation, each an inner map of a
 * two-slot outer map indexed by generation. The inner map declared first
 * is the template the outer's slots must match (key and value types; the
 * sizes of hashes and tries may differ). */

/* name_key -> rule set id, for suffix and exact names alike. */
BPF_HASH(domain_rules, struct name_key, __u32, SLUICE_DOMAIN_RULES_MAX);
BPF_ARRAY_OF_MAPS(domain_rules_by_generation, "domain_rules", SLUICE_GENERATIONS);

/* (rule set id, client class) -> the rules that may apply, in order. */
BPF_HASH(rule_sets, struct rule_set_key, struct rule_set, SLUICE_RULE_SETS_MAX);
BPF_ARRAY_OF_MAPS(rule_sets_by_generation, "rule_sets", SLUICE_GENERATIONS);

/* Client address prefix -> client class id; the longest prefix wins. */
BPF_LPM_TRIE(client_classes, struct client_prefix, __u32, SLUICE_CLIENT_PREFIXES_MAX);
BPF_ARRAY_OF_MAPS(client_classes_by_generation, "client_classes", SLUICE_GENERATIONS);

/* Server address prefix -> destination set id; the longest prefix wins. */
BPF_LPM_TRIE(destinations, struct client_prefix, __u32, SLUICE_DESTINATION_PREFIXES_MAX);
BPF_ARRAY_OF_MAPS(destinations_by_generation, "destinations", SLUICE_GENERATIONS);

/* ALPN protocol id a rule names -> its bit in rule_info.alpn_ids. */
BPF_HASH(alpn_ids, struct alpn_key, __u32, SLUICE_ALPN_IDS_MAX);
BPF_ARRAY_OF_MAPS(alpn_ids_by_generation, "alpn_ids", SLUICE_GENERATIONS);

/* rule id -> the 451 response of a block rule with method page (block_reply.h). */
BPF_HASH(block_pages, __u32, struct block_page, SLUICE_BLOCK_PAGES_MAX);
BPF_ARRAY_OF_MAPS(block_pages_by_generation, "block_pages", SLUICE_GENERATIONS);

/* Fixed-size arrays hold their generations side by side, which costs the
 * established path no lookup of an outer map: */

/* generation * SLUICE_MAX_RULES + rule id -> what the rule does. */
BPF_ARRAY(rules, struct rule_info, SLUICE_GENERATIONS * SLUICE_MAX_RULES);

/* generation -> that generation's sluice_config. */
BPF_ARRAY(config, struct sluice_config, SLUICE_GENERATIONS);

/* --- the programs' own (one loaded data plane's) ----------------------- */

/* enum sluice_stage -> inspection stage program (the controller pins it
 * too, but per compiled policy: a pinned XDP link keeps its stages). */
BPF_PROG_ARRAY(stages, SLUICE_STAGE_MAX);

/* classification_event, one per flow, when SLUICE_CFG_EVENTS is set. */
BPF_RINGBUF_OUTPUT(events, SLUICE_EVENT_RING_BYTES / PAGE_BYTES);

/* quic_datagram, for each client Initial of a young QUIC flow. */
BPF_RINGBUF_OUTPUT(quic_datagrams, SLUICE_QUIC_RING_BYTES / PAGE_BYTES);

/* Signatures of the datagrams each QUIC flow handed over (quic.h). */
BPF_TABLE("lru_hash", struct flow_id, struct quic_signatures, quic_signatures, SLUICE_QUIC_SIGNED_FLOWS_MAX);

/* The QUIC versions the controller reads, in network byte order, each of
 * value 1: controller/quic.py's VERSIONS, filled in at load. */
BPF_HASH(quic_versions, __be32, __u8, SLUICE_QUIC_VERSIONS_MAX);

/* Never read or written: bcc gives a ring buffer no value type, so this
 * one-entry map hands the controller quic_datagram's layout from
 * sluice_abi.h (and tests/test_abi.py a BTF type to check it against). */
BPF_ARRAY(quic_datagram_layout, struct quic_datagram, 1);

/* Where an event is built before it is copied to the ring. Declaring the
 * struct as a map value also gives the controller its layout (the map's
 * value type), straight from sluice_abi.h. */
BPF_PERCPU_ARRAY(event_buffers, struct classification_event, 1);

/* Never written: the zeroed value new streams are copied from. */
BPF_ARRAY(empty_streams, struct client_stream, 1);

/* Where a stream is read as the server's application reads it. */
BPF_PERCPU_ARRAY(stream_views, struct stream_view, 1);

/* Where a reassembled ClientHello is gathered out of its records. */
BPF_PERCPU_ARRAY(handshake_buffers, struct handshake_scratch, 1);

/* Each CPU's coarse time at its last jiffy (coarse_now_ns() in common.h). */
BPF_PERCPU_ARRAY(coarse_clocks, struct coarse_clock, 1);

/* One scratch buffer per CPU for the payload being inspected. */
BPF_PERCPU_ARRAY(payload_buffers, struct payload_scratch, 1);

/* IP datagrams being gathered from their fragments (ip_frag.h). */
BPF_TABLE("lru_hash", struct frag_key, struct frag_datagram, frags, SLUICE_FRAGS_MAX);

/* Never written: the zeroed value new datagrams are copied from. */
BPF_ARRAY(empty_frags, struct frag_datagram, 1);

/* The fragment in hand, and the whole datagram once gathered, per CPU. */
BPF_PERCPU_ARRAY(frag_buffers, struct frag_scratch, 1);

/* --- sluice replay's (replay_driver.c) --------------------------------- */

/* The chunk of a capture being replayed, written by the controller through a memory mapping. */
BPF_F_TABLE("array", __u32, struct replay_chunk, replay_chunk, 1, BPF_F_MMAPABLE);

/* The driver's place in its batch; mapped by the controller too. */
BPF_F_TABLE("array", __u32, struct replay_batch, replay_batch, 1, BPF_F_MMAPABLE);

/* 0 -> sluice_xdp, the program the driver hands each frame to. */
BPF_PROG_ARRAY(replay_target, 1);

#endif /* SLUICE_MAPS_H */
