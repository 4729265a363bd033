/* SPDX-License-Identifier: GPL-2.0-only */
/* tentative.h - client bytes sent at a TTL that may not reach the server,
 * held until the server says whether it received them.
 *
 * A client segment whose TTL (hop limit) is lower than its SYN's by more
 * than inspection.ttl_margin may be a decoy sent to expire on the way (the
 * fake-TTL desync of zapret, ByeDPI, GoodbyeDPI), or real data a client
 * sends low on purpose that still reaches a server a few hops away
 * (zapret's --orig-ttl). Only the server can tell, and it does: what it
 * acknowledges, it received. So a segment refused for its TTL alone (every
 * other check of receiver.h holds) is kept in the flow's stream as
 * tentative: at its offsets where no accepted byte is, marked in
 * client_stream.tentative, never read. Accepted bytes replace tentative
 * ones (stream_mark_held()). On one path a higher TTL goes at least as far
 * as a lower one: the tentative bytes are those of the highest TTL seen
 * (flow_state.tentative_ttl); a segment of a higher TTL starts them
 * afresh, one of a lower TTL is ignored, one of the same adds to them.
 *
 * A segment of the server whose ACK number acknowledges tentative bytes,
 * past what the stream holds in order, confirms them: they are accepted,
 * the flow's TTL floor is lowered to theirs (its later segments at that TTL
 * are accepted at once), and the stream is read again, for the client
 * (sluice_stage_confirm). The server's segment in hand passes: the verdict
 * holds from the flow's next packet on, so a flow a block rule names this
 * late stalls after the server's first answer. An ACK that covers a byte
 * sluice saw the client send neither accepted nor tentatively confirms
 * nothing: the server cannot have received what the client never sent.
 *
 * Nor does a "server" segment the client made itself (the server's
 * addresses and ports, an ACK of its own decoy): on a box with two arms it
 * comes in on the client's interface, and once the server's segments came
 * in on another, it is not let come here (receiver_server_segment_forged(),
 * receiver.h). On one interface nothing tells it from the server's: it is
 * taken at its word. Before any of the server's came in elsewhere, it is
 * taken too, and noted: the server's first from elsewhere finds it out,
 * and the flow is judged afresh (receiver_refute_confirmation()).
 *
 * Only flows still inspected, whose SYN sluice saw (the TTL floor is its),
 * come here; where one direction alone is seen, no ACK ever confirms, and
 * low-TTL bytes stay unread, as a decoy's.
 */
#ifndef SLUICE_TENTATIVE_H
#define SLUICE_TENTATIVE_H

#include "maps.h"
#include "payload.h"
#include "tcp_stream.h"

/* Stream units of 8 bytes a segment's bytes in hand reach: one more than
 * PAYLOAD_COPY_BYTES / 8, for a segment that starts inside a unit. */
#define TENTATIVE_UNITS (PAYLOAD_COPY_BYTES / 8 + 1)

/* Bit k of bits (k < 8) spread to all of byte k (little-endian: the byte
 * at address k of the 8), without a branch: each byte gets a copy of
 * bits, keeps its own bit, and a byte not zero becomes 0xff. */
static __always_inline __u64 tentative_byte_mask(__u64 bits)
{
	__u64 own = ((bits & 0xff) * 0x0101010101010101ULL) & 0x8040201008040201ULL;
	__u64 high = (own | ((own & 0x7f7f7f7f7f7f7f7fULL) + 0x7f7f7f7f7f7f7f7fULL)) & 0x8080808080808080ULL;

	return (high >> 7) * 0xff;
}

/* The tentative bytes are given up (a segment of a higher TTL came). */
static __always_inline void tentative_forget(struct client_stream *stream)
{
	for (__u64 word = 0; word < STREAM_WORDS; word++) {
		__u64 none = 0;
		/* Hidden, or clang makes the loop a memset, which BPF has not. */
		hide_from_compiler(none);
		stream->tentative[word] = none;
	}
}

/* Keep the bytes in hand of the segment (scratch->bytes, its first
 * PAYLOAD_COPY_BYTES) as tentative, where no accepted byte is. Merged 8
 * bytes at a time, by a mask of the bytes to write, without a branch but
 * the loop's end: a branch taken by the data in each round would leave the
 * verifier a way through for each. */
static __always_inline void tentative_store(struct client_stream *stream, const struct flow_state *flow,
					    const struct payload_scratch *scratch)
{
	__u32 offset = scratch->seq - flow->stream_base;
	__u32 len = scratch->len;
	__u32 skip = 0;

	/* Bytes before the stream's start are not part of it (as in
	 * stream_store_received()). */
	if (offset >= 0x80000000U) {
		skip = -offset;
		offset = 0;
	}
	if (skip >= len || offset >= SLUICE_STREAM_BYTES)
		return;
	__u32 end = offset + len - skip;
	if (end > SLUICE_STREAM_BYTES)
		end = SLUICE_STREAM_BYTES;
	__u32 first = offset & ~7U;
	for (__u32 i = 0; i < TENTATIVE_UNITS; i++) {
		__u32 at = first + i * 8;
		if (at >= end)
			break;
		/* at is below SLUICE_STREAM_BYTES already; the mask shows the
		 * verifier (the 8 bytes past it land in the stream's slack). */
		hide_from_compiler(at);
		at &= STREAM_MASK & ~7U;
		__u64 word = at / 64;
		__u64 shift = at % 64;
		/* The unit's bytes the segment covers, less those accepted. */
		__u64 write = (stream_span_in_word(offset, end, word) & ~stream->held[word]) >> shift & 0xff;
		/* Where the unit starts in the copy: before it (from < 0, the
		 * first unit of a segment that starts inside one), the copy's
		 * first bytes go up by as many places. */
		__s64 from = (__s64)at + skip - offset;
		__u64 before = (__u64)from >> 63;
		__u64 up = (__u64)(-from) & -before & 7;
		__u64 src = (__u64)from & (before - 1);
		__u64 theirs, ours;
		hide_from_compiler(src);
		/* Masked into the copy, whose fields after it absorb the 8 bytes. */
		__builtin_memcpy(&theirs, &scratch->bytes[src & PAYLOAD_COPY_MASK], 8);
		theirs <<= up * 8;
		__builtin_memcpy(&ours, &stream->bytes[at], 8);
		__u64 mask = tentative_byte_mask(write);
		ours = (ours & ~mask) | (theirs & mask);
		__builtin_memcpy(&stream->bytes[at], &ours, 8);
		stream->tentative[word] |= write << shift;
	}
}

/* The first offset at or past from (at most SLUICE_STREAM_BYTES) that the
 * client was seen to send neither accepted nor tentatively: the server
 * can have received the bytes before it. Every word is visited, without a
 * branch (as stream_held_end()). */
static __always_inline __u32 tentative_seen_end(const struct client_stream *stream, __u32 from)
{
	__u64 end = SLUICE_STREAM_BYTES, found = 0;

	for (__u64 word = 0; word < STREAM_WORDS; word++) {
		__u64 unseen = ~(stream->held[word] | stream->tentative[word]) & ~stream_span_in_word(0, from, word);
		__u64 first = (stream_is_zero(unseen) ^ 1) & (found ^ 1);
		end = first * (word * 64 + stream_lowest_bit(unseen)) + (first ^ 1) * end;
		found |= first;
	}
	return end;
}

/* A server's ACK number: if it acknowledges tentative bytes past what the
 * stream holds in order, and no byte the client was not seen to send,
 * those bytes are accepted and the flow's TTL floor lowered to theirs.
 * Returns 1 if so: the stream is to be read again. */
static __always_inline int tentative_confirm(struct client_stream *stream, struct flow_state *flow, __u32 ack)
{
	__u32 acked = ack - flow->stream_base;

	if (acked >= 0x80000000U)
		return 0;
	/* Past the stream's first bytes nothing is kept, or read. */
	if (acked > SLUICE_STREAM_BYTES)
		acked = SLUICE_STREAM_BYTES;
	__u32 in_order = stream_held_end(stream, 0);
	if (acked <= in_order || tentative_seen_end(stream, in_order) < acked)
		return 0;
	stream_mark_held(stream, in_order, acked);
	if (flow->tentative_ttl < flow->ttl_floor)
		flow->ttl_floor = flow->tentative_ttl;
	/* No server segment came in elsewhere yet, so this one came in on
	 * the client's interface: the server's first from elsewhere will
	 * tell whether it was the client's (receiver.h). */
	if (!(flow->server & SLUICE_SERVER_ELSEWHERE))
		flow->receiver |= SLUICE_RECEIVER_CONFIRMED_HERE;
	return 1;
}

#endif /* SLUICE_TENTATIVE_H */
