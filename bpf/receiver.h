/* SPDX-License-Identifier: GPL-2.0-only */
/* receiver.h - would the server keep this client segment as it came?
 *
 * Circumvention tools send a decoy before (or after) the real ClientHello,
 * at the same sequence numbers, made so that the server never keeps it: a
 * wrong TCP or IPv4 header checksum, an IP length past the frame's end, an
 * MD5 or TCP-AO option the server has no key for, an RST flag, no ACK
 * flag, an old timestamp, sequence numbers outside the window, an IPv6
 * Hop-by-Hop header where a receiver refuses it, an IPv6 option or routing
 * header it refuses, an IP version not the header's own or an IPv4 option
 * a host refuses (a source route), or a TTL that expires
 * before the server. A middlebox that reads the decoy names the decoy's
 * name. Here each client segment of a flow still inspected is checked as
 * the server's IP and TCP check it (Linux: ip_rcv_core, tcp_v4_rcv,
 * tcp_validate_incoming, ipv6_rcv), and one the server would drop is
 * neither stored nor judged: only the bytes the server accepts name the
 * flow. A low TTL alone is no proof: the segment may reach a server a few
 * hops away. Such a segment is held tentatively until the server's ACK
 * says it arrived (tentative.h).
 *
 * Data in a SYN is provisional: a server without a Fast Open cookie drops
 * it and the client sends its bytes again at the stream's start. The
 * SYN's data names the flow at once (Fast Open), but the next client
 * segment at the stream's start is the truth: the flow is judged again
 * from it, and counted when it says otherwise.
 *
 * An urgent byte (URG) is taken out of the stream by the server's TCP
 * and never read in line (no SO_OOBINLINE, the default): a client may put
 * one inside the name. Its place is noted here, and the stream is read
 * without it (tcp_stream.h, stream_read_as_delivered()).
 *
 * The server's TCP drops a segment whose ACK number acknowledges bytes it
 * never sent, or lies before what it may still take as an old ACK (zapret's
 * badseq with no increment: the real sequence number, the ACK 66000 back;
 * Geneva's corrupted ack). To judge that, the server's own sequence numbers
 * are learnt from its SYN-ACK and the segments it sends while the flow is
 * inspected (receiver_note_server_segment()). Where they are not known (one
 * direction seen, a flow opened before sluice), the ACK number is never
 * held against the client: a real hello refused would go unread.
 *
 * Only flows still inspected come here: an established flow pays nothing.
 */
#ifndef SLUICE_RECEIVER_H
#define SLUICE_RECEIVER_H

#include "maps.h"
#include "checksum.h"
#include "flow.h"
#include "payload.h"
#include "verdict.h"
#include "ip_frag.h"
#include "tcp_stream.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_URG 0x20
#define TCPOPT_END 0
#define TCPOPT_NOP 1
#define TCPOPT_TIMESTAMP 8		/* RFC 7323 */
#define TCPOPT_TIMESTAMP_LEN 10
#define TCPOPT_MD5SIG 19		/* RFC 2385 */
#define TCPOPT_AUTHENTICATION 29	/* TCP-AO, RFC 5925 */
#define TCP_OPTION_BYTES_MAX 40
#define TCP_URGENT_POINTER 18		/* where the header holds it */
#define TCP_ACK_NUMBER 8		/* ...and its ACK number */

#define CSUM_CHUNK 512			/* bpf_csum_diff sums at most this many bytes a call */

/* A receiver's window: a young flow's first bytes lie well within it. */
#define RECEIVE_WINDOW_BYTES 65536

/* A server's sequence numbers span less than this while its flow is
 * inspected; a span as long says its segments are not one connection's
 * (and past 2^31, which end of it a number is after is moot). */
#define SERVER_SPAN_MAX (1U << 30)

#define ETH_TYPE_AT 12			/* where the Ethernet header holds the EtherType */
#define IPV6_HEADER_LEN 40
#define IPV6_NEXT_HEADER 6		/* where the IPv6 header holds it */
#define IPV6_OPTION_PAD1 0
#define IPV6_OPTION_PADN 1
#define IPV6_OPTION_ROUTER_ALERT 5	/* Hop-by-Hop only; its data is 2 bytes (RFC 2711) */
#define IPV6_PADDING_MAX 7		/* more in a row is refused (RFC 4942 2.1.9.5) */
#define IPV6_OPTIONS_MAX 8		/* Linux: net.ipv6.max_{hbh,dst}_opts_number */
/* Steps of the option walk that decide any header: at most IPV6_OPTIONS_MAX
 * options, each after at most IPV6_PADDING_MAX pads, and the step that
 * ends the header or refuses it. */
#define IPV6_OPTION_STEPS ((IPV6_OPTIONS_MAX + 1) * (IPV6_PADDING_MAX + 1))
#define IPV6_ROUTING_MOBILE 2		/* Mobile IPv6's home address (RFC 6275) */
#define IPV6_ROUTING_RPL 3		/* RFC 6554: Linux drops it unless rpl_seg_enabled */
#define IPV6_ROUTING_SEGMENTS 4		/* SRv6, RFC 8754: ... unless seg6_enabled */

#define IPV4_OPTION_END 0
#define IPV4_OPTION_NOOP 1
#define IPV4_OPTION_RECORD_ROUTE 7
#define IPV4_OPTION_TIMESTAMP 68
#define IPV4_OPTION_LOOSE_ROUTE 131
#define IPV4_OPTION_CIPSO 134
#define IPV4_OPTION_STRICT_ROUTE 137
#define IPV4_OPTION_ROUTER_ALERT 148
#define IPV4_OPTIONS_AT 20		/* after the fixed header */
#define IPV4_SEEN_RECORD_ROUTE 1	/* options a header may carry once */
#define IPV4_SEEN_TIMESTAMP 2

/* Would the server's IP layer drop a packet for one of the IPv4 options in
 * header[IPV4_OPTIONS_AT, len)? As Linux's ip_options_compile() reads a
 * packet it receives: an option that runs past the header or claims less
 * than its own two bytes; a Record Route or Timestamp with a pointer
 * before its data, no room at the pointer, a full Timestamp whose
 * overflow count is spent, or either twice; and then ip_rcv_options(): a
 * loose or strict source route (a host's accept_source_route is 0 by
 * default), and CIPSO, which cipso_v4_validate() refuses where no DOI is
 * set up (a host's default). Other options are kept. The walk's numbers go
 * through map memory (forget_range()), so each step is verified once. */
static __always_inline int receiver_ipv4_options_refused(struct payload_scratch *scratch, __u32 len)
{
	const __u8 *header = scratch->segment.ip_header;
	__u32 off = IPV4_OPTIONS_AT, seen = 0;

	for (int i = 0; i < IPV4_HEADER_MAX - IPV4_OPTIONS_AT; i++) {
		off = forget_range(scratch->forget_slot, off);
		seen = forget_range(scratch->forget_slots[0], seen);
		if (off >= len)
			return 0;
		__u8 type = masked_u8(header, off, IPV4_HEADER_MASK);
		if (type == IPV4_OPTION_END)
			return 0;
		if (type == IPV4_OPTION_NOOP) {
			off++;
			continue;
		}
		if (len - off < 2)
			return 1;
		__u32 option_len = masked_u8(header, off + 1, IPV4_HEADER_MASK);
		if (option_len < 2 || option_len > len - off)
			return 1;
		__u32 pointer = option_len > 2 ? masked_u8(header, off + 2, IPV4_HEADER_MASK) : 0;
		if (type == IPV4_OPTION_LOOSE_ROUTE || type == IPV4_OPTION_STRICT_ROUTE || type == IPV4_OPTION_CIPSO)
			return 1;
		if (type == IPV4_OPTION_RECORD_ROUTE) {
			if ((seen & IPV4_SEEN_RECORD_ROUTE) || option_len < 3 || pointer < 4 ||
			    (pointer <= option_len && pointer + 3 > option_len))
				return 1;
			seen |= IPV4_SEEN_RECORD_ROUTE;
		}
		if (type == IPV4_OPTION_TIMESTAMP) {
			if ((seen & IPV4_SEEN_TIMESTAMP) || option_len < 4 || pointer < 5)
				return 1;
			__u8 flags = masked_u8(header, off + 3, IPV4_HEADER_MASK);
			if (pointer <= option_len) {
				/* Room for a stamp; with an address too (flags 1 and 3), for both. */
				if (pointer + 3 > option_len ||
				    (((flags & 0xf) == 1 || (flags & 0xf) == 3) && pointer + 7 > option_len))
					return 1;
			} else if ((flags >> 4) == 0xf) {
				return 1;
			}
			seen |= IPV4_SEEN_TIMESTAMP;
		}
		if (type == IPV4_OPTION_ROUTER_ALERT && option_len < 4)
			return 1;
		off += option_len;
	}
	return 0;
}

/* Where the frame's IPv6 header starts, if it follows the Ethernet header
 * and at most VLAN_TAGS_MAX tags, as the parser reads them; 0 if not (an
 * IPv6 header inside a tunnel is not looked for: the parser does not say
 * where it found it, and telling it would cost the entry program a value
 * more, past Debian 6.1's verifier limit at tc). */
static __always_inline __u32 receiver_ipv6_header_at(struct ctx_buff *ctx)
{
	__u32 at = ETH_TYPE_AT;
	__be16 type;

	for (int i = 0; i <= VLAN_TAGS_MAX; i++) {
		if (ctx_load_bytes(ctx, at, &type, sizeof(type)) < 0)
			return 0;
		if (type == bpf_htons(ETH_P_IPV6))
			return at + sizeof(type);
		if (type != bpf_htons(ETH_P_8021Q_TAG) && type != bpf_htons(ETH_P_8021AD_TAG))
			return 0;
		at += sizeof(struct vlan_tag);
	}
	return 0;
}

/* Would the server's IP layer drop the segment for its IP header, other
 * than its checksum and length (receiver_refuses())? A version that is
 * not the header's own (Linux: ip_rcv_core(), ipv6_rcv()), or an IPv4
 * option it refuses (receiver_ipv4_options_refused()). A segment gathered
 * from fragments is not looked at (its headers were the fragments').
 * ipv6_at: receiver_ipv6_header_at()'s. */
static __always_inline int receiver_ip_header_refused(struct ctx_buff *ctx, struct payload_scratch *scratch,
						      __u32 ipv6_at)
{
	struct segment_view *segment = &scratch->segment;
	__u32 tcp_at = scratch->segment_offset - segment->header_len;
	__u32 len = segment->ipv4_header_len;

	if (scratch->from_fragments)
		return 0;
	if (!len) {
		__u8 first;
		if (!ipv6_at || ctx_load_bytes(ctx, ipv6_at, &first, 1) < 0)
			return 0;
		return (first >> 4) != 6;
	}
	if (len < IPV4_OPTIONS_AT || len > IPV4_HEADER_MAX || tcp_at < len)
		return 0;
	/* len is 20..60 already; the mask shows the verifier a size that fits. */
	hide_from_compiler(len);
	len = ((len - 1) & IPV4_HEADER_MASK) + 1;
	if (ctx_load_bytes(ctx, tcp_at - len, segment->ip_header, len) < 0)
		return 0;
	if ((segment->ip_header[0] >> 4) != 4)
		return 1;
	return len > IPV4_OPTIONS_AT && receiver_ipv4_options_refused(scratch, len);
}

/* Would the server's IPv6 drop a packet for the options of its Hop-by-Hop
 * (hop_by_hop) or Destination Options header of len bytes at offset in the
 * frame? As Linux's ip6_parse_tlv() reads them: an option running past the
 * header, more than 7 bytes of padding in a row or padding that is not
 * zeros, more than 8 options, a Router Alert of another length, or an
 * option the receiver does not know whose type says to discard the packet
 * (its two high bits not 00: RFC 8200 4.2; the few a Linux host knows of
 * those, Jumbo Payload and Home Address, it refuses here too). The walk's
 * numbers go through map memory (forget_range()): each step is verified
 * once, not once per count of pads and options before it. */
static __always_inline int receiver_ipv6_options_refused(struct ctx_buff *ctx, struct payload_scratch *scratch,
							 __u32 offset, __u32 len, int hop_by_hop)
{
	__u32 off = 2, padding = 0, options = 0;	/* after the next header and length bytes */

	for (int i = 0; i < IPV6_OPTION_STEPS; i++) {
		off = forget_range(scratch->forget_slot, off);
		padding = forget_range(scratch->forget_slots[0], padding);
		options = forget_range(scratch->forget_slots[1], options);
		if (off >= len)
			return 0;
		__u8 option[8] = {};
		if (ctx_load_bytes(ctx, offset + off, option, 1) < 0)
			return 0;
		if (option[0] == IPV6_OPTION_PAD1) {
			if (++padding > IPV6_PADDING_MAX)
				return 1;
			off++;
			continue;
		}
		if (len - off < 2)
			return 1;
		if (ctx_load_bytes(ctx, offset + off + 1, &option[1], 1) < 0)
			return 0;
		__u32 option_len = option[1] + 2;
		if (option_len > len - off)
			return 1;
		if (option[0] == IPV6_OPTION_PADN) {
			padding += option_len;
			if (padding > IPV6_PADDING_MAX)
				return 1;
			/* option_len is 2..7 already; the mask shows the verifier. */
			__u32 size = option_len;
			hide_from_compiler(size);
			size = ((size - 1) & 7) + 1;
			if (ctx_load_bytes(ctx, offset + off, option, size) < 0)
				return 0;
#pragma unroll
			for (int k = 2; k < (int)sizeof(option); k++)
				if (k < option_len && option[k])
					return 1;
		} else {
			padding = 0;
			if (++options > IPV6_OPTIONS_MAX || (option[0] >> 6) != 0 ||
			    (hop_by_hop && option[0] == IPV6_OPTION_ROUTER_ALERT && option_len != 4))
				return 1;
		}
		off += option_len;
	}
	return 0;
}

/* Would the server's IPv6 drop a packet for its Routing header, whose type,
 * segments left and length (in 8-byte units past the first 8) are these?
 * Linux (ipv6_rthdr_rcv()) takes one with no segments left, unless it is
 * Mobile IPv6's (type 2), which it takes only with one left and processes
 * then; SRv6 and RPL it drops where they are not turned on (the default);
 * any other with segments left it answers with an ICMP error. */
static __always_inline int receiver_ipv6_routing_refused(__u8 type, __u8 segments_left, __u8 len_8_octets)
{
	if (type == IPV6_ROUTING_SEGMENTS || type == IPV6_ROUTING_RPL)
		return 1;
	if (type == IPV6_ROUTING_MOBILE)
		return segments_left != 1 || len_8_octets != 2;
	return segments_left != 0;
}

/* Would the server's IPv6 drop the segment for one of its extension
 * headers, those between the IPv6 header and TCP's? Walked only where the
 * chain, read from the IPv6 header at ipv6_at (receiver_ipv6_header_at()),
 * ends where the TCP header starts (a tunnelled segment's is not). */
static __always_inline int receiver_ipv6_extension_refused(struct ctx_buff *ctx, struct payload_scratch *scratch,
							   __u32 ipv6_at)
{
	const struct segment_view *segment = &scratch->segment;
	__u32 end = scratch->segment_offset - segment->header_len;	/* where TCP's header starts */
	__u32 at = ipv6_at;
	__u8 next_header;

	if (!scratch->key.ipv6 || scratch->from_fragments || scratch->segment_offset < segment->header_len)
		return 0;
	if (!at || end <= at + IPV6_HEADER_LEN ||
	    ctx_load_bytes(ctx, at + IPV6_NEXT_HEADER, &next_header, sizeof(next_header)) < 0)
		return 0;
	at += IPV6_HEADER_LEN;
	for (int i = 0; i < IPV6_EXT_HEADERS_MAX; i++) {
		__u8 head[4];
		if (at >= end || ctx_load_bytes(ctx, at, head, sizeof(head)) < 0)
			return 0;
		__u32 size = next_header == IPPROTO_FRAGMENT ? sizeof(struct ipv6_frag_hdr) : (head[1] + 1) * 8;
		if (next_header == IPPROTO_ROUTING && receiver_ipv6_routing_refused(head[2], head[3], head[1]))
			return 1;
		if ((next_header == IPPROTO_HOPOPTS || next_header == IPPROTO_DSTOPTS) &&
		    receiver_ipv6_options_refused(ctx, scratch, at, size, next_header == IPPROTO_HOPOPTS))
			return 1;
		next_header = head[0];
		at += size;
	}
	return 0;
}

/* The segment's TCP header, copied from the frame or the gathered datagram. */
static __always_inline int receiver_load_tcp_header(struct ctx_buff *ctx, struct payload_scratch *scratch)
{
	struct segment_view *segment = &scratch->segment;
	__u32 len = segment->header_len;

	if (len < sizeof(struct tcphdr) || len > TCP_HEADER_MAX || scratch->segment_offset < len)
		return -1;
	/* len is 20..TCP_HEADER_MAX already; the mask shows the verifier. */
	hide_from_compiler(len);
	len = ((len - 1) & TCP_HEADER_MASK) + 1;
	if (scratch->from_fragments)
		return frag_copy_gathered(segment->header, scratch->segment_offset - len, len);
	return ctx_load_bytes(ctx, scratch->segment_offset - len, segment->header, len);
}

/* Walk the options for a timestamp and an authentication option. */
static __always_inline void receiver_read_tcp_options(struct payload_scratch *scratch)
{
	struct segment_view *segment = &scratch->segment;
	__u32 off = sizeof(struct tcphdr);
	__u32 end = segment->header_len;

	segment->has_timestamp = 0;
	segment->auth_option = 0;
	for (int i = 0; i < TCP_OPTION_BYTES_MAX; i++) {
		/* Forgotten at the head of each round: one state there for the
		 * verifier, not one per way through the options before. */
		off = forget_range(scratch->forget_slot, off);
		if (off >= end)
			break;
		__u8 kind = masked_u8(segment->header, off, TCP_HEADER_MASK);
		if (kind == TCPOPT_END)
			break;
		if (kind == TCPOPT_NOP) {
			off++;
			continue;
		}
		__u8 len = masked_u8(segment->header, off + 1, TCP_HEADER_MASK);
		if (len < 2 || off + len > end)
			break;
		if (kind == TCPOPT_MD5SIG || kind == TCPOPT_AUTHENTICATION)
			segment->auth_option = 1;
		if (kind == TCPOPT_TIMESTAMP && len == TCPOPT_TIMESTAMP_LEN) {
			segment->has_timestamp = 1;
			segment->tsval = (masked_be16(segment->header, off + 2, TCP_HEADER_MASK) << 16) |
					 masked_be16(segment->header, off + 4, TCP_HEADER_MASK);
		}
		off += len;
	}
}

/* The ones' complement sum of bytes[0, len) (len at most
 * PAYLOAD_COPY_BYTES) added to seed, as bpf_csum_diff() keeps it: 32 bits,
 * unfolded before Linux 6.12, folded to 16 since. bcc 0.26 declares the
 * helper to return an int, so its result is taken as the unsigned 32 bits
 * it is: read as signed, an unfolded sum of 2^31 or more looked like the
 * helper's error, and the segment's checksum was taken as holding (Debian's
 * 6.1 let bad-checksum decoys through). Every size passed here is a
 * multiple of 4 of at most CSUM_CHUNK bytes, which the helper never
 * refuses. Sums of pieces that start 4-aligned add up. */
static __always_inline __u32 receiver_sum_bytes(const __u8 *bytes, __u32 len, __u32 seed)
{
	__u32 whole = len & ~3U;
	__u8 tail[4] = {};

#pragma unroll
	for (int i = 0; i < PAYLOAD_COPY_BYTES / CSUM_CHUNK; i++) {
		if (i * CSUM_CHUNK >= whole)
			break;
		__u32 size = whole - i * CSUM_CHUNK;
		if (size > CSUM_CHUNK)
			size = CSUM_CHUNK;
		/* size is 4..CSUM_CHUNK already; the mask shows the verifier. */
		hide_from_compiler(size);
		size = ((size - 1) & (CSUM_CHUNK - 1)) + 1;
		seed = (__u32)bpf_csum_diff(0, 0, (void *)&bytes[i * CSUM_CHUNK], size, seed);
	}
	/* The last 1-3 bytes, padded with zeros as the checksum pads them. */
#pragma unroll
	for (int k = 0; k < 3; k++)
		if (whole + k < len)
			tail[k] = masked_u8(bytes, whole + k, PAYLOAD_COPY_MASK);
	return (__u32)bpf_csum_diff(0, 0, (void *)tail, sizeof(tail), seed);
}

static __always_inline int receiver_is_mapped_ipv4(const __u8 *addr)
{
	__u64 low;
	__builtin_memcpy(&low, addr, 8);
	return low == 0 && addr[8] == 0 && addr[9] == 0 && addr[10] == 0xff && addr[11] == 0xff;
}

/* Does the segment's TCP checksum hold, over the pseudo-header, its header
 * and its payload? A payload longer than the copy in hand is not checked
 * (1 is returned): no wire frame carries one. */
static __always_inline int receiver_checksum_holds(const struct payload_scratch *scratch)
{
	const struct segment_view *segment = &scratch->segment;
	const struct flow_key *key = &scratch->key;
	const __u8 *src = scratch->sender_is_hi ? key->addr_hi : key->addr_lo;
	const __u8 *dst = scratch->sender_is_hi ? key->addr_lo : key->addr_hi;
	__u32 tcp_len = segment->header_len + scratch->segment_len;
	__be32 pseudo[10] = {};
	__u32 pseudo_len;

	if (scratch->segment_len > PAYLOAD_COPY_BYTES || scratch->payload_len != scratch->segment_len)
		return 1;
	if (receiver_is_mapped_ipv4(src)) {
		__builtin_memcpy(&pseudo[0], src + 12, 4);
		__builtin_memcpy(&pseudo[1], dst + 12, 4);
		pseudo[2] = bpf_htonl((IPPROTO_TCP << 16) | tcp_len);
		pseudo_len = 12;
	} else {
		__builtin_memcpy(&pseudo[0], src, 16);
		__builtin_memcpy(&pseudo[4], dst, 16);
		pseudo[8] = bpf_htonl(tcp_len);
		pseudo[9] = bpf_htonl(IPPROTO_TCP);
		pseudo_len = 40;
	}
	__u32 sum = (__u32)bpf_csum_diff(0, 0, pseudo, pseudo_len, 0);
	__u32 header_len = segment->header_len;
	hide_from_compiler(header_len);
	if (header_len > TCP_HEADER_MAX)
		return 1;
	sum = (__u32)bpf_csum_diff(0, 0, (void *)segment->header, header_len & ~3U, sum);
	return checksum_fold(receiver_sum_bytes(scratch->bytes, scratch->segment_len, sum)) == 0xffff;
}

/* The ones' complement sum of the first len bytes of the payload. */
static __always_inline __u16 receiver_payload_sum(const struct payload_scratch *scratch, __u32 len)
{
	return checksum_fold(receiver_sum_bytes(scratch->bytes, len > scratch->len ? scratch->len : len, 0));
}

/* PAWS compares a segment's timestamp with the last its sender's peer kept
 * from that sender; each end stamps by its own clock. Until the flow's
 * client is known (its SYN, or the segment that named it), both ends'
 * segments come here, and one's timestamps say nothing of the other's: a
 * connection that was open before sluice started would be taken for a
 * decoy, and blocked under on_evasion: block. */
static __always_inline int receiver_tracks_timestamps(const struct flow_state *flow,
						      const struct segment_view *segment)
{
	return segment->has_timestamp && flow->client_known;
}

/* The ACK number of a segment in the frame, or in the datagram gathered
 * out of IP fragments; -1 if it cannot be read. */
static __always_inline int receiver_load_ack_number(struct ctx_buff *ctx, const struct packet_info *pkt,
						    int from_fragments, __u32 *ack)
{
	__u32 at = pkt->payload_offset - pkt->tcp_header_len + TCP_ACK_NUMBER;
	__be32 raw = 0;
	int err = from_fragments ? frag_copy_gathered((__u8 *)&raw, at, sizeof(raw)) :
				   ctx_load_bytes(ctx, at, &raw, sizeof(raw));

	*ack = bpf_ntohl(raw);
	return err < 0 ? -1 : 0;
}

/* A segment from the server's end of a flow opened by the client's SYN,
 * while the flow is inspected: the server's sequence numbers, from its
 * SYN-ACK (one that acknowledges the client's SYN, and the SYN's data if
 * it took them: Fast Open) to the highest it has sent (its SND.NXT, a SYN
 * or FIN taking one number). Only the server's own segments can tell
 * them, and anything that claims to come from it can only widen what is
 * taken (a later end), or make them unknown for good (a SYN-ACK of another
 * number, a segment before the first, a span no young connection has):
 * a client that forged segments of the server would have its own real
 * hello taken for a decoy, and go unread. */
static __always_inline void receiver_note_server_segment(struct ctx_buff *ctx, struct flow_state *flow,
							 const struct packet_info *pkt, int from_fragments)
{
	__u32 end = pkt->seq + pkt->payload_len + (pkt->tcp_flags & TCP_FLAG_SYN ? 1 : 0) +
		    (pkt->tcp_flags & TCP_FLAG_FIN ? 1 : 0);
	__u32 ack;

	if (flow->server & SLUICE_SERVER_LOST)
		return;
	if (!(flow->server & SLUICE_SERVER_SEQ)) {
		if ((pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) != (TCP_FLAG_SYN | TCP_FLAG_ACK) ||
		    receiver_load_ack_number(ctx, pkt, from_fragments, &ack) < 0 ||
		    ack - flow->stream_base > flow->syn_data_len)
			return;
		flow->server_isn = pkt->seq;
		flow->server_end = end;
		flow->server |= SLUICE_SERVER_SEQ;
		return;
	}
	if ((pkt->tcp_flags & TCP_FLAG_SYN) ? pkt->seq != flow->server_isn : (__s32)(pkt->seq - flow->server_isn) < 0) {
		flow->server = (flow->server & ~SLUICE_SERVER_SEQ) | SLUICE_SERVER_LOST;
		return;
	}
	if ((__s32)(end - flow->server_end) > 0)
		flow->server_end = end;
	if (flow->server_end - flow->server_isn >= SERVER_SPAN_MAX)
		flow->server = (flow->server & ~SLUICE_SERVER_SEQ) | SLUICE_SERVER_LOST;
}

/* A segment from the server's end, as a box with two arms (a router, a
 * bridge) sees it: the client's segments come in on one interface, the
 * server's on another. A client can send a segment with the server's
 * addresses and ports: an ACK number that covers its own decoy would
 * confirm it (tentative.h), sequence numbers of its choosing would blur
 * the server's. That segment comes in on the client's interface. So once
 * a server segment came in on an interface other than the client's SYN's
 * (its SYN-ACK, as a rule), one on the client's is not the server's: it is
 * counted as evasion, and says nothing of the server. Where both
 * directions come in on one interface (a router on a stick, sluice
 * attached to one interface), nothing tells a forged segment from the
 * server's, and every one is taken as before.
 *
 * Nor can anything tell before the server's first segment came in: a raw
 * sender may send its decoy and the forged ACK before the server's SYN-ACK
 * arrives. A confirmation on the client's interface then is noted
 * (SLUICE_RECEIVER_CONFIRMED_HERE, tentative.h); the server's first
 * segment from elsewhere, which must come (the server answers the SYN
 * before it acknowledges data), finds it out. */
enum receiver_server_arm {
	SERVER_SEGMENT_OWN = 0,		/* the server's, as far as can be told */
	SERVER_SEGMENT_FORGED,		/* the client's, in the server's name */
	SERVER_SEGMENT_FORGED_BEFORE,	/* the server's first from elsewhere, after a confirmation on
					 * the client's interface: that one was the client's */
};

static __always_inline int receiver_server_segment_forged(struct ctx_buff *ctx, struct flow_state *flow)
{
	if (flow_arm(ctx_ifindex(ctx)) == flow->client_arm)
		return flow->server & SLUICE_SERVER_ELSEWHERE ? SERVER_SEGMENT_FORGED : SERVER_SEGMENT_OWN;
	if (flow->server & SLUICE_SERVER_ELSEWHERE)
		return SERVER_SEGMENT_OWN;
	flow->server |= SLUICE_SERVER_ELSEWHERE;
	if (!(flow->receiver & SLUICE_RECEIVER_CONFIRMED_HERE))
		return SERVER_SEGMENT_OWN;
	flow->receiver &= ~SLUICE_RECEIVER_CONFIRMED_HERE;
	return SERVER_SEGMENT_FORGED_BEFORE;
}

/* Would the server drop the client segment for its ACK number? Linux,
 * tcp_ack() in net/ipv4/tcp_input.c: after(ack, snd_nxt) is dropped
 * (SKB_DROP_REASON_TCP_ACK_UNSENT_DATA, RFC 9293 3.10.7.4), and so is
 * before(ack, snd_una - min(max_window, bytes_acked)), with a challenge ACK
 * (SKB_DROP_REASON_TCP_TOO_OLD_ACK; the min() since "tcp: do not accept
 * ACK of bytes we never sent", Linux 6.7 and the stable kernels). That
 * lower edge is the server's ISN while the client has acknowledged less
 * than a window of its bytes (the SYN-ACK's one number at least), and
 * later after: the ISN is never too strict. A server without the fix takes
 * ACKs back to one window before: zapret's decoys go 66000 back, past any
 * window not scaled. In SYN_RECV (data on the handshake's ACK),
 * tcp_check_req() takes only the ISN + 1; the ISN itself, which the server
 * in ESTABLISHED takes, is let through. The segment's ACK number is in its
 * header, if that was read. */
static __always_inline int receiver_ack_refused(const struct flow_state *flow, const struct segment_view *segment)
{
	return (flow->server & SLUICE_SERVER_SEQ) && segment->ack_read &&
	       (segment->tcp_flags & TCP_FLAG_ACK) &&
	       segment->ack - flow->server_isn > flow->server_end - flow->server_isn;
}

/* A SYN whose TTL is higher than the flow's first SYN's by more than the
 * margin shows that the first was a decoy sent to expire on the way (a
 * flow's segments share a path): the first's timestamp is not held
 * against it (receiver_note_syn()). */
static __always_inline int receiver_syn_outranks_first(const struct flow_state *flow,
							const struct segment_view *segment,
							const struct sluice_config *cfg)
{
	return (segment->tcp_flags & TCP_FLAG_SYN) && flow->ttl_floor &&
	       segment->ttl > flow->ttl_floor + cfg->ttl_margin;
}

/* Why the server would not keep the client segment in hand as it came:
 * a SLUICE_CNT_EVASION_* counter, or 0 if it keeps it. */
static __always_inline __u32 receiver_refuses(const struct flow_state *flow,
						 const struct payload_scratch *scratch,
						 const struct sluice_config *cfg)
{
	const struct segment_view *segment = &scratch->segment;
	__u32 offset = scratch->seq - flow->stream_base;

	/* Dropped by the IP layer before TCP sees it (ip_rcv_core()). */
	if (!segment->ipv4_header_holds)
		return SLUICE_CNT_EVASION_BAD_CHECKSUM;
	if (segment->ip_truncated)
		return SLUICE_CNT_EVASION_TRUNCATED;
	if (segment->hop_by_hop_late)
		return SLUICE_CNT_EVASION_HOP_BY_HOP;
	if (segment->ipv6_extension_refused)
		return SLUICE_CNT_EVASION_IPV6_EXTENSION;
	if (segment->ip_header_refused)
		return SLUICE_CNT_EVASION_IP_HEADER;
	/* An RST's data is never delivered: at rcv_nxt it resets the
	 * connection, anywhere else the receiver answers it with a challenge
	 * ACK and drops it (RFC 5961 3.2, Linux: tcp_validate_incoming()). */
	if (segment->tcp_flags & TCP_FLAG_RST)
		return SLUICE_CNT_EVASION_RST;
	if (!(segment->tcp_flags & (TCP_FLAG_ACK | TCP_FLAG_SYN)))
		return SLUICE_CNT_EVASION_NO_ACK;
	if (segment->auth_option)
		return SLUICE_CNT_EVASION_TCP_AUTH_OPTION;
	/* The stream's start is known from the SYN: a segment that ends before
	 * it repeats what was taken, one far past it is outside the window. */
	if (flow->opened_by_client &&
	    ((offset >= 0x80000000U && -offset >= scratch->segment_len) ||
	     (offset < 0x80000000U && offset >= RECEIVE_WINDOW_BYTES)))
		return SLUICE_CNT_EVASION_OUT_OF_WINDOW;
	if (receiver_tracks_timestamps(flow, segment) && (flow->receiver & SLUICE_RECEIVER_TS_KNOWN) &&
	    (__s32)(flow->ts_recent - segment->tsval) > 1 &&	/* Linux: TCP_PAWS_WINDOW */
	    !receiver_syn_outranks_first(flow, segment, cfg))
		return SLUICE_CNT_EVASION_PAWS;
	if (receiver_ack_refused(flow, segment))
		return SLUICE_CNT_EVASION_BAD_ACK;
	if (!receiver_checksum_holds(scratch))
		return SLUICE_CNT_EVASION_BAD_CHECKSUM;
	/* Last: a segment refused for its TTL alone may yet have reached the
	 * server, which its ACK will tell (tentative.h). */
	if (flow->ttl_floor && segment->ttl + cfg->ttl_margin < flow->ttl_floor)
		return SLUICE_CNT_EVASION_LOW_TTL;
	return 0;
}

/* How far the server holds the client's stream without a gap (its
 * rcv_nxt, as an offset from the stream's start): 0 before any of it. */
static __always_inline __u32 receiver_in_order_end(const struct payload_scratch *scratch)
{
	struct client_stream *stream = streams.lookup(&scratch->key);

	return stream ? stream_held_end(stream, 0) : 0;
}

/* A segment the server keeps: what it says of the flow from now on.
 * in_order_end: receiver_in_order_end() before the segment is stored.
 * The server takes a newer timestamp only from a segment that starts at
 * or before what it holds in order (Linux: tcp_replace_ts_recent(), seq
 * not after rcv_wup; RFC 7323 section 4.3): a decoy sent ahead of the
 * stream with a timestamp from the future is queued, or dropped, and
 * leaves ts_recent alone. Taken from it, the real hello that follows with
 * its true timestamp would look older, a PAWS decoy, and go unread. */
static __always_inline void receiver_note_accepted(struct flow_state *flow, const struct payload_scratch *scratch,
						   __u32 in_order_end)
{
	const struct segment_view *segment = &scratch->segment;
	__u32 offset = scratch->seq - flow->stream_base;

	if (receiver_tracks_timestamps(flow, segment) && (__s32)(offset - in_order_end) <= 0 &&
	    (!(flow->receiver & SLUICE_RECEIVER_TS_KNOWN) || (__s32)(segment->tsval - flow->ts_recent) > 0)) {
		flow->ts_recent = segment->tsval;
		flow->receiver |= SLUICE_RECEIVER_TS_KNOWN;
	}
	if ((segment->tcp_flags & TCP_FLAG_SYN) && scratch->segment_len) {
		flow->syn_data_len = scratch->segment_len;
		flow->syn_data_sum = receiver_payload_sum(scratch, scratch->segment_len);
		flow->receiver |= SLUICE_RECEIVER_SYN_DATA;
	}
}

/* A bare client SYN of the flow's connection that the server keeps
 * (receiver_refuses()). The server takes the timestamp of the SYN that
 * reaches it first; one sent again moves nothing (Linux: tcp_check_req()
 * answers it with the SYN-ACK again, tcp_validate_incoming() with a
 * challenge ACK once established). So the first SYN's stamp stands, unless
 * this one outranks it (receiver_syn_outranks_first()): then it takes the
 * first's place, its TTL the flow's floor. */
static __always_inline void receiver_note_syn(struct flow_state *flow, const struct payload_scratch *scratch,
					      const struct sluice_config *cfg)
{
	const struct segment_view *segment = &scratch->segment;

	if (receiver_syn_outranks_first(flow, segment, cfg)) {
		flow->ttl_floor = segment->ttl;
		flow->receiver &= ~SLUICE_RECEIVER_TS_KNOWN;
	}
	if (receiver_tracks_timestamps(flow, segment) && !(flow->receiver & SLUICE_RECEIVER_TS_KNOWN)) {
		flow->ts_recent = segment->tsval;
		flow->receiver |= SLUICE_RECEIVER_TS_KNOWN;
	}
}

/* Take the urgent pointer of a kept segment with URG set as Linux does
 * (tcp_check_urg(), tcp_stdurg off, the default): it points one past the
 * urgent byte (0: at the segment's first byte). A mark on bytes already
 * delivered is ignored, and only a later mark replaces one: the receiver
 * takes out the latest urgent byte alone, the one before is read in line.
 * Returns 1 if the urgent byte is in the stream's first bytes, where names
 * are read. in_order_end: receiver_in_order_end(). */
static __always_inline int receiver_take_urgent_mark(struct flow_state *flow, const struct payload_scratch *scratch,
						     __u32 in_order_end)
{
	const struct segment_view *segment = &scratch->segment;
	__u32 pointer = masked_be16(segment->header, TCP_URGENT_POINTER, TCP_HEADER_MASK);
	/* The pointer counts from the segment's own sequence number, a SYN's too. */
	__u32 seq = scratch->seq - (segment->tcp_flags & TCP_FLAG_SYN ? 1 : 0);
	__u32 at = seq + pointer - (pointer ? 1 : 0) - flow->stream_base;

	if (at >= 0x80000000U || at < in_order_end)
		return 0;
	if ((flow->receiver & SLUICE_RECEIVER_URGENT) && at <= flow->urgent_at)
		return 0;
	/* Past the stream's first bytes, how far matters not: it is never read. */
	flow->urgent_at = at > 0xffff ? 0xffff : at;
	flow->receiver |= SLUICE_RECEIVER_URGENT;
	return at < SLUICE_STREAM_BYTES;
}

/* A flow caught at evasion, under inspection.on_evasion: block. key: the
 * flow's; client_is_hi: the end that evaded (a forged server segment's
 * sender is the flow's client). */
static __always_inline void receiver_block_evasion(struct flow_state *flow, const struct flow_key *key,
						   int client_is_hi)
{
	flow->state = SLUICE_FLOW_CLASSIFIED;
	flow->rule_id = 0;
	flow->action = SLUICE_ACTION_BLOCK;
	flow->trigger_pending = 0;	/* its opening judgement's trigger, if any, is moot */
	flow->client_is_hi = client_is_hi;
	flow->client_known = 1;
	flow->streaming = 0;
	streams.delete(key);
}

/* The flow is to be judged afresh from the segment in hand: the bytes that
 * named it (the SYN's data) never reached the server's application. */
static __always_inline void receiver_inspect_again(struct flow_state *flow, const struct flow_key *key,
						   const struct sluice_config *cfg)
{
	flow->state = SLUICE_FLOW_INSPECTING;
	/* Back to what its opening packet made of it, if anything. */
	verdict_put_under_rule(flow, flow->opening_rule_id, cfg);
	flow->proto = SLUICE_PROTO_UNKNOWN;
	flow->streaming = 0;
	streams.delete(key);
}

/* Under inspection.on_evasion: judge, a flow whose tentative bytes a
 * forged ACK confirmed (SERVER_SEGMENT_FORGED_BEFORE): what named it never
 * reached the server, and it is judged afresh. The TTL floor that ACK
 * lowered is lost with it: the floor goes to the top, so that every client
 * segment is held tentatively until the server's own ACK confirms it and
 * lowers the floor to its TTL. The server's numbers, if a forged SYN-ACK
 * gave them, are learnt again from the server's. */
static __always_inline void receiver_refute_confirmation(struct flow_state *flow, const struct flow_key *key,
							 const struct sluice_config *cfg)
{
	receiver_inspect_again(flow, key, cfg);
	flow->ttl_floor = 255;
	flow->tentative_ttl = 0;
	flow->server &= ~(SLUICE_SERVER_SEQ | SLUICE_SERVER_LOST);
}

#endif /* SLUICE_RECEIVER_H */
