/* SPDX-License-Identifier: GPL-2.0-only */
/* ip_frag.h - gather the IP fragments of a datagram, as the receiver will,
 * so that a hello sent in fragments is read like one sent whole.
 *
 * Circumvention tools (zapret's ipfrag, GoodbyeDPI, Geneva) send a flow's
 * first packet as IPv4 fragments or IPv6 Fragment-header fragments, in order
 * or not, so that no single packet holds the name. The server's stack puts
 * them back together; so does this, for datagrams of up to
 * SLUICE_FRAG_BYTES of IP payload, in an LRU table keyed by the addresses,
 * the IP identification and the protocol. Each fragment passes while the
 * datagram is gathered; the fragment that completes it is judged with the
 * datagram's transport payload (sluice_stage_fragment): it takes its flow's
 * verdict, as does every later packet of the flow.
 *
 * The receiver modelled is Linux's (net/ipv4/inet_fragment.c), which treats
 * both families alike: a fragment that repeats exactly the range of one
 * already held is ignored; one that overlaps another otherwise, or
 * contradicts the datagram's length, discards the whole datagram (RFC 5722
 * requires this of IPv6; Linux does it for IPv4 too), and fragments that
 * come after start a new one. Fragments other than the last carry a
 * multiple of 8 bytes: IPv4's excess is trimmed, an IPv6 one is refused.
 * Atomic IPv6 fragments never get here: parsing_helpers.h unwraps them.
 *
 * A fragment sent to expire on the way (a TTL or hop limit too low to reach
 * the server: zapret's and GoodbyeDPI's fakes) would poison the datagram, as
 * a decoy copy of a range or an overlap that discards it. The fragments of
 * one datagram leave their sender together and share a TTL; one that comes
 * with a TTL lower than the datagram's by more than FRAG_TTL_MARGIN is not
 * gathered, and one that comes higher by as much shows that what was held
 * were such decoys: the datagram starts again from it.
 *
 * A fragment with a wrong IPv4 header checksum or version, an IP length
 * past the frame's end, or an IPv6 Hop-by-Hop header not first, is dropped
 * by the receiver before reassembly (ip_rcv_core(), ipv6_rcv(),
 * ip6_protocol_deliver_rcu()), and is not gathered either: zapret's
 * hopbyhop2 puts two Hop-by-Hop headers on a decoy. Their other IPv4
 * options and IPv6 extension headers are not read (receiver.h reads a
 * whole segment's).
 *
 * Bounds: SLUICE_FRAGS_MAX datagrams at once, SLUICE_FRAG_PIECES_MAX
 * fragments and SLUICE_FRAG_BYTES bytes each, SLUICE_FRAG_TIMEOUT_NS from the
 * first fragment on. A datagram past a bound passes unread, and is counted.
 */
#ifndef SLUICE_IP_FRAG_H
#define SLUICE_IP_FRAG_H

#include "maps.h"
#include "checksum.h"
#include "common.h"
#include "payload.h"
#include "parsing_helpers.h"
#include "flow.h"
#include "verdict.h"
#include "quic.h"

#define FRAG_MASK (SLUICE_FRAG_BYTES - 1)
#define FRAG_COPY_MASK (FRAG_COPY_BYTES - 1)
#define FRAG_COPY_CHUNKS (SLUICE_FRAG_BYTES / FRAG_COPY_BYTES)
#define FRAG_PIECES_MASK (SLUICE_FRAG_PIECES_MAX - 1)
/* TTL difference between fragments of one datagram still taken as the
 * same path's: routes that hash the first fragment (ports and all) apart
 * from the others may differ by a hop or two. A decoy must expire between
 * this box and the server, so it arrives lower by that path's hops. */
#define FRAG_TTL_MARGIN 4

enum frag_outcome {
	FRAG_GATHERING = 0,		/* held; the datagram is not whole yet */
	FRAG_COMPLETE,			/* the datagram is whole, in frag_scratch.bytes */
	FRAG_IGNORED,			/* nothing to do with this fragment: it passes */
};

static __always_inline void frag_make_key(const struct packet_info *pkt, struct frag_key *key)
{
	__builtin_memcpy(key->saddr, pkt->saddr, 16);
	__builtin_memcpy(key->daddr, pkt->daddr, 16);
	key->id = pkt->frag_id;
	key->l4proto = pkt->l4proto;
}

/* The datagram's entry, started afresh if new or timed out; 0 if the table refused. */
static __always_inline struct frag_datagram *frag_open(const struct frag_key *key, __u64 now)
{
	struct frag_datagram *datagram = frags.lookup(key);
	__u32 zero = 0;

	if (datagram && time_since(now, datagram->first_ns) <= SLUICE_FRAG_TIMEOUT_NS)
		return datagram;
	if (datagram)
		counter_inc(SLUICE_CNT_FRAG_TIMEOUTS);
	/* A value this large cannot be built on the stack: copy a zeroed one. */
	struct frag_datagram *empty = empty_frags.lookup(&zero);
	if (!empty || frags.update(key, empty) < 0)
		return 0;
	datagram = frags.lookup(key);
	if (datagram) {
		datagram->first_ns = now;
		counter_inc(SLUICE_CNT_FRAG_DATAGRAMS);
	}
	return datagram;
}

/* The receiver gives the datagram up (an overlap, a contradiction): so does this. */
static __always_inline int frag_discard(const struct frag_key *key)
{
	counter_inc(SLUICE_CNT_FRAG_OVERLAPS);
	frags.delete(key);
	return FRAG_IGNORED;
}

/* Past a bound: the datagram's fragments pass unread until it times out. */
static __always_inline int frag_give_up(struct frag_datagram *datagram)
{
	counter_inc(SLUICE_CNT_FRAG_OVERSIZE);
	datagram->oversize = 1;
	return FRAG_IGNORED;
}

/* Copy the fragment's data from the frame to its offset in the datagram. */
static __always_inline int frag_store(struct ctx_buff *ctx, struct frag_datagram *datagram,
				      __u32 frame_offset, __u32 offset, __u32 len)
{
	__u32 done = 0;

	for (int i = 0; i < FRAG_COPY_CHUNKS; i++) {
		__u32 chunk = len - done;
		if (chunk == 0 || chunk > len)
			break;
		if (chunk > FRAG_COPY_BYTES)
			chunk = FRAG_COPY_BYTES;
		/* Both masks show the verifier what the checks above already
		 * hold; hidden, or clang drops them as needless. */
		hide_from_compiler(chunk);
		chunk = ((chunk - 1) & FRAG_COPY_MASK) + 1;
		__u32 at = offset + done;
		hide_from_compiler(at);
		at &= FRAG_MASK;
		if (ctx_load_bytes(ctx, frame_offset + done, &datagram->bytes[at], chunk) < 0)
			return -1;
		done += chunk;
	}
	return 0;
}

/* 1 if a < b, else 0, without a branch (both below 2^32). */
static __always_inline __u64 frag_below(__u64 a, __u64 b)
{
	return (a - b) >> 63;
}

/* 1 if x (below 2^32) is 0, else 0, without a branch. */
static __always_inline __u64 frag_is_zero(__u64 x)
{
	return ((x - 1) >> 63);
}

/* Hold the fragment in hand (scratch->pkt). FRAG_COMPLETE leaves the whole
 * IP payload in scratch->bytes[0, scratch->len) and forgets the datagram. */
static __always_inline int frag_gather(struct ctx_buff *ctx, struct frag_scratch *scratch, __u64 now)
{
	const struct packet_info *pkt = &scratch->pkt;
	struct frag_key key = {};

	/* A decoy fragment the IP layer drops unread (a wrong header
	 * checksum) would poison the datagram as a decoy copy does. Its
	 * header ends where its data starts. */
	if (pkt->ipv4_header_len &&
	    !checksum_ipv4_header_holds(ctx, pkt->payload_offset - pkt->ipv4_header_len, pkt->ipv4_header_len)) {
		counter_inc(SLUICE_CNT_EVASION_BAD_CHECKSUM);
		return FRAG_IGNORED;
	}
	if (pkt->ip_truncated) {
		counter_inc(SLUICE_CNT_EVASION_TRUNCATED);
		return FRAG_IGNORED;
	}
	if (pkt->hop_by_hop_late) {
		counter_inc(SLUICE_CNT_EVASION_HOP_BY_HOP);
		return FRAG_IGNORED;
	}
	__u8 version;
	if (pkt->ipv4_header_len &&
	    (ctx_load_bytes(ctx, pkt->payload_offset - pkt->ipv4_header_len, &version, sizeof(version)) < 0 ||
	     (version >> 4) != 4)) {
		counter_inc(SLUICE_CNT_EVASION_IP_HEADER);
		return FRAG_IGNORED;
	}
	frag_make_key(pkt, &key);
	struct frag_datagram *datagram = frag_open(&key, now);
	if (!datagram || datagram->oversize)
		return FRAG_IGNORED;
	__u32 start = pkt->frag_offset;
	__u32 len = pkt->payload_len;
	if (pkt->frag_more && (len % FRAG_UNIT)) {
		/* RFC 8200 4.5: an IPv6 receiver refuses such a fragment; Linux
		 * trims an IPv4 one to the last whole unit. */
		if (pkt->is_v6)
			return FRAG_IGNORED;
		len -= len % FRAG_UNIT;
	}
	__u32 end = start + len;
	if (len == 0)
		return FRAG_IGNORED;
	__u32 ttl = pkt->ttl;
	if (datagram->pieces && ttl + FRAG_TTL_MARGIN < datagram->ttl) {
		counter_inc(SLUICE_CNT_FRAG_LOW_TTL);
		return FRAG_IGNORED;
	}
	if (datagram->pieces && ttl > datagram->ttl + FRAG_TTL_MARGIN) {
		counter_inc(SLUICE_CNT_FRAG_LOW_TTL);
		datagram->pieces = datagram->received = datagram->total_len = 0;
	}
	if (ttl > datagram->ttl || !datagram->pieces)
		datagram->ttl = ttl;
	/* The last fragment fixes the length: nothing may lie past it, and no
	 * other last fragment may say otherwise. */
	if (!pkt->frag_more) {
		if ((datagram->total_len && datagram->total_len != end))
			return frag_discard(&key);
	} else if (datagram->total_len && end > datagram->total_len) {
		return frag_discard(&key);
	}
	if (end > SLUICE_FRAG_BYTES)
		return frag_give_up(datagram);
	__u32 pieces = datagram->pieces;
	/* Each piece held is weighed without a branch, the answers or-ed
	 * together and acted on after the loop: a branch per test would leave
	 * the verifier three states per piece to follow through the rest of
	 * the stage. As in Linux's ip_frag_queue(), a last fragment that ends
	 * before bytes held discards the datagram even if it repeats a piece;
	 * pieces never overlap, so one this repeats is the only one it meets.
	 *
	 * Hidden from clang: i, or clang folds its two bounds into one count
	 * of min(pieces, SLUICE_FRAG_PIECES_MAX) passes run down to 0, and
	 * 6.1's verifier, which learns nothing from "count != 0" (later
	 * kernels learn that it is at least 1), sees the count go below 0 and
	 * walks the loop without end, an exit left pending at each pass, until
	 * "the sequence of 8193 jumps is too complex"; and the pieces' bounds,
	 * or clang, knowing them 16-bit, turns each frag_below() back into a
	 * compare and a branch. */
	__u64 last = frag_is_zero(pkt->frag_more);
	__u64 repeats = 0, clashes = 0;
	for (int i = 0; i < SLUICE_FRAG_PIECES_MAX; i++) {
		hide_from_compiler(i);
		if (i >= pieces)
			break;
		__u64 piece_start = datagram->start[i];
		__u64 piece_end = datagram->end[i];
		hide_from_compiler(piece_start);
		hide_from_compiler(piece_end);
		__u64 same = frag_is_zero((piece_start ^ start) | (piece_end ^ end));
		__u64 overlaps = frag_below(start, piece_end) & frag_below(piece_start, end);
		repeats |= same;
		clashes |= (overlaps & (same ^ 1)) | (last & frag_below(end, piece_end));
	}
	if (clashes)
		return frag_discard(&key);
	if (repeats)
		return FRAG_IGNORED;	/* a duplicate: Linux drops just it */
	if (pieces >= SLUICE_FRAG_PIECES_MAX)
		return frag_give_up(datagram);
	if (frag_store(ctx, datagram, pkt->payload_offset, start, len) < 0)
		return FRAG_IGNORED;
	/* The check above bounds pieces, so clang drops the mask as needless,
	 * and 6.1's verifier, reading pieces back from the stack, has lost that
	 * bound ("R2 unbounded memory access"): hide it, then mask. */
	__u32 slot = pieces;
	hide_from_compiler(slot);
	slot &= FRAG_PIECES_MASK;
	datagram->start[slot] = start;
	datagram->end[slot] = end;
	datagram->pieces = pieces + 1;
	datagram->received += len;
	if (!pkt->frag_more)
		datagram->total_len = end;
	__u32 total = datagram->total_len;
	if (!total || datagram->received != total)
		return FRAG_GATHERING;
	/* Whole: the pieces never overlap, so the bytes held are the
	 * datagram's. total is 1..SLUICE_FRAG_BYTES; the mask shows the verifier. */
	hide_from_compiler(total);
	total = ((total - 1) & FRAG_MASK) + 1;
	int copied = copy_within_maps(scratch->bytes, total, datagram->bytes);
	frags.delete(&key);
	if (copied < 0)
		return FRAG_IGNORED;
	scratch->len = total;
	counter_inc(SLUICE_CNT_FRAG_REASSEMBLED);
	return FRAG_COMPLETE;
}

/* Copy len bytes (1..SLUICE_FRAG_BYTES) of the gathered datagram from
 * offset on into dst, for the stages that read a segment's payload. */
static __always_inline int frag_copy_gathered(__u8 *dst, __u32 offset, __u32 len)
{
	__u32 zero = 0;
	struct frag_scratch *gathered = frag_buffers.lookup(&zero);

	if (!gathered || offset >= SLUICE_FRAG_BYTES)
		return -1;
	return copy_within_maps(dst, len, &gathered->bytes[offset]);
}

/* Read the whole datagram's transport header into pkt, as parse_packet()
 * reads an unfragmented one; its payload is then scratch->bytes from
 * pkt->payload_offset. Returns 0, or -1 if the header does not fit. */
static __always_inline int frag_parse_transport(struct frag_scratch *scratch, struct packet_info *pkt)
{
	__u32 len = scratch->len;

	__builtin_memcpy(pkt, &scratch->pkt, sizeof(*pkt));
	if (pkt->l4proto == IPPROTO_TCP) {
		struct tcphdr *tcph = (struct tcphdr *)scratch->bytes;
		__u32 hdr_len = tcph->doff * 4;
		if (len < sizeof(*tcph) || hdr_len < sizeof(*tcph) || hdr_len > len)
			return -1;
		pkt->sport = tcph->source;
		pkt->dport = tcph->dest;
		pkt->tcp_flags = scratch->bytes[13];
		pkt->seq = bpf_ntohl(tcph->seq);
		pkt->tcp_header_len = hdr_len;
		pkt->payload_offset = hdr_len;
		pkt->payload_len = len - hdr_len;
		return 0;
	}
	struct udphdr *udph = (struct udphdr *)scratch->bytes;
	if (len < sizeof(*udph))
		return -1;
	pkt->sport = udph->source;
	pkt->dport = udph->dest;
	pkt->tcp_flags = 0;
	pkt->seq = 0;
	pkt->payload_offset = sizeof(*udph);
	pkt->payload_len = len - sizeof(*udph);
	return 0;
}

/* inspection.fragments: drop. The verdict of a fragment in hand: only a
 * datagram's first fragment names its flow, and dropping it is enough, as
 * the receiver cannot rebuild the datagram without it; the others pass. A
 * first fragment of a flow still being inspected, or of one sluice has not
 * seen (TCP) or that opens a QUIC flow, is dropped, as is one too short to
 * tell: no honest sender cuts a header. */
static __always_inline int frag_drop_young(struct ctx_buff *ctx, struct packet_info *pkt,
					   const struct sluice_config *cfg)
{
	__u8 head[sizeof(struct udphdr) + QUIC_HEADER_PEEK];
	struct flow_id id;
	int sender_is_hi;

	if (pkt->frag_offset)
		return verdict_pass_unjudged(pkt->frame_len);
	if (pkt->payload_len < sizeof(head) ||
	    ctx_load_bytes(ctx, pkt->payload_offset, head, sizeof(head)) < 0)
		goto drop;
	/* TCP and UDP headers both start with the ports. */
	__builtin_memcpy(&pkt->sport, head, sizeof(pkt->sport));
	__builtin_memcpy(&pkt->dport, head + 2, sizeof(pkt->dport));
	struct flow_state *flow = flow_lookup(pkt, &id, &sender_is_hi);
	if (flow && flow_is_idle(flow, flow_now(cfg), cfg))
		flow = 0;
	if (flow && flow->state != SLUICE_FLOW_INSPECTING)
		return verdict_apply(flow, flow_client_address(flow, pkt, sender_is_hi), sender_is_hi, pkt->frame_len,
				     pkt->payload_len, cfg);
	if (pkt->l4proto == IPPROTO_UDP && !flow) {
		/* Other UDP has no flows to inspect: only a QUIC client Initial opens one. */
		__u32 udp_len = ((__u32)head[4] << 8) | head[5];
		if (!(cfg->flags & SLUICE_CFG_EVENTS) ||
		    udp_len < sizeof(struct udphdr) + SLUICE_QUIC_INITIAL_MIN_DATAGRAM ||
		    !quic_is_initial_header(head + sizeof(struct udphdr)))
			return verdict_pass_unjudged(pkt->frame_len);
	}
drop:
	counter_inc(SLUICE_CNT_FRAG_DROPPED);
	verdict_account(0, SLUICE_DIR_UP, pkt->frame_len, OUTCOME_DROPPED);
	return CTX_ACT_DROP;
}

#endif /* SLUICE_IP_FRAG_H */
