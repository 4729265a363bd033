/* SPDX-License-Identifier: GPL-2.0-only */
/* flow_key.h - a packet's flow keys (sluice_abi.h: flow_key, flow_id),
 * made the same for both directions of a connection.
 *
 * A key stores the (address, port) end that sorts lower first, so a packet
 * and its reply find the same entry; sender_is_hi says which end sent the
 * packet in hand. No maps here: bench/packet_cost.py's floor program keys
 * its flows with these very functions.
 */
#ifndef SLUICE_FLOW_KEY_H
#define SLUICE_FLOW_KEY_H

#include "sluice_abi.h"
#include "parsing_helpers.h"

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
	key->ipv6 = pkt->is_v6;
	return sender_is_hi;
}

/* Fill id with an IPv4 packet's flow_id; returns 1 when the sender is the
 * key's hi end, as flow_make_key() would. */
static __always_inline int flow_make_ipv4_id(const struct packet_info *pkt, struct flow_id *id)
{
	/* The order flow_compare_endpoints() gives the IPv4-mapped addresses:
	 * their first 12 bytes are the same, so their last 4 decide, read as
	 * the last 4 of a native 64-bit word (a native 32-bit one). */
	__u32 saddr, daddr;
	__builtin_memcpy(&saddr, pkt->saddr + 12, 4);
	__builtin_memcpy(&daddr, pkt->daddr + 12, 4);
	int sender_is_hi = saddr != daddr ? saddr > daddr : pkt->sport > pkt->dport;

	id->lo = sender_is_hi ? daddr : saddr;
	id->hi = sender_is_hi ? saddr : daddr;
	id->port_lo = sender_is_hi ? pkt->dport : pkt->sport;
	id->port_hi = sender_is_hi ? pkt->sport : pkt->dport;
	id->l4proto = pkt->l4proto;
	id->ipv6 = 0;
	id->cpu = 0;
	return sender_is_hi;
}

#endif /* SLUICE_FLOW_KEY_H */
