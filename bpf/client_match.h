/* SPDX-License-Identifier: GPL-2.0-only */
/* client_match.h - who a rule applies to: the client's class, its share of
 * a rollout, the server port, and whether sluice saw the client open the
 * flow; and what the flow is: its protocol, the server's destination set,
 * and its ClientHello's ECH and ALPN. The first rule of the name's rule set
 * whose conditions all hold is the flow's rule.
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

#define ALPN_ENTRIES_MAX 8		/* protocol ids read from one ALPN list; browsers offer 2 or 3 */

/* Everything the rule conditions look at, gathered once per flow. */
struct flow_view {
	__u8 addr[16];			/* the client's; IPv4 as ::ffff:a.b.c.d */
	__u32 class_id;			/* 0: in no class */
	__u16 server_port;		/* host byte order */
	__u8 opened_by_client;		/* sluice saw the client's SYN */
	__u8 rollout_known;		/* rollout_value is computed */
	__u32 rollout_value;
	__u32 destination_id;		/* the server's destination set, 0: none */
	__u32 alpn_ids;			/* the ids its ClientHello offers that rules name */
	__u8 proto;			/* enum sluice_proto */
	__u8 ech;			/* its ClientHello offers ECH */
	__u8 pad[2];
};

static __always_inline __u32 match_client_class(const struct sluice_config *cfg, const __u8 *addr)
{
	struct client_prefix prefix = { .prefixlen = 128 };
	void *classes = client_classes_of(cfg);
	__u32 *class_id;

	if (!classes)
		return 0;
	__builtin_memcpy(prefix.addr, addr, 16);
	class_id = bpf_map_lookup_elem(classes, &prefix);
	return class_id ? *class_id : 0;
}

static __always_inline __u32 match_destination_set(const struct sluice_config *cfg, const __u8 *addr)
{
	struct client_prefix prefix = { .prefixlen = 128 };
	void *destinations = destinations_of(cfg);
	__u32 *set_id;

	if (!destinations)
		return 0;
	__builtin_memcpy(prefix.addr, addr, 16);
	set_id = bpf_map_lookup_elem(destinations, &prefix);
	return set_id ? *set_id : 0;
}

/* The bits of the protocol ids an ALPN extension body offers (RFC 7301: a
 * 2-byte list length, then ids of a 1-byte length each) that rules name;
 * alpn holds its first len bytes. */
static __always_inline __u32 match_offered_alpn_ids(const struct sluice_config *cfg, const __u8 *alpn, __u32 len)
{
	struct alpn_key key;
	void *named = alpn_ids_of(cfg);
	__u32 ids = 0;
	__u32 off = 2;

	if (!named)
		return 0;

	for (int i = 0; i < ALPN_ENTRIES_MAX; i++) {
		if (off >= len)
			break;
		__u32 id_len = masked_u8(alpn, off, ALPN_COPY_MASK);
		off += 1;
		if (id_len == 0 || off + id_len > len)
			break;
		if (id_len <= SLUICE_ALPN_ID_BYTES) {
			key.len = id_len;
			/* Bytes past the id are zero, as the controller writes keys. */
			for (int j = 0; j < SLUICE_ALPN_ID_BYTES; j++)
				key.id[j] = masked_u8(alpn, off + j, ALPN_COPY_MASK) & -(__u8)(j < id_len);
			__u32 *bit = bpf_map_lookup_elem(named, &key);
			if (bit)
				ids |= *bit;
		}
		off += id_len;
	}
	return ids;
}

/* Does the flow meet the rule's conditions on what it is? */
static __always_inline int match_flow(const struct rule_info *rule, const struct flow_view *flow)
{
	if (rule->protocols && !(rule->protocols & (1u << (flow->proto & 31))))
		return 0;
	if (rule->destination_id && rule->destination_id != flow->destination_id)
		return 0;
	/* ECH and ALPN are facts of a ClientHello: a flow without one meets neither. */
	int hello = flow->proto == SLUICE_PROTO_TLS || flow->proto == SLUICE_PROTO_QUIC;
	if (rule->ech != SLUICE_ECH_ANY &&
	    (!hello || flow->ech != (rule->ech == SLUICE_ECH_PRESENT)))
		return 0;
	return !rule->alpn_ids || (rule->alpn_ids & flow->alpn_ids);
}

static __always_inline int match_is_ipv4_mapped(const __u8 *addr)
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
static __always_inline __u32 match_rollout_value(const __u8 *addr, const struct sluice_config *cfg)
{
	__u8 message[16];

	__builtin_memcpy(message, addr, 16);
	if (!match_is_ipv4_mapped(addr))
		__builtin_memset(message + IPV6_DEVICE_PREFIX_BYTES, 0, 16 - IPV6_DEVICE_PREFIX_BYTES);
	return siphash_16(cfg->rollout_key, message) >> ROLLOUT_HASH_SHIFT;
}

static __always_inline int match_port_allowed(const struct rule_info *rule, __u16 port)
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

static __always_inline int match_in_rollout(const struct rule_info *rule, struct flow_view *client,
					    const struct sluice_config *cfg)
{
	if (rule->rollout_threshold >= SLUICE_ROLLOUT_ALL)
		return 1;
	if (!client->rollout_known) {
		client->rollout_value = match_rollout_value(client->addr, cfg);
		client->rollout_known = 1;
	}
	return client->rollout_value < rule->rollout_threshold;
}

static __always_inline int match_rule_applies(const struct rule_info *rule, struct flow_view *client,
					      const struct sluice_config *cfg)
{
	if (rule->flags & SLUICE_RULE_INACTIVE)
		return 0;
	if ((rule->flags & SLUICE_RULE_CLIENT_OPENED) && !client->opened_by_client)
		return 0;
	if (!match_flow(rule, client))
		return 0;
	return match_port_allowed(rule, client->server_port) && match_in_rollout(rule, client, cfg);
}

/* The rule of set_id that applies to client, or 0. The class's own set
 * holds the rules for any client too; a class without rules on this name
 * has no set of its own and falls back to the set for clients in no class. */
static __always_inline __u32 match_select_rule(__u32 set_id, struct flow_view *client,
					       const struct sluice_config *cfg)
{
	struct rule_set_key key = { .set_id = set_id, .class_id = client->class_id };
	void *sets = rule_sets_of(cfg);

	if (!sets)
		return 0;
	struct rule_set *set = bpf_map_lookup_elem(sets, &key);
	if (!set) {
		key.class_id = 0;
		set = bpf_map_lookup_elem(sets, &key);
		if (!set)
			return 0;
	}
	for (int i = 0; i < SLUICE_RULE_SET_MAX; i++) {
		__u32 rule_id = set->rule_ids[i];
		if (!rule_id)
			break;
		struct rule_info *rule = rule_of(cfg, rule_id);
		if (rule && match_rule_applies(rule, client, cfg))
			return rule_id;
	}
	return 0;
}

#endif /* SLUICE_CLIENT_MATCH_H */
