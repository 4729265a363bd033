/* SPDX-License-Identifier: GPL-2.0-only */
/* payload.h - a per-CPU copy of the start of a packet's payload.
 *
 * The TLS and HTTP parsers walk lengths read from the packet itself. Rather
 * than prove each of those data-dependent offsets against data_end, the
 * payload is copied once into a scratch buffer whose size is a power of two,
 * and every read masks its offset into that buffer. The verifier then needs
 * no bounds proofs at all, and the parsers check offsets against the number
 * of bytes really copied, which is the only bound that matters to them.
 */
#ifndef SLUICE_PAYLOAD_H
#define SLUICE_PAYLOAD_H

#include "sluice_abi.h"

#define PAYLOAD_COPY_BYTES 2048		/* a full Ethernet payload fits */
#define PAYLOAD_COPY_MASK (PAYLOAD_COPY_BYTES - 1)
#define NAME_BUFFER_MASK 255		/* names are at most SLUICE_NAME_MAX bytes */
#define HTTP_LINES_MAX 32		/* header lines searched for Host */
#define HTTP_LINE_SLOTS_MASK 63		/* slots past HTTP_LINES_MAX absorb writes */

/* Hide a value from the compiler's range analysis. In a loop such as
 * "for (i = 0; i < MAX; i++) if (i >= len) break;" clang, knowing len <= MAX,
 * would fold both tests into "i != len", whose end the verifier cannot see.
 * Hiding i keeps the constant bound in the code. */
#define hide_from_compiler(var) asm volatile("" : "+r"(var))

/* Copy between map values at offsets the verifier cannot bound statically.
 * This is bpf_probe_read_kernel, called by its helper number: bcc 0.26
 * turns that name into the legacy bpf_probe_read, which XDP programs may not
 * call, whenever it cannot read kernel symbol addresses, as under the
 * systemd unit, which grants no CAP_SYSLOG. Every kernel sluice supports
 * (5.18 and later) has the helper. */
static long (*copy_within_maps)(void *dst, __u32 size, const void *src) =
	(void *)BPF_FUNC_probe_read_kernel;

/* What the entry program hands to the inspection stages it tail-calls. */
/* Pass a value through map memory and back. The verifier then knows only
 * that it is some number: the code after it is checked once, rather than
 * once for every value (say, every loop iteration) that could reach it. */
#define forget_range(slot, value) ({ (slot) = (value); *(volatile __u32 *)&(slot); })

/* What parse_client_hello() found. It lives in map memory on purpose: the
 * verifier does not follow values through memory, so flags kept here (name
 * found, ECH seen) do not split its states at every extension. */
struct hello_result {
	__u32 name_off;
	__u32 name_len;
	__u32 found;			/* a server_name was read */
	__u32 ech;			/* an Encrypted Client Hello extension was walked */
	__u32 alpn_off;			/* where the ALPN extension's body lies, if held whole */
	__u32 alpn_len;			/* 0: none walked */
	__u32 cut;			/* the name was found, but the bytes held end before the hello */
	__u32 pad;
};

/* The start of a ClientHello's ALPN extension is kept for the select stage
 * (a power of two): a browser's list ("h2", "http/1.1") takes 14 bytes. */
#define ALPN_COPY_BYTES 64
#define ALPN_COPY_MASK (ALPN_COPY_BYTES - 1)

/* Where a request held in a stream has its parts, found in one pass (see
 * scan_stream_request() in http_host.h); each is 0 until found. */
struct request_layout {
	__u32 line_end;			/* the request line's '\n' */
	__u32 host_line;		/* the first "host:" line of the header section */
	__u32 headers_end;		/* the '\r' or '\n' that starts the blank line */
};

/* What the receiver model (receiver.h) reads of a client segment, besides
 * its payload. The header is copied whole: its options hold a timestamp, or
 * an authentication option the server would refuse the segment for. */
#define TCP_HEADER_MAX 64		/* 60 bytes at most, and a power of two */
#define TCP_HEADER_MASK (TCP_HEADER_MAX - 1)

struct segment_view {
	__u8 header[TCP_HEADER_MAX];	/* the TCP header, options included */
	__u8 header_len;
	__u8 tcp_flags;
	__u8 ttl;			/* TTL or hop limit */
	__u8 hop_by_hop_late;		/* see packet_info */
	/* Found among the options, in map memory: flags held here do not
	 * split the verifier's states at every option (as hello_result). */
	__u32 has_timestamp;
	__u32 tsval;
	__u32 auth_option;		/* MD5 signature or TCP-AO */
};

struct payload_scratch {
	struct flow_key key;		/* the flow being inspected */
	__u32 frame_len;		/* of the packet in hand, for the counters */
	__u32 len;			/* payload bytes copied into bytes[] */
	__u32 raw_name_off;		/* where the name found lies in bytes[] */
	__u32 raw_name_len;		/* 0: the flow has no name */
	__u32 name_len;			/* bytes of name[] in use */
	__u32 payload_offset;		/* where bytes[] was copied from, in the frame */
	__u32 payload_len;		/* the packet's payload from there, copied or not */
	__u8 sender_is_hi;		/* the packet's sender is key's hi end */
	__u8 proto;			/* enum sluice_proto, once known */
	__u8 in_stream;			/* bytes[] was built from the flow's stream (HTTP) */
	__u8 from_fragments;		/* the segment is in frag_scratch.bytes (ip_frag.h), not the frame */
	__u32 forget_slot;		/* see forget_range() */
	__u32 forget_slots[2];		/* ...for gather_handshake() */
	__u32 set_id;			/* the rule set the name leads to, 0: none */
	__u32 seq;			/* the packet's TCP sequence number */
	__u32 segment_offset;		/* its whole payload, as it came: */
	__u32 segment_len;		/* payload_offset/len move past skipped records */
	__u32 header_lines;		/* HTTP: newlines found (see find_line_starts()) */
	__u32 authority_off;		/* HTTP: where an absolute-form target's authority starts, or 0 */
	struct hello_result hello;
	struct request_layout layout;	/* HTTP in a stream */
	__u32 stream_held;		/* the stream is held from its start up to here */
	__u32 alpn_len;			/* bytes of alpn[] in use */
	__u8 alpn[ALPN_COPY_BYTES];	/* the ClientHello's ALPN extension body, from its start */
	struct segment_view segment;	/* the segment's headers, for receiver.h */
	__u8 bytes[PAYLOAD_COPY_BYTES];
	char name[SLUICE_NAME_MAX + 1];	/* the extracted, normalised name */
	__u16 line_starts[HTTP_LINE_SLOTS_MASK + 1]; /* see find_line_starts() */
};

/* Reads from a buffer of mask + 1 bytes (a power of two). The offset is
 * hidden from the compiler, which would otherwise drop a mask it can prove
 * needless, leaving the verifier, which proves less, an unbounded read. */
static __always_inline __u8 masked_u8(const __u8 *bytes, __u32 off, __u32 mask)
{
	hide_from_compiler(off);
	return bytes[off & mask];
}

static __always_inline __u32 masked_be16(const __u8 *bytes, __u32 off, __u32 mask)
{
	return ((__u32)masked_u8(bytes, off, mask) << 8) | masked_u8(bytes, off + 1, mask);
}

static __always_inline __u32 masked_be24(const __u8 *bytes, __u32 off, __u32 mask)
{
	return ((__u32)masked_u8(bytes, off, mask) << 16) | masked_be16(bytes, off + 1, mask);
}

static __always_inline __u8 payload_u8(const __u8 *bytes, __u32 off)
{
	return masked_u8(bytes, off, PAYLOAD_COPY_MASK);
}

static __always_inline __u32 payload_be16(const __u8 *bytes, __u32 off)
{
	return masked_be16(bytes, off, PAYLOAD_COPY_MASK);
}

/* A ClientHello spread over TCP segments or TLS records is put back
 * together in two steps (tcp_stream.h): the client's first bytes are kept
 * per flow, by stream offset, in a client_stream; then the handshake bytes
 * of its records are copied, without their record headers, into a per-CPU
 * handshake_scratch, behind one synthetic record header, where the same
 * ClientHello parser as for a single packet reads them. */
#define STREAM_MASK (SLUICE_STREAM_BYTES - 1)
#define STREAM_ORIGIN_UNKNOWN 0xffffffff
#define HANDSHAKE_BUFFER_BYTES (2 * SLUICE_STREAM_BYTES)
#define HANDSHAKE_MASK (HANDSHAKE_BUFFER_BYTES - 1)

#define STREAM_WORDS (SLUICE_STREAM_BYTES / 64)
#define STREAM_FULL_WORDS (STREAM_WORDS / 64)

struct client_stream {
	__u32 origin;			/* offset of the ClientHello's first record, or unknown */
	__u32 forget_slot;		/* see forget_range() */
	/* Bit i of held[i / 64]: byte i of the stream has been received. Any
	 * number of pieces, in any order, down to single bytes, is tracked
	 * alike; what is held without a gap from a point on is read off it. */
	__u64 held[STREAM_WORDS];
	__u64 full[STREAM_FULL_WORDS];	/* bit w: held[w] is all ones */
	/* By offset from flow_state.stream_base; the slack past
	 * SLUICE_STREAM_BYTES absorbs a chunk written near the end. */
	__u8 bytes[SLUICE_STREAM_BYTES + PAYLOAD_COPY_BYTES];
};

struct handshake_scratch {		/* exactly the largest per-CPU value */
	/* Half for the handshake, half so that a copy of up to
	 * SLUICE_STREAM_BYTES at any offset below it stays inside. */
	__u8 bytes[HANDSHAKE_BUFFER_BYTES];
};

#endif /* SLUICE_PAYLOAD_H */
