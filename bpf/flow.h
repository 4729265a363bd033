/* SPDX-License-Identifier: GPL-2.0-only */
/* flow.h - one flow table entry for both directions of a connection,
 * found by its flow_id (flow_key.h): at once for IPv4, through the number
 * ipv6_flows holds for IPv6.
 */
#ifndef SLUICE_FLOW_H
#define SLUICE_FLOW_H

#include "maps.h"
#include "common.h"
#include "parsing_helpers.h"
#include "flow_key.h"

/* Refresh last_seen at most every idle/16: the idle timeout stays accurate to
 * about 6%, and a busy flow does not write its shared entry on every packet. */
#define FLOW_REFRESH_SHIFT 4

/* A flow's idle clock, in jiffies: every known flow's packet reads it, and
 * bpf_jiffies64() the verifier inlines to one load, where even the coarse
 * clock cached per CPU (coarse_now_ns() in common.h) cost a fifth of an
 * empty program (bench/packet_pieces.py). An idle timeout needs no finer
 * time than a tick. A test's frozen clock is read in ticks of jiffy_ns. */
static __always_inline __u64 flow_now(const struct sluice_config *cfg)
{
	return cfg->clock_ns ? cfg->clock_ns / cfg->jiffy_ns : bpf_jiffies64();
}

/* An IPv6 flow's id, as ipv6_flows numbered it; 0 if it has no number
 * (never seen, or forgotten). */
static __always_inline int flow_is_numbered(const struct flow_id *id)
{
	return !id->ipv6 || id->lo || id->hi;
}

/* Fill id, the flows table's key of pkt's flow; returns 1 when the sender
 * is the key's hi end. An IPv6 flow ipv6_flows has no number for gets an
 * id that is not numbered (flow_start() numbers it). */
static __always_inline int flow_make_id(const struct packet_info *pkt, struct flow_id *id)
{
	if (pkt->is_v6) {
		struct flow_key key = {};
		int sender_is_hi = flow_make_key(pkt, &key);
		struct flow_id *numbered = ipv6_flows.lookup(&key);

		if (numbered) {
			__builtin_memcpy(id, numbered, sizeof(*id));
		} else {
			__builtin_memset(id, 0, sizeof(*id));
			id->ipv6 = 1;
		}
		return sender_is_hi;
	}
	return flow_make_ipv4_id(pkt, id);
}

/* Number pkt's IPv6 flow (id: not numbered yet) in ipv6_flows; 0 on success. */
static __always_inline int flow_number_ipv6(const struct packet_info *pkt, struct flow_id *id)
{
	struct flow_key key = {};
	__u32 zero = 0;
	__u64 *count = ipv6_flow_numbers.lookup(&zero);

	if (!count)
		return -1;
	flow_make_key(pkt, &key);
	/* Atomic although the count is this CPU's own: a program run by
	 * BPF_PROG_TEST_RUN may be preempted by another on the same CPU. */
	__u64 number = __sync_fetch_and_add(count, 1) + 1;
	id->lo = (__u32)number;
	id->hi = number >> 32;
	id->cpu = bpf_get_smp_processor_id();
	id->port_lo = key.port_lo;
	id->port_hi = key.port_hi;
	id->l4proto = key.l4proto;
	id->ipv6 = 1;
	if (ipv6_flows.insert(&key, id) == 0)
		return 0;
	/* Another CPU numbered the flow meanwhile: its number stands. */
	struct flow_id *numbered = ipv6_flows.lookup(&key);
	if (!numbered)
		return -1;
	__builtin_memcpy(id, numbered, sizeof(*id));
	return 0;
}

/* The entry of pkt's flow, 0 if it has none; id: its key (flow_make_id()). */
static __always_inline struct flow_state *flow_lookup(const struct packet_info *pkt, struct flow_id *id,
						      int *sender_is_hi)
{
	*sender_is_hi = flow_make_id(pkt, id);
	return flow_is_numbered(id) ? flows.lookup(id) : 0;
}

/* The address of the flow's client (16 bytes, IPv4 mapped), of which pkt
 * is a packet. */
static __always_inline const __u8 *flow_client_address(const struct flow_state *flow,
						       const struct packet_info *pkt, int sender_is_hi)
{
	return sender_is_hi == flow->client_is_hi ? pkt->saddr : pkt->daddr;
}

/* ...and from the flow's key. */
static __always_inline const __u8 *flow_key_client_address(const struct flow_state *flow,
							   const struct flow_key *key)
{
	return flow->client_is_hi ? key->addr_hi : key->addr_lo;
}

/* now: flow_now(). A last_seen ahead of now by a tick is another CPU's read
 * of jiffies, ordered before this one's; one ahead by more than the idle
 * time cannot be a read of this clock at all (an entry pinned by a sluice
 * that kept nanoseconds there): either way round, it is idle. */
static __always_inline int flow_is_idle(const struct flow_state *flow, __u64 now,
					const struct sluice_config *cfg)
{
	__u64 elapsed = now - flow->last_seen;

	return elapsed > cfg->flow_idle_jiffies && -elapsed > cfg->flow_idle_jiffies;
}

static __always_inline void flow_touch(struct flow_state *flow, __u64 now,
				       const struct sluice_config *cfg)
{
	if (time_since(now, flow->last_seen) > cfg->flow_idle_jiffies >> FLOW_REFRESH_SHIFT)
		flow->last_seen = now;
}

static __always_inline int flow_is_bare_syn(const struct packet_info *pkt)
{
	return (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* A fresh entry for a flow seen for the first time, or seen again after it
 * idled out. The sender of an opening packet (a bare SYN, a QUIC client
 * Initial) is known to be the client. syn_seq, syn_ttl: the opening SYN's,
 * if opening is a TCP SYN (the packet in hand, or one held: flow_hold_syn()). */
static __always_inline struct flow_state *flow_start(struct flow_id *id, int sender_is_hi,
						     int opening, const struct packet_info *pkt, __u64 now,
						     __u32 syn_seq, __u8 syn_ttl)
{
	struct flow_state fresh = {};

	if (!flow_is_numbered(id) && flow_number_ipv6(pkt, id) < 0)
		return 0;
	fresh.last_seen = now;
	fresh.state = SLUICE_FLOW_INSPECTING;
	fresh.client_known = opening;
	fresh.opened_by_client = opening;
	/* A SYN takes one sequence number: the client's stream starts after it.
	 * Without a SYN, the stream starts at the first payload seen. */
	fresh.stream_base = opening ? syn_seq + 1 : pkt->seq;
	fresh.client_is_hi = opening ? sender_is_hi : 0;
	/* The path the client's segments take: a segment sent to expire
	 * sooner shows a lower TTL (receiver.h). */
	fresh.ttl_floor = opening ? syn_ttl : 0;
	if (flows.update(id, &fresh) < 0)
		return 0;
	return flows.lookup(id);
}

/* Is pkt, a bare SYN, the one that opened the flow (sent again)? */
static __always_inline int flow_is_own_syn(const struct flow_state *flow, const struct packet_info *pkt,
					   int sender_is_hi)
{
	return flow->opened_by_client && sender_is_hi == flow->client_is_hi && pkt->seq + 1 == flow->stream_base;
}

/* A SYN of another connection on a flow already known. The server takes
 * it for a new connection only once the old one is gone: in ESTABLISHED,
 * Linux answers a SYN with a challenge ACK and keeps the connection (RFC
 * 5961 4.2), and a decoy SYN (a wrong checksum, a TTL that expires on the
 * way) never reaches it. Taken at its word, a SYN sent with another
 * sequence number would move the flow's stream start away from the real
 * one: the real hello, refused as out of the window, would go unread (a
 * TCB desynchronisation, as Geneva's strategies make), and a blocked
 * flow's hello sent again would be let through. So the SYN is held: the
 * flow goes on as it was, and starts afresh only when the same end's data
 * comes at the held SYN's stream start (flow_takes_held_syn()). */
static __always_inline void flow_hold_syn(struct flow_state *flow, const struct packet_info *pkt, int sender_is_hi)
{
	flow->held_syn_seq = pkt->seq;
	flow->held_syn_ttl = pkt->ttl;
	flow->receiver = (flow->receiver & ~SLUICE_RECEIVER_SYN_HELD_HI) | SLUICE_RECEIVER_SYN_HELD |
			 (sender_is_hi ? SLUICE_RECEIVER_SYN_HELD_HI : 0);
}

/* Does pkt begin the stream of the connection a held SYN opened? */
static __always_inline int flow_takes_held_syn(const struct flow_state *flow, const struct packet_info *pkt,
					       int sender_is_hi)
{
	return (flow->receiver & SLUICE_RECEIVER_SYN_HELD) && pkt->payload_len && !(pkt->tcp_flags & TCP_FLAG_SYN) &&
	       !!(flow->receiver & SLUICE_RECEIVER_SYN_HELD_HI) == sender_is_hi && pkt->seq == flow->held_syn_seq + 1;
}

/* What flow_open_tcp() made of a packet, besides its flow. */
enum flow_opening {
	FLOW_GOES_ON = 0,	/* a packet of the flow as it was, or of none */
	FLOW_OPENS,		/* its SYN, or the data that begins a held SYN's connection:
				 * where rules for any flow judge it */
	FLOW_SYN_HELD,		/* a SYN held (flow_hold_syn()): no flow to judge it by */
};

/* The interface a client's packets come in on, as a flow keeps it
 * (flow_state.client_arm): its ifindex, mod 2^16. Two interfaces whose
 * numbers agree there are one to receiver_server_segment_forged(), which
 * then does as on one interface; ifindexes are handed out in order, so it
 * takes 65536 of them made between the two. */
static __always_inline __u16 flow_arm(__u32 ifindex)
{
	return (__u16)ifindex;
}

/* A flow the client's SYN opened (or the data of a held SYN's connection,
 * which its client sends the same way): the interface it came in on. Read
 * only here, not for every packet: it is two or three loads. */
static __always_inline struct flow_state *flow_note_client_arm(struct flow_state *flow, struct ctx_buff *ctx)
{
	if (flow)
		flow->client_arm = flow_arm(ctx_ifindex(ctx));
	return flow;
}

/* The flow a TCP segment belongs to, opened or restarted as its packet
 * says; 0 if the packet passes without one, or is a SYN held. id: its key
 * (flow_make_id()); ctx: the packet's, for the interface it came in on;
 * *opening: enum flow_opening. */
static __always_inline struct flow_state *flow_open_tcp(struct ctx_buff *ctx, const struct packet_info *pkt,
							struct flow_id *id, int sender_is_hi,
							const struct sluice_config *cfg, int *opening)
{
	int bare_syn = flow_is_bare_syn(pkt);
	__u64 now = flow_now(cfg);
	struct flow_state *flow = flow_is_numbered(id) ? flows.lookup(id) : 0;
	int new_key = !flow;

	*opening = FLOW_GOES_ON;
	if (flow && flow_is_idle(flow, now, cfg)) {
		counter_inc(SLUICE_CNT_FLOWS_EXPIRED);
		flow = 0;
	}
	if (flow && bare_syn && !flow_is_own_syn(flow, pkt, sender_is_hi)) {
		flow_hold_syn(flow, pkt, sender_is_hi);
		*opening = FLOW_SYN_HELD;
		return 0;
	}
	/* The held SYN's connection is real: the 5-tuple was used before, and
	 * the old verdict must not outlive the old connection. */
	if (flow && flow_takes_held_syn(flow, pkt, sender_is_hi)) {
		struct flow_key key = {};
		flow_make_key(pkt, &key);
		streams.delete(&key);
		counter_inc(SLUICE_CNT_FLOWS_REOPENED);
		*opening = FLOW_OPENS;
		return flow_note_client_arm(flow_start(id, sender_is_hi, 1, pkt, now, flow->held_syn_seq,
						       flow->held_syn_ttl), ctx);
	}
	if (flow) {
		flow_touch(flow, now, cfg);
		return flow;
	}
	/* Pure ACKs of a flow that was open before sluice started are not
	 * worth an entry; its next payload packet makes one. */
	if (pkt->payload_len == 0 && !bare_syn)
		return 0;
	*opening = bare_syn ? FLOW_OPENS : FLOW_GOES_ON;
	flow = flow_start(id, sender_is_hi, bare_syn, pkt, now, pkt->seq, pkt->ttl);
	if (bare_syn)
		flow_note_client_arm(flow, ctx);
	if (flow && new_key)
		counter_inc(SLUICE_CNT_FLOWS_CREATED);
	return flow;
}

#endif /* SLUICE_FLOW_H */
