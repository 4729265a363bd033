/* verdict.h - settle a flow under a rule, count it, and apply its action.
 */
#ifndef SLUICE_VERDICT_H
#define SLUICE_VERDICT_H

#include "maps.h"
#include "payload.h"

static __always_inline void account(__u32 rule_id, __u32 bytes, int dropped)
{
	struct rule_stats *stats = rule_stats.lookup(&rule_id);

	if (!stats)
		return;
	stats->packets += 1;
	stats->bytes += bytes;
	if (dropped) {
		stats->dropped_packets += 1;
		stats->dropped_bytes += bytes;
	}
}

/* Every packet that no rule judges is counted under rule id 0, and passes. */
static __always_inline int pass_unjudged(__u32 frame_len)
{
	account(0, frame_len, 0);
	return XDP_PASS;
}

static __always_inline int apply_verdict(const struct flow_state *flow, __u32 frame_len)
{
	int drop = flow->action == SLUICE_ACTION_BLOCK;

	account(flow->rule_id, frame_len, drop);
	return drop ? XDP_DROP : XDP_PASS;
}

static __always_inline void emit_event(const struct flow_state *flow, __u8 configured_action,
				       const struct payload_scratch *scratch, __u32 name_len)
{
	__u32 zero = 0;
	struct classification_event *event = event_buffers.lookup(&zero);

	if (!event)
		return;
	__builtin_memcpy(&event->key, &scratch->key, sizeof(event->key));
	event->rule_id = flow->rule_id;
	event->action = configured_action;
	event->proto = flow->proto;
	event->client_is_hi = flow->client_is_hi;
	event->name_len = name_len;
	__builtin_memcpy(event->name, scratch->name, sizeof(event->name));
	events.ringbuf_output(event, sizeof(*event), 0);
}

/* Settle the flow under rule_id (0: none) for good. */
static __always_inline void classify(struct flow_state *flow, __u32 rule_id,
				     const struct payload_scratch *scratch,
				     const struct sluice_config *cfg)
{
	struct rule_info *rule = rule_id ? rules.lookup(&rule_id) : 0;
	__u8 action = rule ? rule->action : SLUICE_ACTION_NONE;

	flow->rule_id = rule ? rule_id : 0;
	/* A rule in monitor mode is matched and counted, never enforced. */
	flow->action = rule && (rule->flags & SLUICE_RULE_MONITOR) ? SLUICE_ACTION_NONE : action;
	flow->proto = scratch->proto;
	flow->client_is_hi = scratch->sender_is_hi;
	flow->client_known = 1;
	flow->state = SLUICE_FLOW_CLASSIFIED;

	count(scratch->proto == SLUICE_PROTO_TLS ? SLUICE_CNT_FLOWS_TLS : SLUICE_CNT_FLOWS_HTTP);
	__u32 stats_id = flow->rule_id;
	struct rule_stats *stats = rule_stats.lookup(&stats_id);
	if (stats)
		stats->flows += 1;
	if (cfg->flags & SLUICE_CFG_EVENTS)
		emit_event(flow, action, scratch, scratch->name_len);
}

/* No name in this packet: look at the next one, unless the window is spent,
 * in which case the flow passes untouched from now on. */
static __always_inline int inspect_next_packet(struct flow_state *flow,
					       const struct payload_scratch *scratch,
					       const struct sluice_config *cfg)
{
	if (flow->payload_packets >= cfg->window_packets) {
		flow->state = SLUICE_FLOW_GAVE_UP;
		count(SLUICE_CNT_GAVE_UP);
		if (cfg->flags & SLUICE_CFG_EVENTS)
			emit_event(flow, SLUICE_ACTION_NONE, scratch, 0);
	}
	return pass_unjudged(scratch->frame_len);
}

#endif /* SLUICE_VERDICT_H */
