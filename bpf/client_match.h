/* client_match.h - who a rule applies to: the client's class, its share of
 * a rollout, the server port, and whether sluice saw the client open the
 * flow. The first rule of the name's rule set whose conditions all hold is
 * the flow's rule.
 *
 * controller/policy/model.py (Policy.decide, behind `sluice explain`) makes
 * the same decision in Python; tests/test_bpf_clients.py holds the two
 * together.
 */
#ifndef SLUICE_CLIENT_MATCH_H
#define SLUICE_CLIENT_MATCH_H

#include "maps.h"
#include "siphash.h"

#define IPV4_MAPPED_PREFIX_BITS 96
#define IPV6_DEVICE_PREFIX_BYTES 8	/* one device holds a whole /64 */
#define ROLLOUT_HASH_SHIFT 32

/* Everything the rule conditions look at, gathered once per flow. */
struct client_view {
	__u8 addr[16];			/* IPv4 as ::ffff:a.b.c.d */
	__u32 class_id;			/* 0: in no class */
	__u16 server_port;		/* host byte order */
	__u8 opened_by_client;		/* sluice saw the client's SYN */
	__u8 rollout_known;		/* rollout_value is computed */
	__u32 rollout_value;
};

static __always_inline __u32 client_class(const __u8 *addr)
{
	struct client_prefix prefix = { .prefixlen = 128 };
	__u32 *class_id;

	__builtin_memcpy(prefix.addr, addr, 16);
	class_id = client_classes.lookup(&prefix);
	return class_id ? *class_id : 0;
}

static __always_inline int is_ipv4_mapped(const __u8 *addr)
{
	__u64 high;
	__u32 middle;

	__builtin_memcpy(&high, addr, 8);
	__builtin_memcpy(&middle, addr + 8, 4);
	return high == 0 && middle == bpf_htonl(0xffff);
}

/* The client's place in every rollout: 32 bits of a keyed hash of its IPv4
 * address, or of its IPv6 /64. The same client always gets the same value,
 * so raising a share from 10% to 20% keeps the first 10% in. */
static __always_inline __u32 rollout_value(const __u8 *addr, const struct sluice_config *cfg)
{
	__u8 message[16];

	__builtin_memcpy(message, addr, 16);
	if (!is_ipv4_mapped(addr))
		__builtin_memset(message + IPV6_DEVICE_PREFIX_BYTES, 0, 16 - IPV6_DEVICE_PREFIX_BYTES);
	return siphash_16(cfg->rollout_key, message) >> ROLLOUT_HASH_SHIFT;
}

static __always_inline int port_allowed(const struct rule_info *rule, __u16 port)
{
	if (rule->port_ranges == 0)
		return 1;
#pragma unroll
	for (int i = 0; i < SLUICE_PORT_RANGES_MAX; i++) {
		if (i < rule->port_ranges && rule->ports[i].first <= port && port <= rule->ports[i].last)
			return 1;
	}
	return 0;
}

static __always_inline int in_rollout(const struct rule_info *rule, struct client_view *client,
				      const struct sluice_config *cfg)
{
	if (rule->rollout_threshold >= SLUICE_ROLLOUT_ALL)
		return 1;
	if (!client->rollout_known) {
		client->rollout_value = rollout_value(client->addr, cfg);
		client->rollout_known = 1;
	}
	return client->rollout_value < rule->rollout_threshold;
}

static __always_inline int rule_applies(const struct rule_info *rule, struct client_view *client,
					const struct sluice_config *cfg)
{
	if (rule->flags & SLUICE_RULE_INACTIVE)
		return 0;
	if ((rule->flags & SLUICE_RULE_CLIENT_OPENED) && !client->opened_by_client)
		return 0;
	return port_allowed(rule, client->server_port) && in_rollout(rule, client, cfg);
}

/* The rule of set_id that applies to client, or 0. The class's own set
 * holds the rules for any client too; a class without rules on this name
 * has no set of its own and falls back to the set for clients in no class. */
static __always_inline __u32 select_rule(__u32 set_id, struct client_view *client,
					 const struct sluice_config *cfg)
{
	struct rule_set_key key = { .set_id = set_id, .class_id = client->class_id };
	struct rule_set *set = rule_sets.lookup(&key);

	if (!set) {
		key.class_id = 0;
		set = rule_sets.lookup(&key);
		if (!set)
			return 0;
	}
	for (int i = 0; i < SLUICE_RULE_SET_MAX; i++) {
		__u32 rule_id = set->rule_ids[i];
		if (!rule_id)
			break;
		struct rule_info *rule = rules.lookup(&rule_id);
		if (rule && rule_applies(rule, client, cfg))
			return rule_id;
	}
	return 0;
}

#endif /* SLUICE_CLIENT_MATCH_H */
