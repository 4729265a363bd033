/* SPDX-License-Identifier: GPL-2.0-only */
/* block_reply.h - answer the client of a blocked TCP flow, so that it fails
 * at once instead of waiting for its own timeout.
 *
 * Under a block rule with method reset (or page, for a flow that is not
 * plain HTTP), every packet the client sends is turned, in place, into a
 * TCP RST back to the client: MACs, addresses and ports swapped, the
 * sequence number the client expects next (its packet's acknowledgement
 * number) and an acknowledgement of everything it sent, so that its stack
 * takes the RST as in window (RFC 5961 wants the sequence number exact).
 * Under method page, the plain-HTTP request is answered instead with the
 * rule's 451 response (RFC 7725) and a FIN, from the block_pages map the
 * controller fills; whatever the client sends after it is reset.
 *
 * The reply leaves by XDP_TX (at tc ingress, --hook tc: by a clone
 * redirected out, and the skb becomes the server's RST; reply_hand_up()).
 * XDP cannot also send the RST the server needs
 * to free its socket (one packet in, at most one out): when the controller
 * has put sluice_tc_reset on the interface's tc ingress
 * (SLUICE_CFG_SERVER_RESETS), the reply is passed up instead, tagged with
 * a reply_meta in the XDP metadata, and that program sends it out of the
 * interface it came in on and a RST on to the server (sluice_tc.c).
 *
 * The reply drops IP options and IPv6 extension headers (they described
 * the client's packet, not ours) and the TCP options. A fragment, or
 * anything else this cannot rewrite, is dropped, as under method drop.
 * The rule's counters count each answered packet as dropped (it never
 * reaches the server) and the answer in resets or pages.
 *
 * Handing the reply up also serves where XDP_TX cannot: a veth in native
 * mode transmits XDP_TX frames only to a peer with NAPI (an XDP program, or
 * GRO with its own conditions), and it leaves a frame from its peer's stack
 * no room to grow by a page, which sluice_tc_reset then makes instead.
 */
#ifndef SLUICE_BLOCK_REPLY_H
#define SLUICE_BLOCK_REPLY_H

#include <uapi/linux/pkt_cls.h>

#include "sluice_abi.h"
#include "parsing_helpers.h"
#include "maps.h"
#include "ctx.h"
#include "checksum.h"
#include "flow.h"

#define REPLY_TCP_FIN 0x01
#define REPLY_TCP_RST 0x04
#define REPLY_TCP_PSH 0x08
#define REPLY_TCP_ACK 0x10
#define REPLY_TTL 64
#define REPLY_IPV4_DONT_FRAGMENT 0x4000
#define REPLY_PAGE_WINDOW 65535
#define REPLY_PAGE_MASK (SLUICE_PAGE_BYTES_MAX - 1)
#define REPLY_META_MAGIC 0x51CE4E57	/* "a reply from sluice's XDP" */

/* What the XDP program hands sluice_tc_reset with a reply it passes up:
 * the client's own sequence and acknowledgement numbers, from which the
 * server's RST is made (the reply itself holds only their answers). */
struct reply_meta {
	__u32 magic;			/* REPLY_META_MAGIC */
	__u32 client_seq;		/* host order */
	__u32 client_ack;
	__u32 page_rule;		/* non-zero: the reply is to be this rule's page, which
					 * XDP had no room to grow the frame for */
	__u32 generation;		/* the policy the page is of (policy_maps.h) */
};

/* The client's packet, as far as a reply needs it. */
struct reply_request {
	__u8 client_mac[ETH_ALEN];
	__u8 edge_mac[ETH_ALEN];
	__u8 client_addr[16];		/* IPv4 as ::ffff:a.b.c.d */
	__u8 server_addr[16];
	__be16 client_port;
	__be16 server_port;
	__u32 seq;			/* host order */
	__u32 ack;
	__u32 l3_offset;		/* where the IP header starts (past any VLAN tags) */
	__u32 consumed;			/* sequence numbers the packet took: payload, SYN, FIN */
	__u8 flags;
	__u8 is_v6;
};

/* Read the client's TCP packet; -1 for anything a reply cannot answer. */
static __always_inline int reply_read_request(void *data, void *data_end, struct reply_request *req)
{
	struct hdr_cursor cur = { .pos = data };
	struct packet_info pkt = {};
	struct ethhdr *eth = data;
	__u32 l4_len = 0;
	__u16 proto;

	/* 0: a whole TCP or UDP packet, no fragment; in no encapsulation
	 * but QinQ, whose tags the reply's L2 header keeps: inside the others
	 * a reply would need its own outer headers, and a blocked flow's
	 * packets are dropped instead. */
	if (parse_packet(data, data_end, data_end - data, &pkt, TUNNELS_REPLIED) != 0 ||
	    pkt.l4proto != IPPROTO_TCP)
		return -1;
	/* Walk again to where the IP and TCP headers start. */
	if (parse_ethhdr(&cur, data_end, &proto) < 0)
		return -1;
	req->l3_offset = cur.pos - data;
	if ((proto == ETH_P_IP ? parse_iphdr(&cur, data_end, &pkt, &l4_len) :
				 parse_ip6hdr(&cur, data_end, &pkt, &l4_len)) != IPPROTO_TCP)
		return -1;
	struct tcphdr *tcph = cur.pos;
	if ((void *)(tcph + 1) > data_end)
		return -1;
	__u32 tcp_len = tcph->doff * 4;
	if (tcp_len < sizeof(*tcph) || tcp_len > l4_len)
		return -1;
	__builtin_memcpy(req->client_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(req->edge_mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(req->client_addr, pkt.saddr, 16);
	__builtin_memcpy(req->server_addr, pkt.daddr, 16);
	req->client_port = tcph->source;
	req->server_port = tcph->dest;
	req->seq = bpf_ntohl(tcph->seq);
	req->ack = bpf_ntohl(tcph->ack_seq);
	req->flags = ((__u8 *)tcph)[13];
	req->is_v6 = proto == ETH_P_IPV6;
	req->consumed = l4_len - tcp_len + !!(req->flags & TCP_FLAG_SYN) + !!(req->flags & REPLY_TCP_FIN);
	return 0;
}

/* 16-bit ones' complement arithmetic (RFC 1071). Words are summed as they
 * lie in memory: the sum of byte-swapped words is the byte-swapped sum, so
 * a checksum summed this way is stored as it comes. */
static __always_inline __u32 reply_sum_words(const void *bytes, __u32 words)
{
	const __u16 *word = bytes;
	__u32 sum = 0;

#pragma unroll
	for (__u32 i = 0; i < words; i++)
		sum += word[i];
	return sum;
}

/* The client's ones' complement of a word the controller summed big-endian. */
static __always_inline __u32 reply_page_sum(const struct block_page *page)
{
	return bpf_htons(checksum_fold(page->csum));
}

/* Write the TCP header at tcph, whose pseudo-header sums to sum. */
static __always_inline void reply_write_tcp(struct tcphdr *tcph, const struct reply_request *req,
					    __u32 seq, __u32 ack, __u8 flags, __u16 window, __u32 sum)
{
	tcph->source = req->server_port;
	tcph->dest = req->client_port;
	tcph->seq = bpf_htonl(seq);
	tcph->ack_seq = bpf_htonl(ack);
	*(__be16 *)((__u8 *)tcph + 12) = bpf_htons((sizeof(*tcph) / 4) << 12 | flags);
	tcph->window = bpf_htons(window);
	tcph->check = 0;
	tcph->urg_ptr = 0;
	tcph->check = (__u16)~checksum_fold(sum + reply_sum_words(tcph, sizeof(*tcph) / 2));
}

/* Write the headers of the reply to the packet req was read from, back to
 * its sender, into the frame, whose L2 header is that packet's: carrying
 * payload_len bytes that sum to payload_sum. Returns -1 if the frame is too
 * short for them. */
static __always_inline int reply_write_headers(void *data, void *data_end, const struct reply_request *req,
					       __u32 seq, __u32 ack, __u8 flags, __u16 window,
					       __u32 payload_len, __u32 payload_sum)
{
	struct ethhdr *eth = data;
	void *l3 = data + (req->l3_offset & 0x3f);	/* Ethernet and at most two VLAN tags */
	const __u8 *src = req->server_addr;
	const __u8 *dst = req->client_addr;
	__u32 tcp_len = sizeof(struct tcphdr) + payload_len;
	/* The pseudo-header's protocol and length words, and the payload. */
	__u32 sum = bpf_htons(IPPROTO_TCP) + bpf_htons(tcp_len) + payload_sum;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_source, req->edge_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, req->client_mac, ETH_ALEN);
	if (req->is_v6) {
		struct ipv6hdr *ip6h = l3;
		struct tcphdr *tcph = (void *)(ip6h + 1);
		if ((void *)(tcph + 1) > data_end)
			return -1;
		*(__be32 *)ip6h = bpf_htonl(0x60000000);	/* version 6, no traffic class or flow label */
		ip6h->payload_len = bpf_htons(tcp_len);
		ip6h->nexthdr = IPPROTO_TCP;
		ip6h->hop_limit = REPLY_TTL;
		__builtin_memcpy(&ip6h->saddr, src, 16);
		__builtin_memcpy(&ip6h->daddr, dst, 16);
		sum += reply_sum_words(src, 8) + reply_sum_words(dst, 8);
		reply_write_tcp(tcph, req, seq, ack, flags, window, sum);
		return 0;
	}
	struct iphdr *iph = l3;
	struct tcphdr *tcph = (void *)(iph + 1);
	if ((void *)(tcph + 1) > data_end)
		return -1;
	*(__u8 *)iph = 0x45;				/* version 4, no options */
	iph->tos = 0;
	iph->tot_len = bpf_htons(sizeof(*iph) + tcp_len);
	iph->id = 0;
	iph->frag_off = bpf_htons(REPLY_IPV4_DONT_FRAGMENT);
	iph->ttl = REPLY_TTL;
	iph->protocol = IPPROTO_TCP;
	iph->check = 0;
	__builtin_memcpy(&iph->saddr, src + 12, 4);
	__builtin_memcpy(&iph->daddr, dst + 12, 4);
	iph->check = (__u16)~checksum_fold(reply_sum_words(iph, sizeof(*iph) / 2));
	sum += reply_sum_words(src + 12, 2) + reply_sum_words(dst + 12, 2);
	reply_write_tcp(tcph, req, seq, ack, flags, window, sum);
	return 0;
}

/* The reply's frame length: the client's L2 header, IP and TCP headers
 * without options, and payload_len bytes. */
static __always_inline __u32 reply_frame_len(const struct reply_request *req, __u32 payload_len)
{
	return req->l3_offset + (req->is_v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr)) +
	       sizeof(struct tcphdr) + payload_len;
}

static __always_inline void reply_count(__u32 rule_id, int page)
{
	struct rule_stats *stats = rule_stats.lookup(&rule_id);

	if (!stats)
		return;
	if (page)
		stats->pages += 1;
	else
		stats->resets += 1;
}

/* Turn the reply in skb, sent to the client already, around once more
 * into the RST its server gets: with the client's own sequence number (the
 * one the server expects) and its MACs, as if the client had sent it. */
static __always_inline int reply_turn_to_server(struct __sk_buff *skb, __u32 client_seq, __u32 client_ack)
{
	struct reply_request reply = {};

	if (reply_read_request((void *)(long)skb->data, (void *)(long)skb->data_end, &reply) < 0)
		return -1;
	if (bpf_skb_change_tail(skb, reply_frame_len(&reply, 0), 0) < 0)
		return -1;
	return reply_write_headers((void *)(long)skb->data, (void *)(long)skb->data_end, &reply, client_seq,
				   client_ack, REPLY_TCP_RST | REPLY_TCP_ACK, 0, 0, 0);
}

#ifdef SLUICE_CTX_SKB
/* Send the reply built in the skb, and reset the server too: at tc ingress
 * one program may send two packets. The reply leaves by a clone; the skb,
 * turned into the server's RST, goes on up the stack, which forwards it.
 * Returns -1 if the RST could not be made (the reply has left). */
static __always_inline int reply_hand_up(struct __sk_buff *skb, const struct reply_request *req, __u32 page_rule,
					 const struct sluice_config *cfg)
{
	bpf_clone_redirect(skb, skb->ifindex, 0);
	return reply_turn_to_server(skb, req->seq, req->ack);
}
#else
/* Send the reply built in the frame: XDP_TX, or up to sluice_tc_reset
 * with what it needs to reset the server too (and to make the reply
 * page_rule's page). Returns -1 if it cannot be handed up. */
static __always_inline int reply_hand_up(struct ctx_buff *ctx, const struct reply_request *req, __u32 page_rule,
					 const struct sluice_config *cfg)
{
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct reply_meta)) < 0)
		return -1;	/* a driver without metadata */
	struct reply_meta *meta = (void *)(long)ctx->data_meta;
	if ((void *)(meta + 1) > (void *)(long)ctx->data)
		return -1;
	meta->magic = REPLY_META_MAGIC;
	meta->client_seq = req->seq;
	meta->client_ack = req->ack;
	meta->page_rule = page_rule;
	meta->generation = cfg->generation;
	return 0;
}
#endif

/* rule_id's page under cfg's policy, or 0. */
static __always_inline struct block_page *reply_page_of(const struct sluice_config *cfg, __u32 rule_id)
{
	void *pages = block_pages_of(cfg);

	return pages ? bpf_map_lookup_elem(pages, &rule_id) : 0;
}

/* Answer the client's packet of a flow blocked under rule_id with a page
 * (the request of a plain-HTTP flow, under method page) or a RST. */
static __always_inline int reply_to_client(struct ctx_buff *ctx, const struct flow_state *flow,
					   const struct rule_info *rule, __u32 rule_id,
					   const struct sluice_config *cfg)
{
	struct reply_request req = {};

	if (reply_read_request(ctx_data(ctx), ctx_data_end(ctx), &req) < 0)
		return CTX_ACT_DROP;
	/* A RST is never answered: the client is closing already, and the
	 * server may as well hear it. */
	if (req.flags & REPLY_TCP_RST)
		return CTX_ACT_OK;
	/* Without an ACK the client's packet says nothing about what it
	 * expects: a RST then takes sequence number 0 (RFC 9293 3.10.7.1). */
	__u32 seq = req.flags & REPLY_TCP_ACK ? req.ack : 0;
	__u32 ack = req.seq + req.consumed;
	__u32 page_len = 0, payload_sum = 0;
	__u8 flags = REPLY_TCP_RST | REPLY_TCP_ACK;
	__u16 window = 0;
	struct block_page *page = 0;

	if (rule->block_method == SLUICE_BLOCK_PAGE && flow->proto == SLUICE_PROTO_HTTP &&
	    req.consumed && !(req.flags & REPLY_TCP_FIN))
		page = reply_page_of(cfg, rule_id);
	if (page && page->len) {
		/* 1..SLUICE_PAGE_BYTES_MAX already; the mask shows the verifier. */
		page_len = page->len;
		hide_from_compiler(page_len);
		page_len = ((page_len - 1) & REPLY_PAGE_MASK) + 1;
		payload_sum = reply_page_sum(page);
		flags = REPLY_TCP_FIN | REPLY_TCP_PSH | REPLY_TCP_ACK;
		window = REPLY_PAGE_WINDOW;
	}
	/* A driver may leave no room to grow the frame by a page (veth does,
	 * for packets from its peer's stack): sluice_tc_reset then makes the
	 * page from the RST, or without it, the client is reset instead. */
	__u32 page_rule = 0;
	if (ctx_resize(ctx, reply_frame_len(&req, page_len)) < 0) {
		if (!page_len)
			return CTX_ACT_DROP;
		page_rule = rule_id;
		page_len = payload_sum = 0;
		flags = REPLY_TCP_RST | REPLY_TCP_ACK;
		window = 0;
		if (ctx_resize(ctx, reply_frame_len(&req, 0)) < 0)
			return CTX_ACT_DROP;
	}
	if (page_len && ctx_store_bytes(ctx, reply_frame_len(&req, 0), page->bytes, page_len) < 0)
		return CTX_ACT_DROP;
	if (reply_write_headers(ctx_data(ctx), ctx_data_end(ctx), &req, seq, ack,
				flags, window, page_len, payload_sum) < 0)
		return CTX_ACT_DROP;
	if ((cfg->flags & SLUICE_CFG_SERVER_RESETS) && reply_hand_up(ctx, &req, page_rule, cfg) == 0) {
		if (!page_rule)
			reply_count(rule_id, page_len != 0);
		return CTX_ACT_OK;
	}
	reply_count(rule_id, page_len != 0);
	return ctx_send_back(ctx);
}

/* The reply stage: the packet in hand is the client's, of a flow blocked
 * under a rule; answer it unless the rule's method is drop. */
static __always_inline int reply_stage(struct ctx_buff *ctx)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct packet_info pkt = {};
	struct flow_id id;
	int sender_is_hi;

	/* 0: a whole TCP or UDP packet, no fragment (encapsulated: see reply_read_request()). */
	if (parse_packet(data, data_end, ctx_len(ctx), &pkt, TUNNELS_REPLIED) != 0 || pkt.l4proto != IPPROTO_TCP)
		return CTX_ACT_DROP;
	struct flow_state *flow = flow_lookup(&pkt, &id, &sender_is_hi);
	struct sluice_config *cfg = config_of_packet();
	if (!flow || !cfg || flow->action != SLUICE_ACTION_BLOCK)
		return CTX_ACT_DROP;
	__u32 rule_id = flow->rule_id;
	struct rule_info *rule = rule_of(cfg, rule_id);
	if (!rule || rule->block_method == SLUICE_BLOCK_DROP)
		return CTX_ACT_DROP;
	return reply_to_client(ctx, flow, rule, rule_id, cfg);
}

/* Turn the RST to the client that reply was read from into page_rule's
 * page (XDP had no room for it); on failure, it stays the RST. */
static __always_inline void reply_make_page(struct __sk_buff *skb, const struct reply_request *reply,
					    __u32 page_rule, __u32 generation)
{
	struct sluice_config *cfg = config.lookup(&generation);
	struct block_page *page = cfg ? reply_page_of(cfg, page_rule) : 0;
	struct reply_request to_client = {};

	if (!page || !page->len)
		return;
	/* The reply's own addressing: written back to the sender of the
	 * reply's reply, it comes out as the reply. */
	__builtin_memcpy(to_client.client_mac, reply->edge_mac, ETH_ALEN);
	__builtin_memcpy(to_client.edge_mac, reply->client_mac, ETH_ALEN);
	__builtin_memcpy(to_client.client_addr, reply->server_addr, 16);
	__builtin_memcpy(to_client.server_addr, reply->client_addr, 16);
	to_client.client_port = reply->server_port;
	to_client.server_port = reply->client_port;
	to_client.l3_offset = reply->l3_offset;
	to_client.is_v6 = reply->is_v6;
	__u32 page_len = page->len;
	hide_from_compiler(page_len);
	page_len = ((page_len - 1) & REPLY_PAGE_MASK) + 1;
	__u32 headers_len = reply_frame_len(reply, 0);
	if (bpf_skb_change_tail(skb, headers_len + page_len, 0) < 0 ||
	    bpf_skb_store_bytes(skb, headers_len, page->bytes, page_len, 0) < 0)
		return;
	if (reply_write_headers((void *)(long)skb->data, (void *)(long)skb->data_end, &to_client, reply->seq,
				reply->ack, REPLY_TCP_FIN | REPLY_TCP_PSH | REPLY_TCP_ACK, REPLY_PAGE_WINDOW,
				page_len, reply_page_sum(page)) == 0)
		reply_count(page_rule, 1);
}

/* sluice_tc_reset's work, on tc ingress: a reply the XDP program passed
 * up, tagged, is sent back out of the interface it came in on; then the
 * same packet, turned around once more, becomes the RST the server gets,
 * with the client's own sequence number (the one the server expects), and
 * goes back into the stack on that interface, which forwards it. */
static __always_inline int reply_reset_server(struct __sk_buff *skb)
{
	struct reply_meta *tag = (void *)(long)skb->data_meta;
	struct reply_request reply = {};

	if ((void *)(tag + 1) > (void *)(long)skb->data || tag->magic != REPLY_META_MAGIC)
		return TC_ACT_OK;
	__u32 client_seq = tag->client_seq, client_ack = tag->client_ack, page_rule = tag->page_rule;
	__u32 generation = tag->generation;
	/* The stack may keep the metadata: the RST must not come round again. */
	tag->magic = 0;
	if (reply_read_request((void *)(long)skb->data, (void *)(long)skb->data_end, &reply) < 0)
		return TC_ACT_SHOT;
	if (page_rule)
		reply_make_page(skb, &reply, page_rule, generation);
	bpf_clone_redirect(skb, skb->ifindex, 0);
	if (reply_turn_to_server(skb, client_seq, client_ack) < 0)
		return TC_ACT_SHOT;
	/* Back in as if the client had sent it: the stack routes it to the server. */
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

#endif /* SLUICE_BLOCK_REPLY_H */
