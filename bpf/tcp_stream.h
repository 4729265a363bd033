/* SPDX-License-Identifier: GPL-2.0-only */
/* tcp_stream.h - put back together a ClientHello that spans TCP segments
 * or TLS records.
 *
 * Modern browsers' ClientHellos (1.5-2 KB with post-quantum key shares) do
 * not fit in one segment, Chrome shuffles its extensions so that the name
 * is in the second segment about half the time, and circumvention tools
 * split the hello on purpose, across segments, across records, out of
 * order. The documented throttlers saw none of this.
 *
 * A flow whose first client segment holds an incomplete ClientHello, or
 * whose client segments do not start where its stream starts, keeps its
 * first SLUICE_STREAM_BYTES of client data in a client_stream, each segment
 * at its offset from the client's initial sequence number (from the SYN,
 * or from the first payload seen). A bitmap records which bytes arrived, so
 * pieces of any size, down to one byte, in any order and overlapping, are
 * put together as the server's TCP puts them (see stream_store_received()). After
 * each segment the records held without a gap from the origin on are
 * walked (ChangeCipherSpec records skipped), their
 * handshake bytes copied behind one synthetic record header, and the
 * ordinary ClientHello parser reads the result. An HTTP request is read
 * from the same stream (sluice_stage_stream_http). Inspection still ends
 * with the flow's window.
 */
#ifndef SLUICE_TCP_STREAM_H
#define SLUICE_TCP_STREAM_H

#include "maps.h"
#include "payload.h"
#include "tls_sni.h"
#include "ip_frag.h"

#define STREAM_COPY_CHUNKS 8		/* PAYLOAD_COPY_BYTES each: a GRO'd segment may hold 16 KB */
/* Records walked to gather a ClientHello, in one pass: the verifier
 * follows at most 8192 jumps in one go, three a record here. More passes,
 * each a tail call, walk on: a hello of 2.7 KB cut into records of one
 * byte each (RFC 8446 5.1 allows it, and servers read it) fills the
 * stream's 16 KB in 2731 records. */
#define TLS_RECORDS_PER_PASS 512
#define TLS_MAX_RECORD_LEN 16384	/* RFC 8446 5.1: a plaintext fragment's limit */

/* The flow's stream, created empty the first time. */
static __always_inline struct client_stream *stream_open(const struct flow_key *key)
{
	struct client_stream *stream = streams.lookup(key);
	__u32 zero = 0;

	if (stream)
		return stream;
	/* A value this large cannot be built on the stack: copy a zeroed one. */
	struct client_stream *empty = empty_streams.lookup(&zero);
	if (!empty || streams.update(key, empty) < 0)
		return 0;
	stream = streams.lookup(key);
	if (stream)
		stream->origin = STREAM_ORIGIN_UNKNOWN;
	return stream;
}

/* Copy the segment's payload to its offset; returns where the copy ends
 * (never past SLUICE_STREAM_BYTES), or offset if nothing could be copied. */
static __always_inline __u32 stream_store_segment(struct ctx_buff *ctx, struct client_stream *stream,
					   __u32 payload_offset, __u32 offset, __u32 len)
{
	__u32 done = 0;

	if (offset + len > SLUICE_STREAM_BYTES)
		len = SLUICE_STREAM_BYTES - offset;
	for (int i = 0; i < STREAM_COPY_CHUNKS; i++) {
		__u32 chunk = len - done;
		if (chunk == 0 || chunk > len)
			break;
		if (chunk > PAYLOAD_COPY_BYTES)
			chunk = PAYLOAD_COPY_BYTES;
		hide_from_compiler(chunk);
		chunk = ((chunk - 1) & PAYLOAD_COPY_MASK) + 1;
		__u32 at = offset + done;
		hide_from_compiler(at);		/* or clang drops the mask it deems needless */
		at &= STREAM_MASK;
		if (ctx_load_bytes(ctx, payload_offset + done, &stream->bytes[at], chunk) < 0)
			break;
		done += chunk;
	}
	return offset + done;
}

/* As stream_store_segment(), from a segment gathered out of IP fragments: the
 * bytes at payload_offset in frag_scratch.bytes (ip_frag.h), not the frame. */
static __always_inline __u32 stream_store_gathered(struct client_stream *stream, __u32 payload_offset,
					    __u32 offset, __u32 len)
{
	__u32 zero = 0;
	struct frag_scratch *gathered = frag_buffers.lookup(&zero);
	__u32 done = 0;

	if (!gathered)
		return offset;
	if (offset + len > SLUICE_STREAM_BYTES)
		len = SLUICE_STREAM_BYTES - offset;
	for (int i = 0; i < STREAM_COPY_CHUNKS; i++) {
		__u32 chunk = len - done;
		if (chunk == 0 || chunk > len || payload_offset + done >= SLUICE_FRAG_BYTES)
			break;
		if (chunk > PAYLOAD_COPY_BYTES)
			chunk = PAYLOAD_COPY_BYTES;
		hide_from_compiler(chunk);	/* as in stream_store_segment() */
		chunk = ((chunk - 1) & PAYLOAD_COPY_MASK) + 1;
		__u32 at = offset + done;
		hide_from_compiler(at);
		at &= STREAM_MASK;
		__u32 from = payload_offset + done;
		hide_from_compiler(from);
		from &= FRAG_MASK;
		if (copy_within_maps(&stream->bytes[at], chunk, &gathered->bytes[from]) < 0)
			break;
		done += chunk;
	}
	return offset + done;
}

/* The index of the lowest set bit of x (x != 0), without branches: the
 * bits below it, counted by SWAR popcount. */
static __always_inline __u32 stream_lowest_bit(__u64 x)
{
	__u64 v = (x & -x) - 1;

	v = v - ((v >> 1) & 0x5555555555555555ULL);
	v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
	v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (v * 0x0101010101010101ULL) >> 56;
}

/* 1 if x is 0, else 0: stream_lowest_bit() counts 64 for no bit at all. Written
 * so, clang keeps it arithmetic; "x == 0" it would make a branch. */
static __always_inline __u64 stream_is_zero(__u64 x)
{
	return stream_lowest_bit(x) >> 6;
}

/* The bits of [start, end) in the bitmap word that holds bytes
 * [64 * word, 64 * word + 64), without a branch. */
static __always_inline __u64 stream_span_in_word(__u32 start, __u32 end, __u64 word)
{
	__u64 base = word * 64;
	/* The span's bits in this word: [from, to), clamped to 0..64. */
	__s64 from = (__s64)start - base, to = (__s64)end - base;
	from &= ((__u64)from >> 63) - 1;		/* below 0: 0 */
	to &= ((__u64)to >> 63) - 1;
	__u64 from_past = (63 - (__u64)from) >> 63;	/* from > 63: none */
	__u64 to_past = (63 - (__u64)to) >> 63;		/* to > 63: up to the end */
	__u64 below_to = ((1ULL << (to & 63)) - 1) | -to_past;
	return below_to & (~0ULL << (from & 63)) & (from_past - 1);
}

/* Note [start, end) as received (no longer tentative: accepted bytes
 * replace those, tentative.h), and which words are now full; returns
 * non-zero if any of those bytes had not been received before. Every word
 * is visited, without a branch: a loop that stops where the data says
 * would leave the verifier a way out of it for every word. */
static __always_inline __u64 stream_mark_held(struct client_stream *stream, __u32 start, __u32 end)
{
	__u64 grew = 0;

	if (end <= start || end > SLUICE_STREAM_BYTES)
		return 0;
	for (__u64 word = 0; word < STREAM_WORDS; word++) {
		__u64 span = stream_span_in_word(start, end, word);
		grew |= span & ~stream->held[word];
		__u64 held = stream->held[word] | span;
		stream->held[word] = held;
		stream->tentative[word] &= ~span;
		stream->full[word / 64] |= stream_is_zero(~held) << (word % 64);
	}
	return grew;
}

/* The first offset at or past from that has not been received: the bytes
 * from `from` up to it are held without a gap. The summary of full words
 * finds it in a few steps, and without a branch: called in every way
 * through a stage, it must not multiply the ways the verifier walks. */
static __always_inline __u32 stream_held_end(struct client_stream *stream, __u32 from)
{
	__u64 first = from / 64;
	/* Where clang proves from inside the stream it drops the mask, and
	 * 6.1's verifier, following a path it cannot rule out with from = ~0,
	 * refuses the stage ("map_value pointer offset 536870912 is not
	 * allowed"). Hidden, the mask stays. */
	hide_from_compiler(first);
	first &= STREAM_WORDS - 1;
	__u64 in_first = ~stream->held[first] & (~0ULL << (from % 64));
	__u64 gap_in_first = stream_is_zero(in_first) ^ 1;
	__u64 later = 0, found = 0;

	for (__u64 k = 0; k < STREAM_FULL_WORDS; k++) {
		/* The words past first that are not full: bit b is word 64k + b. */
		__s64 past = first + 1 - k * 64;
		__u64 shift = past & (((__u64)past >> 63) - 1);	/* 0 if past < 0 */
		__u64 none = (63 - shift) >> 63;		/* 1 if shift > 63 */
		__u64 not_full = ~stream->full[k] & (~0ULL << (shift & 63)) & (none - 1);
		__u64 word = (k * 64 + stream_lowest_bit(not_full)) & (STREAM_WORDS - 1);
		__u64 first_found = (stream_is_zero(not_full) ^ 1) & (found ^ 1);
		later += first_found * (word * 64 + stream_lowest_bit(~stream->held[word]));
		found |= first_found;
	}
	__u64 end = gap_in_first * (first * 64 + stream_lowest_bit(in_first)) +
		    (gap_in_first ^ 1) * (found * later + (found ^ 1) * SLUICE_STREAM_BYTES);
	/* from itself may lie past the stream (a segment past it). */
	end = from >= SLUICE_STREAM_BYTES ? from : end;
	return forget_range(stream->forget_slot, end);
}

/* Is byte `at` of the stream held? */
static __always_inline __u64 stream_is_held(const struct client_stream *stream, __u32 at)
{
	return (stream->held[(at / 64) & (STREAM_WORDS - 1)] >> (at % 64)) & 1;
}

/* Do the stream's bytes [at, at + n) equal the segment's from `from` on,
 * as far as its copy in scratch->bytes goes? Compared 8 bytes at a time,
 * the last 8 overlapping the ones before: no mask of byte order. */
static __always_inline int stream_copies_agree(const struct client_stream *stream, __u32 at,
					const struct payload_scratch *scratch, __u32 from, __u32 n)
{
	__u64 differ = 0;

	if (from >= scratch->len)
		return 1;
	if (n > scratch->len - from)
		n = scratch->len - from;
	for (__u32 i = 0; i < 8; i++) {		/* fewer than 8 bytes */
		if (n >= 8 || i >= n)
			break;
		differ |= masked_u8(stream->bytes, at + i, STREAM_MASK) ^
			  masked_u8(scratch->bytes, from + i, PAYLOAD_COPY_MASK);
	}
	for (__u32 i = 0; i < PAYLOAD_COPY_BYTES / 8; i++) {
		__u32 done = i * 8;
		if (n < 8 || done >= n)
			break;
		if (done > n - 8)
			done = n - 8;
		__u32 ours_at = at + done, theirs_at = from + done;
		__u64 ours, theirs;
		/* Masked into the buffers, whose fields after them absorb the 8 bytes. */
		hide_from_compiler(ours_at);
		hide_from_compiler(theirs_at);
		__builtin_memcpy(&ours, &stream->bytes[ours_at & STREAM_MASK], 8);
		__builtin_memcpy(&theirs, &scratch->bytes[theirs_at & PAYLOAD_COPY_MASK], 8);
		differ |= ours ^ theirs;
	}
	return differ == 0;
}

/* Store the segment of the packet in hand as the server's TCP would
 * receive it. Bytes before the stream's start are not part of it (a
 * client may send a segment that begins early on purpose, its first bytes
 * junk: seqovl). Where the segment begins on bytes already held, the
 * receiver keeps one copy (Linux):
 *  - bytes held without a gap from the stream's start were delivered: the
 *    first copy stands (tcp_data_queue() trims a segment at rcv_nxt);
 *  - in the out-of-order queue the copy that starts first stands, and of
 *    two that start at the same place the longer (tcp_data_queue_ofo():
 *    a segment inside a queued one is dropped, one that starts with a
 *    queued one and reaches past it replaces it, one that starts before
 *    queued ones covers them); adjacent queued segments being merged, the
 *    bytes held from a point on stand for the segment that starts there.
 * Under on_evasion: ignore the first copy always stands. Two copies that
 * disagree are a desync: payload_scratch.copies_disagree says so, and
 * payload_scratch.stream_grew whether the segment brought bytes the
 * stream lacked.
 * Returns the offset of the first byte written, or SLUICE_STREAM_BYTES. */
static __always_inline __u32 stream_store_received(struct ctx_buff *ctx, struct client_stream *stream,
					    const struct flow_state *flow, struct payload_scratch *scratch,
					    const struct sluice_config *cfg)
{
	__u32 offset = scratch->seq - flow->stream_base;
	__u32 len = scratch->segment_len;
	__u32 skip = 0;

	scratch->copies_disagree = 0;
	scratch->stream_grew = 0;
	/* Wrapped below zero: the segment starts before the stream. */
	if (offset >= 0x80000000U) {
		skip = -offset;
		offset = 0;
	}
	if (skip >= len || offset >= SLUICE_STREAM_BYTES)
		return SLUICE_STREAM_BYTES;
	__u32 end = offset + len - skip;
	__u32 held = stream_held_end(stream, offset);
	if (held > offset) {
		__u32 overlap = (held < end ? held : end) - offset;
		/* bytes[] starts where the segment does unless records were skipped. */
		if (scratch->payload_offset == scratch->segment_offset &&
		    !stream_copies_agree(stream, offset, scratch, skip, overlap))
			scratch->copies_disagree = 1;
		/* At offset 0, or after a held byte, the held copy started first. */
		int replaces = offset > 0 && !stream_is_held(stream, offset - 1) && end > held &&
			       !(cfg->flags & SLUICE_CFG_NO_RECEIVER_MODEL);
		if (!replaces) {
			skip += held - offset;
			offset = held;
		}
	}
	if (skip >= len || offset >= SLUICE_STREAM_BYTES)
		return SLUICE_STREAM_BYTES;
	len -= skip;
	if (len > SLUICE_STREAM_BYTES - offset)
		len = SLUICE_STREAM_BYTES - offset;
	/* Marked first, where the verifier meets few ways in: the copy
	 * below fails only on offsets the parser has already checked. */
	scratch->stream_grew = stream_mark_held(stream, offset, offset + len) != 0;
	if (scratch->from_fragments)
		stream_store_gathered(stream, scratch->segment_offset + skip, offset, len);
	else
		stream_store_segment(ctx, stream, scratch->segment_offset + skip, offset, len);
	return offset;
}

/* The stream offset of the flow's urgent byte (receiver.h), or ~0. */
static __always_inline __u32 stream_urgent_offset(const struct flow_state *flow)
{
	return flow->receiver & SLUICE_RECEIVER_URGENT ? flow->urgent_at : ~0U;
}

/* Does a TLS record (handshake or ChangeCipherSpec) start at offset, the
 * stream being held from there up to held? Read past the urgent byte, as
 * the server's application reads. */
static __always_inline int stream_starts_a_record(const struct client_stream *stream, __u32 offset, __u32 held,
					   __u32 urgent)
{
	__u32 first = offset + (urgent == offset);
	__u32 second = first + 1 + (urgent == first + 1);
	__u8 type = masked_u8(stream->bytes, first, STREAM_MASK);

	return held > second && masked_u8(stream->bytes, second, STREAM_MASK) == TLS_MAJOR_VERSION &&
	       (type == TLS_CONTENT_HANDSHAKE || type == TLS_CONTENT_CHANGE_CIPHER_SPEC);
}

/* Where the ClientHello starts: where the stream does, or else (junk came
 * first, and was not kept) where the segment just stored starts a record.
 * Pieces are judged by the stream they make, not one by one: the first
 * piece may be a single byte. */
static __always_inline void stream_find_origin(struct client_stream *stream, __u32 stored_at, __u32 urgent)
{
	if (stream->origin != STREAM_ORIGIN_UNKNOWN)
		return;
	if (stream_starts_a_record(stream, 0, stream_held_end(stream, 0), urgent))
		stream->origin = 0;
	else if (stored_at < SLUICE_STREAM_BYTES &&
		 stream_starts_a_record(stream, stored_at, stream_held_end(stream, stored_at), urgent))
		stream->origin = stored_at;
}

/* Does the stream hold the start of a ClientHello or an HTTP request, by
 * what it holds so far: a record found, or a first byte that may begin
 * one (a record's type, a method's first letter, the empty lines a server
 * skips before a request)? Not while its first byte is missing: a first
 * segment read alone, and found to be neither, is never stored. */
static __always_inline int stream_may_hold_a_hello(const struct client_stream *stream)
{
	__u8 first = masked_u8(stream->bytes, 0, STREAM_MASK);

	return stream->origin != STREAM_ORIGIN_UNKNOWN || (stream_is_held(stream, 0) &&
	       (first == TLS_CONTENT_HANDSHAKE || first == TLS_CONTENT_CHANGE_CIPHER_SPEC ||
	       (first >= 'A' && first <= 'Z') || first == '\r' || first == '\n'));
}

/* Copy the stream's bytes [start, end) to view->bytes as the server's
 * application reads them: without the urgent byte, which a receiver takes
 * out of the stream (no SO_OOBINLINE, the default). Returns how many. */
static __always_inline __u32 stream_read_as_delivered(const struct client_stream *stream, __u32 urgent,
					       __u32 start, __u32 end, struct stream_view *view)
{
	__u32 cut = urgent >= start && urgent < end ? urgent : end;
	/* 64-bit, and checked where they are passed on: each copy is at most
	 * SLUICE_STREAM_BYTES, the second placed below that, so both stay
	 * inside the view. */
	__u64 before = cut - start, after = end - cut - (cut < end);

	if (end > SLUICE_STREAM_BYTES || start > end)
		return 0;
	hide_from_compiler(before);
	if (before > SLUICE_STREAM_BYTES ||
	    copy_within_maps(view->bytes, before, &stream->bytes[start & STREAM_MASK]) < 0)
		return 0;
	hide_from_compiler(after);
	if (after > SLUICE_STREAM_BYTES || before > STREAM_MASK ||
	    copy_within_maps(&view->bytes[before], after, &stream->bytes[(cut + 1) & STREAM_MASK]) < 0)
		return before;
	return before + after;
}

enum record_pass {
	RECORDS_GATHERED = 0,		/* the records held end here, or the buffer is full */
	RECORDS_GO_ON,			/* more records than a pass walks: another pass goes on */
	RECORDS_NOT_TLS,
};

/* One pass of copying the handshake bytes of the records in
 * bytes[0, state->end) (a view of the stream from the origin on,
 * stream_read_as_delivered()) into handshake->bytes after room for a
 * synthetic record header, going on from where state says (zeroed before
 * the first pass). Returns enum record_pass. */
static __always_inline int stream_gather_records(const __u8 *bytes, struct handshake_scratch *handshake,
						 struct payload_scratch *scratch, struct record_gathering *state)
{
	__u32 off = state->off;
	__u32 gathered = state->gathered;
	__u32 end = state->end;
	int pass = RECORDS_GO_ON;

	for (int i = 0; i < TLS_RECORDS_PER_PASS; i++) {
		/* Forgotten at the head of each round, so that the verifier meets
		 * one state there, not one per way through the rounds before. */
		off = forget_range(scratch->forget_slots[0], off);
		gathered = forget_range(scratch->forget_slots[1], gathered);
		if (off + TLS_RECORD_HEADER_LEN > end || off >= SLUICE_STREAM_BYTES) {
			pass = RECORDS_GATHERED;
			break;
		}
		__u8 type = masked_u8(bytes, off, STREAM_MASK);
		__u32 fragment = masked_be16(bytes, off + 3, STREAM_MASK);
		if (masked_u8(bytes, off + 1, STREAM_MASK) != TLS_MAJOR_VERSION ||
		    fragment > TLS_MAX_RECORD_LEN ||
		    (type != TLS_CONTENT_HANDSHAKE && type != TLS_CONTENT_CHANGE_CIPHER_SPEC))
			return RECORDS_NOT_TLS;
		off += TLS_RECORD_HEADER_LEN;
		__u32 have = end - off < fragment ? end - off : fragment;
		/* A ChangeCipherSpec record is stepped over: nothing taken. */
		__u32 take = type == TLS_CONTENT_HANDSHAKE ? have : 0;
		if (TLS_RECORD_HEADER_LEN + gathered + take >= SLUICE_STREAM_BYTES) {
			pass = RECORDS_GATHERED;
			break;
		}
		/* Both masks keep the copy inside the buffer: an offset below
		 * SLUICE_STREAM_BYTES, a length of at most as much. */
		hide_from_compiler(take);
		take &= STREAM_MASK;
		__u32 at = TLS_RECORD_HEADER_LEN + gathered;
		hide_from_compiler(at);
		at &= STREAM_MASK;
		if (copy_within_maps(&handshake->bytes[at], take, &bytes[off & STREAM_MASK]) < 0)
			return RECORDS_NOT_TLS;
		gathered += take;
		if (have < fragment) {
			pass = RECORDS_GATHERED;
			break;
		}
		off += fragment;
	}
	state->off = off;
	state->gathered = gathered;
	return pass;
}

/* The gathered handshake bytes behind their synthetic record header;
 * returns the bytes the parser may read (header included), or 0 if none. */
static __always_inline __u32 stream_gathered_handshake(struct handshake_scratch *handshake, __u32 gathered)
{
	if (gathered == 0)
		return 0;
	handshake->bytes[0] = TLS_CONTENT_HANDSHAKE;
	handshake->bytes[1] = TLS_MAJOR_VERSION;
	handshake->bytes[2] = 1;
	handshake->bytes[3] = (gathered >> 8) & 0xff;
	handshake->bytes[4] = gathered & 0xff;
	return TLS_RECORD_HEADER_LEN + gathered;
}

#endif /* SLUICE_TCP_STREAM_H */
