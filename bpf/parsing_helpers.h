/* parsing_helpers.h - walk Ethernet, VLAN, IPv4/IPv6 and TCP/UDP headers.
 *
 * Each helper advances a cursor over the packet and checks the bounds of
 * exactly the bytes it is about to read, right before it reads them, so the
 * verifier sees every access proven safe. Anything the data plane does not
 * understand makes the walk fail, and the caller lets the packet pass.
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
#define VLAN_TAGS_MAX 2			/* QinQ: a service tag, then a customer tag */
#define IPV6_EXT_HEADERS_MAX 4		/* hop-by-hop, routing, destination options */
#define IPV4_FRAG_OFFSET_MASK 0x1FFF
#define IPV4_MORE_FRAGMENTS 0x2000
#define IPV6_FRAG_OFFSET_MASK 0xFFF8	/* in bytes already: 13 bits of 8-byte units, shifted by 3 */
#define IPV6_MORE_FRAGMENTS 0x0001
#define FRAG_UNIT 8			/* fragment offsets count 8-byte units */

/* What parse_packet() found. */
#define PACKET_UNFRAGMENTED 0
#define PACKET_FRAGMENT 1		/* one piece of a fragmented datagram: see ip_frag.h */

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
	__u8 is_v6;			/* an IPv6 fragment */
	__u8 frag_ttl;			/* a fragment's TTL (IPv4) or hop limit (IPv6) */
};

static __always_inline int is_fragment(const struct packet_info *pkt)
{
	return pkt->frag_more || pkt->frag_offset;
}

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

static __always_inline int parse_ethhdr(struct hdr_cursor *cur, void *data_end, __u16 *proto)
{
	struct ethhdr *eth = cur->pos;

	if ((void *)(eth + 1) > data_end)
		return -1;
	cur->pos = eth + 1;
	*proto = bpf_ntohs(eth->h_proto);

#pragma unroll
	for (int i = 0; i < VLAN_TAGS_MAX; i++) {
		if (*proto != ETH_P_8021Q_TAG && *proto != ETH_P_8021AD_TAG)
			break;
		struct vlan_tag *tag = cur->pos;
		if ((void *)(tag + 1) > data_end)
			return -1;
		cur->pos = tag + 1;
		*proto = bpf_ntohs(tag->encapsulated_proto);
	}
	return 0;
}

/* IPv4 addresses are stored as IPv4-mapped IPv6 addresses so that one flow
 * key serves both families. */
static __always_inline void ipv4_to_mapped(__u8 *out, __be32 addr)
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
		pkt->frag_ttl = iph->ttl;
	}
	__u32 total_len = bpf_ntohs(iph->tot_len);
	if (total_len < hdr_len)
		return -1;
	ipv4_to_mapped(pkt->saddr, iph->saddr);
	ipv4_to_mapped(pkt->daddr, iph->daddr);
	*l4_len = total_len - hdr_len;
	cur->pos += hdr_len;
	return iph->protocol;
}

static __always_inline int is_skippable_ipv6_ext(__u8 nexthdr)
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
			pkt->is_v6 = 1;
			pkt->frag_ttl = ip6h->hop_limit;
			break;
		}
		if (!is_skippable_ipv6_ext(nexthdr))
			break;
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
	if (!is_fragment(pkt) && is_skippable_ipv6_ext(nexthdr))
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

/* Fill pkt from the frame in [data, data_end). Returns PACKET_UNFRAGMENTED
 * for a TCP or UDP packet sluice can judge, PACKET_FRAGMENT for a fragment of
 * a TCP or UDP datagram, -1 for anything else. The payload length comes
 * from the IP header, never from the frame, so Ethernet padding is not
 * mistaken for payload; it is clamped to what the frame really holds. */
static __always_inline int parse_packet(void *data, void *data_end, struct packet_info *pkt)
{
	struct hdr_cursor cur = { .pos = data };
	__u16 eth_proto;
	__u32 l4_len = 0;
	int l4proto;

	if (parse_ethhdr(&cur, data_end, &eth_proto) < 0)
		return -1;
	if (eth_proto == ETH_P_IP)
		l4proto = parse_iphdr(&cur, data_end, pkt, &l4_len);
	else if (eth_proto == ETH_P_IPV6)
		l4proto = parse_ip6hdr(&cur, data_end, pkt, &l4_len);
	else
		return -1;

	if (l4proto < 0)
		return -1;
	pkt->l4proto = l4proto;
	pkt->frame_len = data_end - data;
	if (is_fragment(pkt)) {
		if (l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP)
			return -1;
		pkt->payload_offset = cur.pos - data;
		__u32 in_frame = pkt->frame_len - pkt->payload_offset;
		pkt->payload_len = l4_len > in_frame ? in_frame : l4_len;
		return PACKET_FRAGMENT;
	}
	if (l4proto == IPPROTO_TCP) {
		if (parse_tcphdr(&cur, data_end, pkt, l4_len) < 0)
			return -1;
	} else if (l4proto == IPPROTO_UDP) {
		if (parse_udphdr(&cur, data_end, pkt, l4_len) < 0)
			return -1;
	} else {
		return -1;
	}
	pkt->payload_offset = cur.pos - data;
	__u32 in_frame = pkt->frame_len - pkt->payload_offset;
	if (pkt->payload_len > in_frame)
		pkt->payload_len = in_frame;
	return PACKET_UNFRAGMENTED;
}

#endif /* SLUICE_PARSING_HELPERS_H */
