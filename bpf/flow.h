/* SPDX-License-Identifier: GPL-2.0-only */
/* flow.h - one flow table entry for both directions of a connection.
 *
 * The key stores the (address, port) end that sorts lower first, so a
 * packet and its reply find the same entry; hi_is_sender records which end
 * sent the packet in hand.
 */
#ifndef SLUICE_FLOW_H
#define SLUICE_FLOW_H

#include "maps.h"
#include "common.h"
#include "parsing_helpers.h"

/* Refresh last_seen at most every idle/16: the idle timeout stays accurate to
 * about 6%, and a busy flow does not write its shared entry on every packet. */
#define FLOW_REFRESH_SHIFT 4

/* -1, 0 or 1 as endpoint a sorts below, equal to or above endpoint b. */
static __always_inline int flow_compare_endpoints(const __u8 *a_addr, __be16 a_port,
						  const __u8 *b_addr, __be16 b_port)
{
	/* Any total order will do, as long as both directions agree on it; two
	 * 64-bit words compare faster than sixteen bytes. */
#pragma unroll
	for (int i = 0; i < 2; i++) {
		__u64 a, b;
		__builtin_memcpy(&a, a_addr + 8 * i, 8);
		__builtin_memcpy(&b, b_addr + 8 * i, 8);
		if (a != b)
			return a < b ? -1 : 1;
	}
	return a_port == b_port ? 0 : (a_port < b_port ? -1 : 1);
}

/* Fill key from pkt; returns 1 when the sender is the key's hi end. */
static __always_inline int flow_make_key(const struct packet_info *pkt, struct flow_key *key)
{
	int sender_is_hi = flow_compare_endpoints(pkt->saddr, pkt->sport, pkt->daddr, pkt->dport) > 0;

	if (sender_is_hi) {
		__builtin_memcpy(key->addr_lo, pkt->daddr, 16);
		__builtin_memcpy(key->addr_hi, pkt->saddr, 16);
		key->port_lo = pkt->dport;
		key->port_hi = pkt->sport;
	} else {
		__builtin_memcpy(key->addr_lo, pkt->saddr, 16);
		__builtin_memcpy(key->addr_hi, pkt->daddr, 16);
		key->port_lo = pkt->sport;
		key->port_hi = pkt->dport;
	}
	key->l4proto = pkt->l4proto;
	return sender_is_hi;
}

static __always_inline int flow_is_idle(const struct flow_state *flow, __u64 now,
					const struct sluice_config *cfg)
{
	return time_since(now, flow->last_seen_ns) > cfg->flow_idle_ns;
}

static __always_inline void flow_touch(struct flow_state *flow, __u64 now,
				       const struct sluice_config *cfg)
{
	if (time_since(now, flow->last_seen_ns) > cfg->flow_idle_ns >> FLOW_REFRESH_SHIFT)
		flow->last_seen_ns = now;
}

static __always_inline int flow_is_bare_syn(const struct packet_info *pkt)
{
	return (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* A fresh entry for a flow seen for the first time, or seen again after it
 * idled out. The sender of an opening packet (a bare SYN, a QUIC client
 * Initial) is known to be the client. */
static __always_inline struct flow_state *flow_start(struct flow_key *key, int sender_is_hi,
						     int opening, const struct packet_info *pkt, __u64 now)
{
	struct flow_state fresh = {};
	__u32 seq = pkt->seq;

	fresh.last_seen_ns = now;
	fresh.state = SLUICE_FLOW_INSPECTING;
	fresh.client_known = opening;
	fresh.opened_by_client = opening;
	/* A SYN takes one sequence number: the client's stream starts after it.
	 * Without a SYN, the stream starts at the first payload seen. */
	fresh.stream_base = opening ? seq + 1 : seq;
	fresh.client_is_hi = opening ? sender_is_hi : 0;
	/* The path the client's segments take: a segment sent to expire
	 * sooner shows a lower TTL (receiver.h). */
	fresh.syn_ttl = opening ? pkt->ttl : 0;
	if (flows.update(key, &fresh) < 0)
		return 0;
	return flows.lookup(key);
}

/* The flow a TCP segment belongs to, opened or restarted as its packet
 * says; 0 if the packet passes without one. */
static __always_inline struct flow_state *flow_open_tcp(const struct packet_info *pkt, struct flow_key *key,
							int sender_is_hi, const struct sluice_config *cfg)
{
	int bare_syn = flow_is_bare_syn(pkt);
	__u64 now = coarse_now_ns(cfg);
	struct flow_state *flow = flows.lookup(key);
	int new_key = !flow;

	if (flow && flow_is_idle(flow, now, cfg)) {
		counter_inc(SLUICE_CNT_FLOWS_EXPIRED);
		flow = 0;
	}
	/* A bare SYN opens a new connection even if its 5-tuple was used
	 * before: the old verdict must not outlive the old connection. */
	if (flow && bare_syn)
		flow = 0;
	if (flow) {
		flow_touch(flow, now, cfg);
		return flow;
	}
	/* Pure ACKs of a flow that was open before sluice started are not
	 * worth an entry; its next payload packet makes one. */
	if (pkt->payload_len == 0 && !bare_syn)
		return 0;
	flow = flow_start(key, sender_is_hi, bare_syn, pkt, now);
	if (flow && new_key)
		counter_inc(SLUICE_CNT_FLOWS_CREATED);
	return flow;
}

#endif /* SLUICE_FLOW_H */
