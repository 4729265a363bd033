/* SPDX-License-Identifier: GPL-2.0-only */
/* sluice_tc.c - give the packets of shaped and delayed flows a departure
 * time, at tc egress.
 *
 * The flows were classified by sluice_xdp on ingress; this program only
 * reads their verdict. It sets skb->tstamp (Earliest Departure Time) and
 * the fq qdisc on the device holds each packet until then. A packet due
 * later than its rule's horizon is dropped instead, so that a sender that
 * ignores the pacing cannot fill fq's queues.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "sluice_abi.h"
#include "parsing_helpers.h"
#include "maps.h"
#include "common.h"
#include "flow.h"
#include "rate_limit.h"
#include "verdict.h"
#include "block_reply.h"

static __always_inline void account_egress(__u32 rule_id, __u32 dir, __u32 bytes, int outcome)
{
	struct rule_stats *stats = rule_stats.lookup(&rule_id);

	if (!stats)
		return;
	struct direction_stats *d = &stats->dir[dir & (SLUICE_DIRS - 1)];
	if (outcome == OUTCOME_DROPPED) {
		d->dropped_packets += 1;
		d->dropped_bytes += bytes;
	} else if (outcome == OUTCOME_DELAYED) {
		d->delayed_packets += 1;
	}
}

/* When a delayed packet may leave: its delay plus up to jitter. fq keeps a
 * flow's packets in order, so jitter never reorders them. */
static __always_inline __u64 delayed_departure(const struct rule_info *rule, __u64 now)
{
	__u64 jitter = rule->jitter_ns ? bpf_get_prandom_u32() % rule->jitter_ns : 0;

	return now + rule->delay_ns + jitter;
}

/* What the packet costs on the wire, where the rate applies. A GSO packet
 * (a local sender's TSO, or segments GRO merged on ingress) leaves as
 * gso_segs frames, each with its own headers; skb->len counts them once,
 * which would let a shaped flow exceed its rate by the headers' share. */
static __always_inline __u32 wire_bytes(const struct __sk_buff *skb, const struct packet_info *pkt)
{
	__u32 segs = skb->gso_segs;

	return segs > 1 ? skb->len + (segs - 1) * pkt->payload_offset : skb->len;
}

int sluice_tc_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct packet_info pkt_on_stack = {}, *pkt = &pkt_on_stack;
	struct flow_id id;
	int sender_is_hi;

	struct sluice_config *cfg = config_live();
	if (!cfg)
		return TC_ACT_OK;
	/* A tunnelled flow is shaped by its outer packets, as XDP polices them. */
	if (parse_packet(data, data_end, skb->len, pkt, ~cfg->closed_tunnels) < 0 || pkt->l4proto != IPPROTO_TCP)
		return TC_ACT_OK;
	struct flow_state *flow = flow_lookup(pkt, &id, &sender_is_hi);
	if (!flow || flow->state != SLUICE_FLOW_CLASSIFIED)
		return TC_ACT_OK;
	if (flow->action != SLUICE_ACTION_SHAPE && flow->action != SLUICE_ACTION_DELAY)
		return TC_ACT_OK;
	__u32 rule_id = flow->rule_id;
	struct rule_info *rule = rule_of(cfg, rule_id);
	if (!rule)
		return TC_ACT_OK;

	/* fq compares departure times with the monotonic clock, which now_ns()
	 * reads unless a test has frozen the data plane's time. */
	__u64 now = now_ns(cfg);
	__u32 dir = verdict_packet_direction(flow, sender_is_hi) & (SLUICE_DIRS - 1);
	__u32 bytes = wire_bytes(skb, pkt);
	__u64 departure = now;
	int keep = 1;
	if (flow->action == SLUICE_ACTION_DELAY) {
		departure = delayed_departure(rule, now);
		keep = departure - now <= rule->horizon_ns;
	} else {
		__u64 *clock = rate_clock(flow, flow_client_address(flow, pkt, sender_is_hi), rule, dir);
		if (clock)
			keep = rate_pace(clock, &rule->limit[dir], bytes, now, rule->horizon_ns, &departure);
	}
	if (!keep) {
		account_egress(rule_id, dir, bytes, OUTCOME_DROPPED);
		return TC_ACT_SHOT;
	}
	if (departure > now) {
		skb->tstamp = departure;
		account_egress(rule_id, dir, bytes, OUTCOME_DELAYED);
	}
	return TC_ACT_OK;
}

/* On tc ingress of every interface, where a block method answers clients:
 * XDP cannot send two packets for one, so the reset of the server is sent
 * from here (block_reply.h). */
int sluice_tc_reset(struct __sk_buff *skb)
{
	return reply_reset_server(skb);
}
