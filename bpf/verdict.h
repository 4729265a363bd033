/* SPDX-License-Identifier: GPL-2.0-only */
/* verdict.h - settle a flow under a rule, count it, and apply its action:
 * pass, drop or answer (block: see block_reply.h), drop silently (freeze),
 * or police (throttle), from the start or once the rule's trigger fires.
 * Shape and delay pass here and take effect at tc egress (sluice_tc.c).
 */
#ifndef SLUICE_VERDICT_H
#define SLUICE_VERDICT_H

#include "maps.h"
#include "common.h"
#include "payload.h"
#include "rate_limit.h"

enum packet_outcome {
	OUTCOME_PASSED = 0,
	OUTCOME_DROPPED,
	OUTCOME_DELAYED,
};

static __always_inline void verdict_account(__u32 rule_id, __u32 dir, __u32 bytes, int outcome)
{
	struct rule_stats *stats = rule_stats.lookup(&rule_id);

	if (!stats)
		return;
	struct direction_stats *d = &stats->dir[dir & (SLUICE_DIRS - 1)];
	d->packets += 1;
	d->bytes += bytes;
	if (outcome == OUTCOME_DROPPED) {
		d->dropped_packets += 1;
		d->dropped_bytes += bytes;
	}
}

/* One more flow settled under rule_id (0: none). */
static __always_inline void verdict_count_flow(__u32 rule_id)
{
	struct rule_stats *stats = rule_stats.lookup(&rule_id);

	if (stats)
		stats->flows += 1;
}

/* Every packet that no rule judges is counted under rule id 0, and passes. */
static __always_inline int verdict_pass_unjudged(__u32 frame_len)
{
	verdict_account(0, SLUICE_DIR_UP, frame_len, OUTCOME_PASSED);
	return CTX_ACT_OK;
}

static __always_inline __u32 verdict_packet_direction(const struct flow_state *flow, int sender_is_hi)
{
	return flow->client_known && sender_is_hi != flow->client_is_hi ?
		       SLUICE_DIR_DOWN : SLUICE_DIR_UP;
}

/* Does a throttled flow's packet conform to its rule's rate in its direction? */
static __always_inline int verdict_throttle_conforms(struct flow_state *flow, const __u8 *client_address,
					     __u32 dir, __u32 bytes, const struct sluice_config *cfg)
{
	struct rule_info *rule = rule_of(cfg, flow->rule_id);

	if (!rule)
		return 1;
	const struct rate_limit *limit = &rule->limit[dir & (SLUICE_DIRS - 1)];
	/* A direction the rule leaves unlimited finds no clock and reads no
	 * time: the precise clock alone costs 1.35 empty XDP programs
	 * (bench/packet_pieces.py), a client-scope clock a hash lookup. */
	if (!limit->ps_per_byte)
		return 1;
	__u64 *clock = rate_clock(flow, client_address, rule, dir);
	if (!clock)
		return 1;
	/* A bucket deep enough for the coarse clock's lumps reads it (enum
	 * sluice_rate_clock): a per-CPU value refreshed once a jiffy. */
	__u64 now = limit->clock == SLUICE_CLOCK_COARSE ? coarse_now_ns(cfg) : now_ns(cfg);
	return rate_police(clock, limit, bytes, now);
}

/* Count a packet of a flow whose rule waits for its trigger; once the count
 * of the trigger's direction would pass trigger_at, the rule's action
 * applies, from this packet on (so at most trigger_at bytes or packets
 * pass untouched). tc egress (shape, delay) reads the same flow->action. */
static __always_inline void verdict_count_toward_trigger(struct flow_state *flow, __u32 dir, __u32 payload_len,
							 const struct sluice_config *cfg)
{
	__u32 rule_id = flow->rule_id;
	struct rule_info *rule = rule_of(cfg, rule_id);

	if (!rule) {
		flow->trigger_pending = 0;
		return;
	}
	if (dir != rule->trigger_direction)
		return;
	__u64 counted = (__u64)flow->trigger_count +
			(rule->trigger_unit == SLUICE_TRIGGER_PACKETS ? 1 : payload_len);
	if (counted <= rule->trigger_at) {
		flow->trigger_count = counted;
		return;
	}
	flow->trigger_pending = 0;
	flow->action = rule->flags & SLUICE_RULE_MONITOR ? SLUICE_ACTION_NONE : rule->action;
	counter_inc(SLUICE_CNT_TRIGGERS_FIRED);
	/* A flow judged at its opening packet and still read for a name:
	 * its action now applies, no name read later replaces it. */
	if (flow->state == SLUICE_FLOW_INSPECTING) {
		flow->state = SLUICE_FLOW_CLASSIFIED;
		verdict_count_flow(rule_id);
	}
}

/* The verdict of a classified flow on one of its packets (payload_len:
 * its TCP or UDP payload, what a trigger counts in bytes; client_address:
 * see flow_client_address()). */
static __always_inline int verdict_apply(struct flow_state *flow, const __u8 *client_address,
					 int sender_is_hi, __u32 frame_len, __u32 payload_len,
					 const struct sluice_config *cfg)
{
	__u32 dir = verdict_packet_direction(flow, sender_is_hi);
	if (flow->trigger_pending)
		verdict_count_toward_trigger(flow, dir, payload_len, cfg);
	int drop = flow->action == SLUICE_ACTION_BLOCK || flow->action == SLUICE_ACTION_FREEZE ||
		   (flow->action == SLUICE_ACTION_THROTTLE &&
		    !verdict_throttle_conforms(flow, client_address, dir, frame_len, cfg));

	verdict_account(flow->rule_id, dir, frame_len, drop ? OUTCOME_DROPPED : OUTCOME_PASSED);
	return drop ? CTX_ACT_DROP : CTX_ACT_OK;
}

/* The verdict on a TCP packet: as verdict_apply(), but where a block
 * rule's method is not drop (freeze never answers), the client's packets are answered instead
 * (block_reply.h): the reply stage sends the reply back, or drops. */
static __always_inline int verdict_apply_tcp(struct ctx_buff *ctx, struct flow_state *flow,
					     const __u8 *client_address, int sender_is_hi, __u32 frame_len,
					     __u32 payload_len, const struct sluice_config *cfg)
{
	int verdict = verdict_apply(flow, client_address, sender_is_hi, frame_len, payload_len, cfg);

	if (verdict == CTX_ACT_DROP && flow->action == SLUICE_ACTION_BLOCK &&
	    verdict_packet_direction(flow, sender_is_hi) == SLUICE_DIR_UP)
		call_stage(ctx, SLUICE_STAGE_REPLY);
	return verdict;
}

/* at_opening: the flow was settled at its opening packet, before any of
 * its payload was read, so the scratch holds no name or hello of it. */
static __always_inline void verdict_emit_event(const struct flow_state *flow, __u8 configured_action,
				       __u32 class_id, const struct payload_scratch *scratch,
				       __u32 name_len, int at_opening, const struct sluice_config *cfg)
{
	__u32 zero = 0;
	struct classification_event *event = event_buffers.lookup(&zero);

	if (!event)
		return;
	__builtin_memcpy(&event->key, &scratch->key, sizeof(event->key));
	event->rule_id = flow->rule_id;
	event->class_id = class_id;
	event->action = configured_action;
	event->proto = flow->proto;
	event->client_is_hi = flow->client_is_hi;
	event->name_len = name_len;
	event->provisional = !!(flow->receiver & SLUICE_RECEIVER_SYN_DATA);
	event->opening = at_opening;
	__builtin_memcpy(event->name, scratch->name, sizeof(event->name));
	/* The per-CPU scratch's hello is this flow's only if it was read as TLS. */
	int hello = !at_opening && scratch->proto == SLUICE_PROTO_TLS;
	event->ech = hello && scratch->hello.ech;
	event->alpn_len = hello ? scratch->alpn_len : 0;
	__builtin_memcpy(event->alpn, scratch->alpn, sizeof(event->alpn));
	events.ringbuf_output(event, sizeof(*event), ring_flags(cfg));
}

/* Put the flow under rule_id (0: none); returns the rule's action as
 * configured (the event's), NONE without a rule. */
static __always_inline __u8 verdict_put_under_rule(struct flow_state *flow, __u32 rule_id,
						   const struct sluice_config *cfg)
{
	struct rule_info *rule = rule_id ? rule_of(cfg, rule_id) : 0;
	__u8 action = rule ? rule->action : SLUICE_ACTION_NONE;

	flow->rule_id = rule ? rule_id : 0;
	/* A rule in monitor mode is matched and counted, never enforced. */
	flow->action = rule && (rule->flags & SLUICE_RULE_MONITOR) ? SLUICE_ACTION_NONE : action;
	/* A rule with a trigger holds its action back until the count is reached. */
	flow->trigger_pending = rule && rule->trigger_unit != SLUICE_TRIGGER_NONE;
	flow->trigger_count = 0;
	if (flow->trigger_pending)
		flow->action = SLUICE_ACTION_NONE;
	return action;
}

/* Judge a new flow at its opening packet (sluice_stage_opening) under
 * rule_id, found among the rules of flows without a name (class_id: the
 * client's class); readable: a name may follow (TCP, QUIC). Returns 1 if
 * that settles it: nothing more of it is read. A rule that acts at once
 * settles it (a dropped SYN carries no name); one that waits for its
 * trigger, or allows, leaves it read on, and a name read then judges it
 * again, named rules first. A flow a rule settles here has its event, as
 * a named one has (`sluice replay` prints its line); one no rule judged
 * has none, or every DNS query would send one. */
static __always_inline int verdict_judge_opening(struct flow_state *flow, __u32 rule_id, __u32 class_id,
						 int readable, const struct payload_scratch *scratch,
						 const struct sluice_config *cfg)
{
	__u8 action = verdict_put_under_rule(flow, rule_id, cfg);

	flow->opening_rule_id = flow->rule_id;
	if (readable && (!flow->rule_id || action == SLUICE_ACTION_ALLOW || flow->trigger_pending))
		return 0;
	flow->state = SLUICE_FLOW_CLASSIFIED;
	verdict_count_flow(flow->rule_id);
	if (flow->rule_id && (cfg->flags & SLUICE_CFG_EVENTS))
		verdict_emit_event(flow, action, class_id, scratch, 0, 1, cfg);
	return 1;
}

/* Settle the flow under rule_id (0: none) for good; class_id is the
 * client's class, for the event. */
static __always_inline void verdict_classify(struct flow_state *flow, __u32 rule_id, __u32 class_id,
				     const struct payload_scratch *scratch,
				     const struct sluice_config *cfg)
{
	__u8 action = verdict_put_under_rule(flow, rule_id, cfg);

	flow->proto = scratch->proto;
	flow->client_is_hi = scratch->sender_is_hi;
	flow->client_known = 1;
	flow->state = SLUICE_FLOW_CLASSIFIED;

	counter_inc(scratch->proto == SLUICE_PROTO_TLS ? SLUICE_CNT_FLOWS_TLS : SLUICE_CNT_FLOWS_HTTP);
	verdict_count_flow(flow->rule_id);
	if (cfg->flags & SLUICE_CFG_EVENTS)
		verdict_emit_event(flow, action, class_id, scratch, scratch->name_len, 0, cfg);
}

/* No name in this packet: look at the next one, unless the window is spent,
 * in which case the flow passes untouched from now on. */
static __always_inline int verdict_inspect_next_packet(struct flow_state *flow,
					       const struct payload_scratch *scratch,
					       const struct sluice_config *cfg)
{
	if (flow->payload_packets >= cfg->window_packets || flow->payload_bytes >= cfg->window_bytes) {
		flow->state = SLUICE_FLOW_GAVE_UP;
		counter_inc(SLUICE_CNT_GAVE_UP);
		/* Its opening judgement, if any, is its verdict for good. */
		if (flow->rule_id)
			verdict_count_flow(flow->rule_id);
		if (cfg->flags & SLUICE_CFG_EVENTS)
			verdict_emit_event(flow, SLUICE_ACTION_NONE, 0, scratch, 0, 0, cfg);
	}
	return verdict_pass_unjudged(scratch->frame_len);
}

#endif /* SLUICE_VERDICT_H */
