/* SPDX-License-Identifier: GPL-2.0-only */
/* rate_limit.h - the policer (throttle) and the pacer (shape), both keyed on
 * one "next" time per direction.
 *
 * Policer: a token bucket of depth burst at rate r, in its GCRA form. The
 * clock holds when the bucket would be full again; a packet of n bytes
 * costs n/r of time. It conforms when, after paying, the bucket is at most
 * burst behind now; otherwise it is dropped and costs nothing. Over any
 * interval T, exactly burst + r*T bytes conform at most.
 *
 * Pacer: Earliest Departure Time. The clock holds when the next packet may
 * leave; each packet departs at max(clock, now) and pushes the clock on by
 * its cost. fq then holds it until then (skb->tstamp). A packet whose last
 * byte would leave later than the rule's horizon is dropped.
 *
 * One clock may be shared by several CPUs (client and rule scope, and the
 * two directions of a flow arriving on different CPUs). No lock is needed:
 * the whole state is one 64-bit word, updated by compare-and-swap; a CPU
 * that loses the race recomputes from the winner's value. LRU hash values
 * cannot hold a bpf_spin_lock, so this also lets flow-scope clocks live in
 * the flow table itself.
 */
#ifndef SLUICE_RATE_LIMIT_H
#define SLUICE_RATE_LIMIT_H

#include "maps.h"
#include "payload.h"

#define PS_PER_NS 1000
#define CLOCK_CAS_ATTEMPTS 4		/* losing four races in a row means heavy contention */

static __always_inline __u64 rate_cost_ns(const struct rate_limit *limit, __u32 bytes)
{
	return (__u64)bytes * limit->ps_per_byte / PS_PER_NS;
}

/* Police one packet under a limit (ps_per_byte set): 1 if it conforms (and
 * is charged), 0 to drop it. Under contention that outlasts the attempts
 * the packet is dropped, so the rate is never exceeded. */
static __always_inline int rate_police(__u64 *clock, const struct rate_limit *limit,
				       __u32 bytes, __u64 now)
{
	__u64 cost = rate_cost_ns(limit, bytes);
	for (int attempt = 0; attempt < CLOCK_CAS_ATTEMPTS; attempt++) {
		__u64 seen = *(volatile __u64 *)clock;
		__u64 full_at = (seen > now ? seen : now) + cost;
		if (full_at - now > limit->burst_ns)
			return 0;
		if (__sync_val_compare_and_swap(clock, seen, full_at) == seen)
			return 1;
	}
	return 0;
}

/* Pace one packet: 1 with its departure time in *departure (now if the
 * direction is unlimited), or 0 to drop it because its last byte would leave
 * later than horizon_ns from now. The horizon bounds the end, not the start:
 * a GRO aggregate costs its whole length (64 KB is 4 s at 128 kbit/s), and
 * admitted on its start it would hold the clock far past the horizon, so
 * that the queue fq keeps was no longer bounded by it. A packet that finds
 * the clock idle is always admitted, however long: there is nothing to
 * wait behind, and refusing an aggregate longer than the horizon would
 * starve the flow for as long as GRO keeps building them.
 * A dropped packet costs nothing: charged, it would hold the link idle for a
 * slot no packet uses (a third of the rate, measured, for a TCP sender at
 * 128 kbit/s that overruns a 2 s horizon). As in rate_police(), contention that
 * outlasts the attempts drops the packet. */
static __always_inline int rate_pace(__u64 *clock, const struct rate_limit *limit, __u32 bytes,
				     __u64 now, __u64 horizon_ns, __u64 *departure)
{
	*departure = now;
	if (!limit->ps_per_byte)
		return 1;
	__u64 cost = rate_cost_ns(limit, bytes);
	for (int attempt = 0; attempt < CLOCK_CAS_ATTEMPTS; attempt++) {
		__u64 seen = *(volatile __u64 *)clock;
		__u64 start = seen > now ? seen : now;
		if (start > now && start + cost - now > horizon_ns)
			return 0;
		if (__sync_val_compare_and_swap(clock, seen, start + cost) == seen) {
			*departure = start;
			return 1;
		}
	}
	return 0;
}

/* The clock of the flow's direction under the rule's scope, or 0;
 * client_address: the flow's client's (flow_client_address()). */
static __always_inline __u64 *rate_clock(struct flow_state *flow, const __u8 *client_address,
					 const struct rule_info *rule, __u32 dir)
{
	dir &= SLUICE_DIRS - 1;
	if (rule->scope == SLUICE_SCOPE_FLOW)
		return &flow->next_ns[dir];

	__u32 rule_id = flow->rule_id;
	struct rate_clocks *clocks;
	if (rule->scope == SLUICE_SCOPE_RULE) {
		clocks = rule_clocks.lookup(&rule_id);
	} else {
		struct client_clock_key client = { .rule_id = rule_id };
		__builtin_memcpy(client.client, client_address, 16);
		clocks = client_clocks.lookup(&client);
		if (!clocks) {
			struct rate_clocks fresh = {};
			client_clocks.update(&client, &fresh);
			clocks = client_clocks.lookup(&client);
		}
	}
	if (!clocks)
		return 0;
	/* Keep clang from computing the address before the null check, which
	 * the verifier refuses. */
	hide_from_compiler(clocks);
	return &clocks->next_ns[dir];
}

#endif /* SLUICE_RATE_LIMIT_H */
