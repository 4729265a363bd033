/* SPDX-License-Identifier: GPL-2.0-only */
/* scratch.h - the data plane's own working structures, never seen by the
 * controller (what it shares with Python is in sluice_abi.h): the per-CPU
 * copy of a payload and what the parsers found in it, the buffers that put
 * a ClientHello spread over segments back together, and those that gather
 * IP fragments.
 */
#ifndef SLUICE_SCRATCH_H
#define SLUICE_SCRATCH_H

#include "sluice_abi.h"
#include "parsing_helpers.h"
#include "checksum.h"

#define PAYLOAD_COPY_BYTES 2048		/* a full Ethernet payload fits */
#define PAYLOAD_COPY_MASK (PAYLOAD_COPY_BYTES - 1)
#define NAME_BUFFER_MASK 255		/* names are at most SLUICE_NAME_MAX bytes */
#define HTTP_LINES_MAX 32		/* header lines searched for Host */
#define HTTP_LINE_SLOTS_MASK 63		/* slots past HTTP_LINES_MAX absorb writes */

/* What tls_parse_client_hello() found. It lives in map memory on purpose: the
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
	__u32 skipped_to;		/* tls_skip_extensions(): where it stopped... */
	__u32 server_name_at;		/* ...and where it met server_name (both forgotten: forget_range()) */
	__u32 pad;
};

/* The start of a ClientHello's ALPN extension is kept for the select stage. */
#define ALPN_COPY_MASK (SLUICE_ALPN_BYTES - 1)

/* Where the gathering of a ClientHello's records (stream_gather_records())
 * stands between its passes. */
struct record_gathering {
	__u32 off;			/* the next record's header, in the stream view */
	__u32 gathered;			/* handshake bytes copied so far */
	__u32 end;			/* where the view's bytes held in order end */
	__u32 pending;			/* 1: a pass is to go on from here */
};

/* Where a request held in a stream has its parts, found in passes (see
 * http_scan_stream_request() in http_host.h); each is 0 until found. */
struct request_layout {
	__u32 line_end;			/* the request line's '\n' */
	__u32 line_last;		/* its last byte but spaces and CR (nginx takes spaces after the version) */
	__u32 host_line;		/* the first "host:" line of the header section */
	__u32 host_value;		/* its value's first byte: past the colon, spaces and tabs */
	__u32 headers_end;		/* the '\r' or '\n' that starts the blank line */
	__u32 start;			/* where the request starts, past empty lines */
	__u32 end;			/* where the bytes held in order end */
	__u32 scan_at;			/* where the next pass of the scan starts; 0: no pass pending */
	__u64 recent;			/* the scan's last bytes, its shift register */
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
	__u8 ipv4_header_len;		/* see packet_info; 0 where not checked (IPv6, gathered fragments) */
	__u8 ip_truncated;		/* see packet_info */
	/* Found among the options, in map memory: flags held here do not
	 * split the verifier's states at every option (as hello_result). */
	__u32 has_timestamp;
	__u32 tsval;
	__u32 auth_option;		/* MD5 signature or TCP-AO */
	__u32 ack;			/* the ACK number, */
	__u32 ack_read;			/* ...if the header was read */
	__u32 ipv4_header_holds;	/* its IPv4 header checksum holds (or it has none to check) */
	__u32 ipv6_extension_refused;	/* an IPv6 extension header the server refuses (receiver.h) */
	__u32 ip_header_refused;	/* its IP header's version or IPv4 options the server refuses */
	__u8 ip_header[IPV4_HEADER_MASK + 1];	/* the IPv4 header, options included (IPV4_HEADER_MAX bytes at
					 * most), for receiver.h; a power of two, to mask offsets into */
};

/* What the entry program hands to the inspection stages it tail-calls. */
struct payload_scratch {
	struct flow_id id;		/* the flow being inspected: its key in flows, */
	struct flow_key key;		/* ...and in streams and events */
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
	__u32 forget_slot;		/* see forget_range() in verifier.h */
	__u32 forget_slots[2];		/* ...for stream_gather_records() */
	__u32 set_id;			/* the rule set the name leads to, 0: none */
	__u32 seq;			/* the packet's TCP sequence number */
	__u32 segment_offset;		/* its whole payload, as it came: */
	__u32 segment_len;		/* payload_offset/len move past skipped records */
	__u32 header_lines;		/* HTTP: newlines found (see http_find_line_starts()) */
	__u32 authority_off;		/* HTTP: where an absolute-form target's authority starts, or 0 */
	struct hello_result hello;
	struct request_layout layout;	/* HTTP in a stream */
	struct record_gathering records;	/* TLS in a stream */
	__u32 stream_held;		/* the stream is held from its start up to here */
	__u32 copies_disagree;		/* the segment stored said otherwise than bytes held (tcp_stream.h) */
	__u32 confirming;		/* the packet in hand is the server's, whose ACK confirmed tentative
					 * client bytes (tentative.h): the stream is read for the client */
	__u32 stream_grew;		/* the segment stored brought bytes the stream lacked (tcp_stream.h) */
	__u32 alpn_len;			/* bytes of alpn[] in use */
	__u32 quic_verdict;		/* sluice_stage_quic: what the datagram in hand gets, handed over or not */
	__u8 alpn[SLUICE_ALPN_BYTES];	/* the ClientHello's ALPN extension body, from its start */
	struct segment_view segment;	/* the segment's headers, for receiver.h */
	__u8 bytes[PAYLOAD_COPY_BYTES];
	char name[SLUICE_NAME_MAX + 1];	/* the extracted, normalised name */
	__u16 line_starts[HTTP_LINE_SLOTS_MASK + 1]; /* see http_find_line_starts() */
};

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
	__u32 forget_slot;		/* see forget_range() in verifier.h */
	/* Bit i of held[i / 64]: byte i of the stream has been received. Any
	 * number of pieces, in any order, down to single bytes, is tracked
	 * alike; what is held without a gap from a point on is read off it. */
	__u64 held[STREAM_WORDS];
	__u64 full[STREAM_FULL_WORDS];	/* bit w: held[w] is all ones */
	/* Bit i: byte i came only at a TTL that may expire before the server,
	 * flow_state.tentative_ttl's (tentative.h): never read until the
	 * server acknowledges it. A byte is never held and tentative both. */
	__u64 tentative[STREAM_WORDS];
	/* By offset from flow_state.stream_base; the slack past
	 * SLUICE_STREAM_BYTES absorbs a chunk written near the end. */
	__u8 bytes[SLUICE_STREAM_BYTES + PAYLOAD_COPY_BYTES];
};

/* The stream's bytes as the server's application reads them (see
 * stream_read_as_delivered() in tcp_stream.h): the urgent byte taken out. */
struct stream_view {			/* exactly the largest per-CPU value */
	/* Half for the bytes, half so that a copy of up to
	 * SLUICE_STREAM_BYTES at any offset below it stays inside. */
	__u8 bytes[2 * SLUICE_STREAM_BYTES];
};

struct handshake_scratch {		/* exactly the largest per-CPU value */
	/* Half for the handshake, half so that a copy of up to
	 * SLUICE_STREAM_BYTES at any offset below it stays inside. */
	__u8 bytes[HANDSHAKE_BUFFER_BYTES];
};

/* IP fragments gathered into datagrams (ip_frag.h). */
#define FRAG_COPY_BYTES 2048		/* copied from the frame at a time */

struct frag_key {
	__u8 saddr[16];			/* IPv4 as ::ffff:a.b.c.d */
	__u8 daddr[16];
	__u32 id;			/* IPv4's 16-bit identification, or IPv6's 32-bit one */
	__u8 l4proto;
	__u8 pad[3];
};

struct frag_datagram {
	__u64 first_ns;			/* when its first fragment came */
	__u32 total_len;		/* the IP payload's length, once the last fragment came; 0 before */
	__u32 received;			/* bytes held: the pieces never overlap */
	__u32 pieces;			/* start[] and end[] in use */
	__u32 oversize;			/* 1: past a bound, its fragments pass unread */
	__u32 ttl;			/* the highest TTL (hop limit) of the fragments held */
	__u16 start[SLUICE_FRAG_PIECES_MAX];
	__u16 end[SLUICE_FRAG_PIECES_MAX];
	/* By offset in the IP payload; the slack absorbs a chunk written near
	 * the end. */
	__u8 bytes[SLUICE_FRAG_BYTES + FRAG_COPY_BYTES];
};

/* What the entry program hands to sluice_stage_fragment, and the whole
 * datagram once gathered, for the stages after it. */
struct frag_scratch {
	struct packet_info pkt;		/* the fragment in hand */
	__u32 len;			/* bytes[] in use: the datagram's IP payload */
	__u32 pad;
	__u8 bytes[SLUICE_FRAG_BYTES];
};

/* A CPU's coarse time, as read at one jiffy (coarse_now_ns() in common.h). */
struct coarse_clock {
	__u64 jiffies;
	__u64 ns;
};

#endif /* SLUICE_SCRATCH_H */
