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
 * or from the first payload seen). The stream is held without a gap from
 * the ClientHello's first record on; one range past a gap is held too, so
 * that a segment overtaking its predecessor is not lost; retransmissions
 * simply write the same bytes again. After each segment the records from
 * the origin on are walked (ChangeCipherSpec records skipped), their
 * handshake bytes copied behind one synthetic record header, and the
 * ordinary ClientHello parser reads the result. Inspection still ends with
 * the flow's window.
 */
#ifndef SLUICE_TCP_STREAM_H
#define SLUICE_TCP_STREAM_H

#include "maps.h"
#include "payload.h"
#include "tls_sni.h"
#include "ip_frag.h"

#define STREAM_COPY_CHUNKS 8		/* PAYLOAD_COPY_BYTES each: a GRO'd segment may hold 16 KB */
#define TLS_RECORDS_MAX 64		/* records walked to gather one ClientHello */
#define TLS_MAX_RECORD_LEN 16384	/* RFC 8446 5.1: a plaintext fragment's limit */

/* The flow's stream, created empty the first time. */
static __always_inline struct client_stream *open_stream(const struct flow_key *key)
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
static __always_inline __u32 store_segment(struct xdp_md *ctx, struct client_stream *stream,
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
		if (bpf_xdp_load_bytes(ctx, payload_offset + done, &stream->bytes[at], chunk) < 0)
			break;
		done += chunk;
	}
	return offset + done;
}

/* As store_segment(), from a segment gathered out of IP fragments: the
 * bytes at payload_offset in frag_scratch.bytes (ip_frag.h), not the frame. */
static __always_inline __u32 store_gathered(struct client_stream *stream, __u32 payload_offset,
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
		hide_from_compiler(chunk);	/* as in store_segment() */
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

static __always_inline int starts_a_record(const struct client_stream *stream, __u32 offset, __u32 end)
{
	__u8 type = masked_u8(stream->bytes, offset, STREAM_MASK);

	return end >= offset + 2 && masked_u8(stream->bytes, offset + 1, STREAM_MASK) == TLS_MAJOR_VERSION &&
	       (type == TLS_CONTENT_HANDSHAKE || type == TLS_CONTENT_CHANGE_CIPHER_SPEC);
}

/* Hold [start, end) past a gap: merge it with the range already held there
 * if they touch, else keep whichever is nearer the gap. */
static __always_inline void hold_ahead(struct client_stream *stream, __u32 start, __u32 end)
{
	if (stream->ahead_end == 0 || start > stream->ahead_end || end < stream->ahead_start) {
		if (stream->ahead_end == 0 || start < stream->ahead_start) {
			stream->ahead_start = start;
			stream->ahead_end = end;
		}
		return;
	}
	if (start < stream->ahead_start)
		stream->ahead_start = start;
	if (end > stream->ahead_end)
		stream->ahead_end = end;
}

/* Account for [start, end) having been stored. */
static __always_inline void note_segment(struct client_stream *stream, __u32 start, __u32 end)
{
	if (stream->origin == STREAM_ORIGIN_UNKNOWN) {
		if (!starts_a_record(stream, start, end)) {
			hold_ahead(stream, start, end);
			return;
		}
		stream->origin = start;
		stream->filled_end = end;
	} else if (start <= stream->filled_end) {
		if (end > stream->filled_end)
			stream->filled_end = end;
	} else {
		hold_ahead(stream, start, end);
		return;
	}
	if (stream->ahead_end && stream->ahead_start <= stream->filled_end) {
		if (stream->ahead_end > stream->filled_end)
			stream->filled_end = stream->ahead_end;
		stream->ahead_start = stream->ahead_end = 0;
	}
}

/* Copy the handshake bytes of the records held from the origin on into
 * handshake->bytes after a synthetic record header; returns the bytes the
 * parser may read (header included), or 0 if the records are not TLS. */
static __always_inline __u32 gather_handshake(const struct client_stream *stream,
					      struct handshake_scratch *handshake,
					      struct payload_scratch *scratch)
{
	__u32 off = stream->origin;
	__u32 end = stream->filled_end;
	__u32 gathered = 0;

	for (int i = 0; i < TLS_RECORDS_MAX; i++) {
		/* Forgotten at the head of each round, so that the verifier meets
		 * one state there, not one per way through the rounds before. */
		off = forget_range(scratch->forget_slots[0], off);
		gathered = forget_range(scratch->forget_slots[1], gathered);
		if (off + TLS_RECORD_HEADER_LEN > end || off >= SLUICE_STREAM_BYTES)
			break;
		__u8 type = masked_u8(stream->bytes, off, STREAM_MASK);
		__u32 fragment = masked_be16(stream->bytes, off + 3, STREAM_MASK);
		if (masked_u8(stream->bytes, off + 1, STREAM_MASK) != TLS_MAJOR_VERSION ||
		    fragment > TLS_MAX_RECORD_LEN ||
		    (type != TLS_CONTENT_HANDSHAKE && type != TLS_CONTENT_CHANGE_CIPHER_SPEC))
			return 0;
		off += TLS_RECORD_HEADER_LEN;
		__u32 have = end - off < fragment ? end - off : fragment;
		/* A ChangeCipherSpec record is stepped over: nothing taken. */
		__u32 take = type == TLS_CONTENT_HANDSHAKE ? have : 0;
		if (TLS_RECORD_HEADER_LEN + gathered + take >= SLUICE_STREAM_BYTES)
			break;
		/* Both masks keep the copy inside the buffer: an offset below
		 * SLUICE_STREAM_BYTES, a length of at most as much. */
		hide_from_compiler(take);
		take &= STREAM_MASK;
		__u32 at = TLS_RECORD_HEADER_LEN + gathered;
		hide_from_compiler(at);
		at &= STREAM_MASK;
		if (copy_within_maps(&handshake->bytes[at], take, &stream->bytes[off & STREAM_MASK]) < 0)
			return 0;
		gathered += take;
		if (have < fragment)
			break;
		off += fragment;
	}
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
