/* SPDX-License-Identifier: GPL-2.0-only */
/* parsing_helpers.h - walk Ethernet, VLAN, IPv4/IPv6 and TCP/UDP headers,
 * and one level of encapsulation around them.
 *
 * Each helper advances a cursor over the packet and checks the bounds of
 * exactly the bytes it is about to read, right before it reads them, so the
 * verifier sees every access proven safe; each returns the protocol that
 * follows (or -1). Anything the data plane does not understand makes the
 * walk fail, and the caller lets the packet pass.
 *
 * Tunnels (enum sluice_tunnel): IP-in-IP, GRE, GTP-U and VXLAN are opened
 * one level deep, QinQ's two tags stepped over, and the packet is described
 * by its inner headers: the flow is the inner flow, while frame_len stays
 * the outer frame's. An encapsulation inside the inner packet is not opened.
 */
#ifndef SLUICE_PARSING_HELPERS_H
#define SLUICE_PARSING_HELPERS_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "sluice_abi.h"

#define ETH_P_8021Q_TAG 0x8100		/* 802.1Q customer tag */
#define ETH_P_8021AD_TAG 0x88A8		/* 802.1ad service tag (QinQ outer) */
#define ETH_P_BRIDGED 0x6558		/* transparent Ethernet bridging: a frame inside GRE */
#define VLAN_TAGS_MAX 2			/* QinQ: a service tag, then a customer tag */
#define IPV6_EXT_HEADERS_MAX 4		/* hop-by-hop, routing, destination options */
#define IPV4_FRAG_OFFSET_MASK 0x1FFF
#define IPV4_MORE_FRAGMENTS 0x2000
#define IPV6_FRAG_OFFSET_MASK 0xFFF8	/* in bytes already: 13 bits of 8-byte units, shifted by 3 */
#define IPV6_MORE_FRAGMENTS 0x0001
#define FRAG_UNIT 8			/* fragment offsets count 8-byte units */

/* GRE (RFC 2784, keys and sequence numbers RFC 2890): each flag adds a
 * 4-byte field after the base header. */
#define GRE_CHECKSUM 0x8000
#define GRE_ROUTING 0x4000		/* RFC 1701 source routes: long deprecated, not read */
#define GRE_KEY 0x2000
#define GRE_SEQUENCE 0x1000
#define GRE_VERSION 0x0007		/* 0; 1 is PPTP's enhanced GRE, which carries PPP */
#define GRE_OPTION_BYTES 4

/* GTP-U (3GPP TS 29.281), always to UDP port SLUICE_GTPU_PORT. */
#define GTPU_VERSION_MASK 0xF0		/* version 1, protocol type 1 (GTP, not GTP') */
#define GTPU_VERSION_1 0x30
#define GTPU_EXTENSION 0x04		/* E: extension headers follow */
#define GTPU_OPTIONAL_FIELDS 0x07	/* E, S or PN: sequence, N-PDU and next-extension fields present */
#define GTPU_OPTIONAL_BYTES 4
#define GTPU_G_PDU 0xFF			/* the message type that carries a user packet */
#define GTPU_EXTENSIONS_MAX 4		/* a PDU session container, seldom more */
#define GTPU_EXTENSION_UNIT 4		/* an extension's length counts 4-byte units */

/* VXLAN (RFC 7348), UDP port SLUICE_VXLAN_PORT. */
#define VXLAN_VNI_VALID 0x08		/* the I flag: every VXLAN header sets it */

/* Headers before the transport payload, at most (an IPv6 packet may carry
 * extension headers of 2 KB each): a cursor further in is not followed. */
#define PARSE_DEPTH_MAX 16383

/* What parse_packet() found. */
#define PACKET_UNFRAGMENTED 0
#define PACKET_FRAGMENT 1		/* one piece of a fragmented datagram: see ip_frag.h */

/* A kind's bit in sluice_config.closed_tunnels and in parse_packet()'s open_tunnels. */
#define TUNNEL_BIT(kind) (1u << (kind))
/* Block replies are built only where the reply's L2 header is the request's
 * own (block_reply.h): QinQ. Inside the other encapsulations a blocked
 * flow's packets are dropped. */
#define TUNNELS_REPLIED TUNNEL_BIT(SLUICE_TUNNEL_QINQ)

struct hdr_cursor {
	void *pos;
};

struct vlan_tag {
	__be16 tci;
	__be16 encapsulated_proto;
};

/* What the data plane needs to know about a packet, sender-relative. */
struct packet_info {
	__u8 saddr[16];			/* IPv4 as ::ffff:a.b.c.d */
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 l4proto;
	__u8 tcp_flags;			/* TCP_FLAG_* below, 0 for UDP */
	__u16 payload_len;		/* transport payload bytes, from the IP lengths */
	__u32 seq;			/* TCP sequence number (host order), 0 for UDP */
	__u32 payload_offset;		/* from the start of the frame */
	__u32 frame_len;
	/* A fragment (PACKET_FRAGMENT): its payload_offset and payload_len
	 * are those of the fragment's data, and no ports or TCP fields are set. */
	__u32 frag_id;			/* IPv4 identification, or IPv6 Fragment header's */
	__u16 frag_offset;		/* where the fragment's data starts in the datagram's payload */
	__u8 frag_more;			/* more fragments follow (IPv4 MF, IPv6 M) */
	__u8 is_v6;			/* the (innermost) IP header is IPv6 */
	__u8 ttl;			/* TTL (IPv4) or hop limit (IPv6) */
	__u8 tunnel;			/* enum sluice_tunnel it came in (the innermost, with QinQ) */
	__u8 tunnel_outcome;		/* enum sluice_tunnel_outcome, when tunnel is set */
	__u16 walked;			/* the parser's cursor, from the frame's start (see parse_rejoin()) */
	__u8 tcp_header_len;		/* TCP: the header's length, options included */
	__u8 hop_by_hop_late;		/* IPv6: a Hop-by-Hop header not first, which a receiver refuses */
	__u8 ipv4_header_len;		/* the (innermost) IPv4 header's, options included; 0 for IPv6.
					 * It ends where the transport header (or a fragment's data) starts. */
	__u8 ip_truncated;		/* the IP header says more than the frame holds: a receiver
					 * drops it (Linux: ip_rcv_core(), ipv6_rcv()) */
};

/* Record why a tunnelled packet was not read: the first reason stands. */
static __always_inline void parse_tunnel_outcome(struct packet_info *pkt, __u8 outcome)
{
	if (pkt->tunnel_outcome == SLUICE_TUNNELLED_OPENED)
		pkt->tunnel_outcome = outcome;
}

static __always_inline int parse_is_fragment(const struct packet_info *pkt)
{
	return pkt->frag_more || pkt->frag_offset;
}

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* Returns 1 for stacked tags (QinQ: a service tag, or two tags), 0 for
 * none or one 802.1Q tag, -1 if truncated; *proto is what follows them. */
static __always_inline int parse_ethhdr(struct hdr_cursor *cur, void *data_end, __u16 *proto)
{
	struct ethhdr *eth = cur->pos;
	int tags = 0;

	if ((void *)(eth + 1) > data_end)
		return -1;
	cur->pos = eth + 1;
	*proto = bpf_ntohs(eth->h_proto);
	int stacked = *proto == ETH_P_8021AD_TAG;

#pragma unroll
	for (int i = 0; i < VLAN_TAGS_MAX; i++) {
		if (*proto != ETH_P_8021Q_TAG && *proto != ETH_P_8021AD_TAG)
			break;
		struct vlan_tag *tag = cur->pos;
		if ((void *)(tag + 1) > data_end)
			return -1;
		cur->pos = tag + 1;
		*proto = bpf_ntohs(tag->encapsulated_proto);
		tags++;
	}
	return stacked || tags == VLAN_TAGS_MAX;
}

/* IPv4 addresses are stored as IPv4-mapped IPv6 addresses so that one flow
 * key serves both families. */
static __always_inline void parse_ipv4_to_mapped(__u8 *out, __be32 addr)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr, 4);
}

/* Returns the transport protocol, or -1; a fragment's fields go to pkt. */
static __always_inline int parse_iphdr(struct hdr_cursor *cur, void *data_end,
				       struct packet_info *pkt, __u32 *l4_len)
{
	struct iphdr *iph = cur->pos;

	if ((void *)(iph + 1) > data_end)
		return -1;
	__u32 hdr_len = iph->ihl * 4;
	if (hdr_len < sizeof(*iph))
		return -1;
	if (cur->pos + hdr_len > data_end)
		return -1;
	__u16 frag_off = bpf_ntohs(iph->frag_off);
	if (frag_off & (IPV4_FRAG_OFFSET_MASK | IPV4_MORE_FRAGMENTS)) {
		pkt->frag_offset = (frag_off & IPV4_FRAG_OFFSET_MASK) * FRAG_UNIT;
		pkt->frag_more = !!(frag_off & IPV4_MORE_FRAGMENTS);
		pkt->frag_id = bpf_ntohs(iph->id);
	}
	pkt->ttl = iph->ttl;
	pkt->is_v6 = 0;			/* the outer header of a tunnel may have been IPv6 */
	pkt->ipv4_header_len = hdr_len;
	__u32 total_len = bpf_ntohs(iph->tot_len);
	if (total_len < hdr_len)
		return -1;
	parse_ipv4_to_mapped(pkt->saddr, iph->saddr);
	parse_ipv4_to_mapped(pkt->daddr, iph->daddr);
	*l4_len = total_len - hdr_len;
	cur->pos += hdr_len;
	return iph->protocol;
}

static __always_inline int parse_is_skippable_ipv6_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS;
}

struct ipv6_ext_hdr {
	__u8 nexthdr;
	__u8 len_8_octets;		/* length in 8-octet units, not counting the first */
};

struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;		/* offset in bytes (a multiple of 8), then M in bit 0 */
	__be32 identification;
};

static __always_inline int parse_ip6hdr(struct hdr_cursor *cur, void *data_end,
					struct packet_info *pkt, __u32 *l4_len)
{
	struct ipv6hdr *ip6h = cur->pos;

	if ((void *)(ip6h + 1) > data_end)
		return -1;
	__builtin_memcpy(pkt->saddr, &ip6h->saddr, 16);
	__builtin_memcpy(pkt->daddr, &ip6h->daddr, 16);
	__u32 remaining = bpf_ntohs(ip6h->payload_len);
	__u8 nexthdr = ip6h->nexthdr;
	pkt->ttl = ip6h->hop_limit;
	pkt->is_v6 = 1;
	pkt->ipv4_header_len = 0;	/* an outer IPv4 header's is not this one's */
	cur->pos = ip6h + 1;

#pragma unroll
	for (int i = 0; i < IPV6_EXT_HEADERS_MAX; i++) {
		if (nexthdr == IPPROTO_FRAGMENT) {
			struct ipv6_frag_hdr *frag = cur->pos;
			if ((void *)(frag + 1) > data_end || sizeof(*frag) > remaining)
				return -1;
			__u16 frag_off = bpf_ntohs(frag->frag_off);
			nexthdr = frag->nexthdr;
			cur->pos = frag + 1;
			remaining -= sizeof(*frag);
			/* An atomic fragment (offset 0, no more to come: RFC 6946)
			 * is the whole datagram: read on past its header. */
			if (!(frag_off & (IPV6_FRAG_OFFSET_MASK | IPV6_MORE_FRAGMENTS)))
				continue;
			pkt->frag_offset = frag_off & IPV6_FRAG_OFFSET_MASK;
			pkt->frag_more = frag_off & IPV6_MORE_FRAGMENTS;
			pkt->frag_id = bpf_ntohl(frag->identification);
			break;
		}
		if (!parse_is_skippable_ipv6_ext(nexthdr))
			break;
		/* RFC 8200 4.1: Hop-by-Hop only right after the IPv6 header. */
		if (i > 0 && nexthdr == IPPROTO_HOPOPTS)
			pkt->hop_by_hop_late = 1;
		struct ipv6_ext_hdr *ext = cur->pos;
		if ((void *)(ext + 1) > data_end)
			return -1;
		__u32 ext_len = (ext->len_8_octets + 1) * 8;
		if (ext_len > remaining)
			return -1;
		nexthdr = ext->nexthdr;
		cur->pos += ext_len;
		remaining -= ext_len;
	}
	/* Anything still unknown carries no transport header we can find: it
	 * passes untouched. */
	if (!parse_is_fragment(pkt) && parse_is_skippable_ipv6_ext(nexthdr))
		return -1;
	*l4_len = remaining;
	return nexthdr;
}

static __always_inline int parse_tcphdr(struct hdr_cursor *cur, void *data_end,
					struct packet_info *pkt, __u32 l4_len)
{
	struct tcphdr *tcph = cur->pos;

	if ((void *)(tcph + 1) > data_end)
		return -1;
	__u32 hdr_len = tcph->doff * 4;
	if (hdr_len < sizeof(*tcph) || hdr_len > l4_len)
		return -1;
	if (cur->pos + hdr_len > data_end)
		return -1;
	pkt->sport = tcph->source;
	pkt->dport = tcph->dest;
	pkt->tcp_flags = ((__u8 *)tcph)[13];
	pkt->seq = bpf_ntohl(tcph->seq);
	pkt->tcp_header_len = hdr_len;
	pkt->payload_len = l4_len - hdr_len;
	cur->pos += hdr_len;
	return 0;
}

static __always_inline int parse_udphdr(struct hdr_cursor *cur, void *data_end,
					struct packet_info *pkt, __u32 l4_len)
{
	struct udphdr *udph = cur->pos;

	if ((void *)(udph + 1) > data_end)
		return -1;
	if (l4_len < sizeof(*udph))
		return -1;
	pkt->sport = udph->source;
	pkt->dport = udph->dest;
	pkt->tcp_flags = 0;
	pkt->payload_len = l4_len - sizeof(*udph);
	cur->pos = udph + 1;
	return 0;
}

/* A point where many ways through the parser meet (each number of VLAN
 * tags, of IPv6 extension headers, each encapsulation's options): the
 * cursor goes on as the frame's start plus an offset the verifier knows
 * only as bounded (a difference of packet pointers is an unknown number to
 * it), not as one fixed offset per way there, so what comes next is
 * verified once, not once per way. The offset goes through memory (a
 * volatile read) so that the compiler cannot fold it back into the cursor. */
static __always_inline int parse_rejoin(struct hdr_cursor *cur, void *data, struct packet_info *pkt)
{
	pkt->walked = cur->pos - data;
	__u32 walked = *(volatile __u16 *)&pkt->walked;
	if (walked > PARSE_DEPTH_MAX)
		return -1;
	cur->pos = data + walked;
	return 0;
}

/* IPv4 or IPv6, by EtherType: returns the transport protocol, or -1. */
static __always_inline int parse_network(struct hdr_cursor *cur, void *data_end, __u16 eth_proto,
					 struct packet_info *pkt, __u32 *l4_len)
{
	if (eth_proto == ETH_P_IP)
		return parse_iphdr(cur, data_end, pkt, l4_len);
	if (eth_proto == ETH_P_IPV6)
		return parse_ip6hdr(cur, data_end, pkt, l4_len);
	return -1;
}

/* The encapsulation an outer packet of transport protocol l4proto is, the
 * cursor at its transport header; SLUICE_TUNNEL_NONE if none. GTP-U and
 * VXLAN are known by their destination port, as their receivers know them. */
static __always_inline int parse_tunnel_kind(const struct hdr_cursor *cur, void *data_end, int l4proto)
{
	if (l4proto == IPPROTO_IPIP || l4proto == IPPROTO_IPV6)
		return SLUICE_TUNNEL_IPIP;
	if (l4proto == IPPROTO_GRE)
		return SLUICE_TUNNEL_GRE;
	struct udphdr *udph = cur->pos;
	if (l4proto != IPPROTO_UDP || (void *)(udph + 1) > data_end)
		return SLUICE_TUNNEL_NONE;
	if (udph->dest == bpf_htons(SLUICE_GTPU_PORT))
		return SLUICE_TUNNEL_GTPU;
	if (udph->dest == bpf_htons(SLUICE_VXLAN_PORT))
		return SLUICE_TUNNEL_VXLAN;
	return SLUICE_TUNNEL_NONE;
}

struct gre_base_hdr {
	__be16 flags;
	__be16 protocol;
};

/* Returns the EtherType inside (0: one sluice does not read), or -1. */
static __always_inline int parse_gre(struct hdr_cursor *cur, void *data_end, __u32 l4_len)
{
	struct gre_base_hdr *gre = cur->pos;

	if ((void *)(gre + 1) > data_end)
		return -1;
	__u16 flags = bpf_ntohs(gre->flags);
	if (flags & (GRE_ROUTING | GRE_VERSION))
		return 0;
	__u32 hdr_len = sizeof(*gre) + (flags & GRE_CHECKSUM ? GRE_OPTION_BYTES : 0) +
			(flags & GRE_KEY ? GRE_OPTION_BYTES : 0) + (flags & GRE_SEQUENCE ? GRE_OPTION_BYTES : 0);
	if (hdr_len > l4_len || cur->pos + hdr_len > data_end)
		return -1;
	cur->pos += hdr_len;
	return bpf_ntohs(gre->protocol);
}

struct gtpu_hdr {
	__u8 flags;
	__u8 type;
	__be16 length;			/* bytes after these 8 */
	__be32 teid;
};

/* The cursor past the UDP header. Returns the EtherType of the user packet
 * inside a G-PDU (0: signalling, which carries none), or -1. */
static __always_inline int parse_gtpu(struct hdr_cursor *cur, void *data_end, __u32 l4_len)
{
	struct gtpu_hdr *gtp = cur->pos;

	if ((void *)(gtp + 1) > data_end)
		return -1;
	if ((gtp->flags & GTPU_VERSION_MASK) != GTPU_VERSION_1)
		return -1;
	if (gtp->type != GTPU_G_PDU)
		return 0;
	__u32 message_end = sizeof(*gtp) + bpf_ntohs(gtp->length);
	if (message_end > l4_len)
		return -1;
	cur->pos = gtp + 1;
	__u32 hdr_len = sizeof(*gtp);
	if (gtp->flags & GTPU_OPTIONAL_FIELDS) {
		__u8 *optional = cur->pos;
		if ((void *)(optional + GTPU_OPTIONAL_BYTES) > data_end)
			return -1;
		/* The last optional byte names the first extension header; each
		 * extension's last byte names the next, 0 ends them. */
		__u8 next = gtp->flags & GTPU_EXTENSION ? optional[GTPU_OPTIONAL_BYTES - 1] : 0;
		cur->pos = optional + GTPU_OPTIONAL_BYTES;
		hdr_len += GTPU_OPTIONAL_BYTES;
#pragma unroll
		for (int i = 0; i < GTPU_EXTENSIONS_MAX; i++) {
			if (!next)
				break;
			__u8 *units = cur->pos;
			if ((void *)(units + 1) > data_end || *units == 0)
				return -1;
			/* Step to the extension's last byte first: the verifier
			 * proves a read at the cursor, not behind it. */
			__u32 ext_len = *units * GTPU_EXTENSION_UNIT;
			__u8 *last = cur->pos + ext_len - 1;
			if ((void *)(last + 1) > data_end)
				return -1;
			next = *last;
			cur->pos = last + 1;
			hdr_len += ext_len;
		}
		if (next)
			return -1;
	}
	__u8 *inner = cur->pos;
	if ((void *)(inner + 1) > data_end || hdr_len >= message_end)
		return -1;
	/* A G-PDU carries the IP packet bare: its version nibble says which. */
	if (*inner >> 4 == 4)
		return ETH_P_IP;
	return *inner >> 4 == 6 ? ETH_P_IPV6 : 0;
}

struct vxlan_hdr {
	__u8 flags;
	__u8 reserved[3];
	__be32 vni;			/* network id in the high 24 bits */
};

/* The cursor past the UDP header. Returns ETH_P_BRIDGED (a frame follows), or -1. */
static __always_inline int parse_vxlan(struct hdr_cursor *cur, void *data_end)
{
	struct vxlan_hdr *vxlan = cur->pos;

	if ((void *)(vxlan + 1) > data_end || !(vxlan->flags & VXLAN_VNI_VALID))
		return -1;
	cur->pos = vxlan + 1;
	return ETH_P_BRIDGED;
}

/* Open the encapsulation of the given kind, the cursor at its outer
 * transport header: returns the inner packet's transport protocol, its
 * addresses and length in pkt and l4_len, or -1 (and why, in pkt). */
static __always_inline int parse_open_tunnel(struct hdr_cursor *cur, void *data, void *data_end, int kind,
					     int l4proto, struct packet_info *pkt, __u32 *l4_len)
{
	int inner;

	if (kind == SLUICE_TUNNEL_IPIP) {
		inner = l4proto == IPPROTO_IPIP ? ETH_P_IP : ETH_P_IPV6;
	} else if (kind == SLUICE_TUNNEL_GRE) {
		inner = parse_gre(cur, data_end, *l4_len);
	} else {
		if (*l4_len < sizeof(struct udphdr))
			return -1;
		cur->pos += sizeof(struct udphdr);
		inner = kind == SLUICE_TUNNEL_GTPU ? parse_gtpu(cur, data_end, *l4_len - sizeof(struct udphdr)) :
						     parse_vxlan(cur, data_end);
	}
	if (inner < 0 || parse_rejoin(cur, data, pkt) < 0)
		return -1;
	__u16 inner_proto = inner;
	/* A bridged frame's own VLAN tags are the inner flow's business. */
	if (inner_proto == ETH_P_BRIDGED && parse_ethhdr(cur, data_end, &inner_proto) < 0)
		return -1;
	if (inner_proto != ETH_P_IP && inner_proto != ETH_P_IPV6) {
		parse_tunnel_outcome(pkt, SLUICE_TUNNELLED_UNREAD);
		return -1;
	}
	return parse_network(cur, data_end, inner_proto, pkt, l4_len);
}

/* parse_packet() but for the verdict on an encapsulation that failed. */
static __always_inline int parse_frame(void *data, void *data_end, __u32 frame_len,
				       struct packet_info *pkt, __u32 open_tunnels)
{
	struct hdr_cursor cur = { .pos = data };
	__u16 eth_proto;
	__u32 l4_len = 0;

	int stacked = parse_ethhdr(&cur, data_end, &eth_proto);
	if (stacked < 0)
		return -1;
	if (stacked) {
		pkt->tunnel = SLUICE_TUNNEL_QINQ;
		if (!(open_tunnels & TUNNEL_BIT(SLUICE_TUNNEL_QINQ))) {
			parse_tunnel_outcome(pkt, SLUICE_TUNNELLED_CLOSED);
			return -1;
		}
	}
	if (eth_proto != ETH_P_IP && eth_proto != ETH_P_IPV6) {
		parse_tunnel_outcome(pkt, SLUICE_TUNNELLED_UNREAD);
		return -1;
	}
	int l4proto = parse_network(&cur, data_end, eth_proto, pkt, &l4_len);
	if (l4proto < 0)
		return -1;
	/* A fragment's transport header, if any, is in its first piece: an
	 * encapsulation is opened in whole datagrams only. */
	int kind = parse_is_fragment(pkt) ? SLUICE_TUNNEL_NONE : parse_tunnel_kind(&cur, data_end, l4proto);
	if (kind != SLUICE_TUNNEL_NONE) {
		pkt->tunnel = kind;
		if (!(open_tunnels & TUNNEL_BIT(kind)))
			parse_tunnel_outcome(pkt, SLUICE_TUNNELLED_CLOSED);
		else if (parse_rejoin(&cur, data, pkt) < 0)
			return -1;
		else
			l4proto = parse_open_tunnel(&cur, data, data_end, kind, l4proto, pkt, &l4_len);
		if (l4proto < 0 || parse_rejoin(&cur, data, pkt) < 0)
			return -1;
	}
	pkt->l4proto = l4proto;
	pkt->frame_len = frame_len;
	if (l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP) {
		parse_tunnel_outcome(pkt, SLUICE_TUNNELLED_UNREAD);
		return -1;
	}
	if (parse_is_fragment(pkt)) {
		pkt->payload_offset = cur.pos - data;
		__u32 in_frame = pkt->frame_len - pkt->payload_offset;
		pkt->ip_truncated = l4_len > in_frame;
		pkt->payload_len = l4_len > in_frame ? in_frame : l4_len;
		return PACKET_FRAGMENT;
	}
	if ((l4proto == IPPROTO_TCP ? parse_tcphdr(&cur, data_end, pkt, l4_len) :
				      parse_udphdr(&cur, data_end, pkt, l4_len)) < 0)
		return -1;
	pkt->payload_offset = cur.pos - data;
	__u32 in_frame = pkt->frame_len - pkt->payload_offset;
	pkt->ip_truncated = pkt->payload_len > in_frame;
	if (pkt->payload_len > in_frame)
		pkt->payload_len = in_frame;
	return PACKET_UNFRAGMENTED;
}

/* Fill pkt from the frame whose headers are in [data, data_end) and which
 * is frame_len bytes long (an skb's payload may lie past data_end: see
 * ctx_skb.h), opening the encapsulations whose TUNNEL_BIT is set in open_tunnels (a closed one is read as the
 * outer packet it is). Returns PACKET_UNFRAGMENTED for a TCP or UDP packet
 * sluice can judge, PACKET_FRAGMENT for a fragment of a TCP or UDP
 * datagram, -1 for anything else; pkt->tunnel and pkt->tunnel_outcome say
 * what became of an encapsulated one. The payload length comes from the IP
 * header, never from the frame, so Ethernet padding is not mistaken for
 * payload; it is clamped to what the frame really holds. */
static __always_inline int parse_packet(void *data, void *data_end, __u32 frame_len,
					struct packet_info *pkt, __u32 open_tunnels)
{
	int parsed = parse_frame(data, data_end, frame_len, pkt, open_tunnels);

	if (parsed < 0 && pkt->tunnel)
		parse_tunnel_outcome(pkt, SLUICE_TUNNELLED_MALFORMED);
	return parsed;
}

#endif /* SLUICE_PARSING_HELPERS_H */
