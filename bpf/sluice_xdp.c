/* SPDX-License-Identifier: GPL-2.0-only */
/* sluice_xdp.c - classify each new TCP flow by its TLS SNI or HTTP Host and
 * apply the verdict of the rule that names it, in both directions.
 *
 * A flow is inspected while it is young: its first payload packets from the
 * client, up to the policy's window. The first ClientHello or HTTP request
 * decides its rule once and for all; a flow whose window runs out without a
 * name passes untouched, as does every flow no rule names.
 *
 * sluice_xdp is the program attached to interfaces. It judges packets of
 * known flows itself and hands a young flow's payload to the inspection
 * stages below by tail call: TLS, then HTTP, then matching the name, then
 * selecting the rule for the client. Each stage is a
 * separate program, so the verifier checks each alone. Should a stage be
 * missing, the tail call falls through and the packet passes.
 */
#include <uapi/linux/bpf.h>

#include "sluice_abi.h"
#include "parsing_helpers.h"
#include "maps.h"
#include "common.h"
#include "flow.h"
#include "payload.h"
#include "verdict.h"
#include "tls_sni.h"
#include "http_host.h"
#include "domain_match.h"
#include "client_match.h"
#include "quic.h"
#include "tcp_stream.h"
#include "block_reply.h"
#include "ip_frag.h"
#include "proxy_protocol.h"
#include "receiver.h"
#include "tentative.h"

/* Copy up to PAYLOAD_COPY_BYTES of the payload at offset (len > 0 bytes of it),
 * from the frame, or from the datagram gathered out of IP fragments. */
static __always_inline int copy_payload(struct ctx_buff *ctx, struct payload_scratch *scratch,
					__u32 offset, __u32 len)
{
	scratch->payload_offset = offset;
	scratch->payload_len = len;
	if (len > PAYLOAD_COPY_BYTES)
		len = PAYLOAD_COPY_BYTES;
	/* len is 1..PAYLOAD_COPY_BYTES already; the mask shows the verifier. */
	hide_from_compiler(len);
	len = ((len - 1) & PAYLOAD_COPY_MASK) + 1;
	scratch->len = len;
	if (scratch->from_fragments)
		return frag_copy_gathered(scratch->bytes, offset, len);
	return ctx_load_bytes(ctx, offset, scratch->bytes, len);
}

/* Some clients, and circumvention tools on purpose, send a ChangeCipherSpec
 * record ahead of the ClientHello in the same segment: step over such
 * records, re-reading the payload past them. Returns how many. */
static __always_inline int skip_leading_records(struct ctx_buff *ctx, struct payload_scratch *scratch)
{
	int skipped = 0;

	for (int i = 0; i < TLS_LEADING_RECORDS_MAX; i++) {
		if (scratch->len < TLS_RECORD_HEADER_LEN ||
		    payload_u8(scratch->bytes, 0) != TLS_CONTENT_CHANGE_CIPHER_SPEC ||
		    payload_u8(scratch->bytes, 1) != TLS_MAJOR_VERSION)
			break;
		__u32 skip = TLS_RECORD_HEADER_LEN + payload_be16(scratch->bytes, 3);
		__u32 rest = scratch->payload_len;
		if (skip >= rest)
			break;
		if (copy_payload(ctx, scratch, scratch->payload_offset + skip, rest - skip) < 0)
			break;
		skipped++;
	}
	return skipped;
}

/* Keep the ALPN extension that tls_parse_client_hello() found in bytes (a
 * buffer of mask + 1) for the select stage: bytes is the payload, or the
 * handshake gathered from the stream, which the stages after this one may
 * not find as it was. */
static __always_inline void keep_alpn(struct payload_scratch *scratch, const __u8 *bytes, __u32 mask)
{
	__u32 len = scratch->hello.alpn_len;

	scratch->alpn_len = 0;
	if (len == 0)
		return;
	if (len > SLUICE_ALPN_BYTES)
		len = SLUICE_ALPN_BYTES;
	/* len is 1..SLUICE_ALPN_BYTES already; the mask shows the verifier. */
	hide_from_compiler(len);
	len = ((len - 1) & ALPN_COPY_MASK) + 1;
	if (copy_within_maps(scratch->alpn, len, &bytes[scratch->hello.alpn_off & mask]) == 0)
		scratch->alpn_len = len;
}

/* A name found in a hello whose rest is still to come is not enough where
 * rules look past the name (ECH, ALPN): the hello is then judged whole. */
static __always_inline int wait_for_whole_hello(const struct payload_scratch *scratch, int outcome,
						const struct sluice_config *cfg)
{
	return outcome == TLS_SNI_FOUND && scratch->hello.cut && (cfg->flags & SLUICE_CFG_WHOLE_HELLO);
}

/* A load balancer's PROXY protocol header at the start of the client's
 * stream (where the policy asks): the stream starts past it, so that the
 * client's first bytes are read as if they came first, here and when
 * segments are put together. Returns -1 when nothing follows it here. */
static __always_inline int skip_proxy_header(struct ctx_buff *ctx, struct flow_state *flow,
					     struct payload_scratch *scratch, const struct sluice_config *cfg)
{
	if (!(cfg->flags & SLUICE_CFG_PROXY_PROTOCOL) || scratch->seq != flow->stream_base)
		return 0;
	__u32 header = proxy_header_len(scratch->bytes, scratch->len);
	if (!header)
		return 0;
	counter_inc(SLUICE_CNT_PROXY_HEADERS);
	flow->stream_base += header;
	__u32 rest = scratch->payload_len;
	if (header >= rest)
		return -1;
	return copy_payload(ctx, scratch, scratch->payload_offset + header, rest - header);
}

/* A fragment goes to sluice_stage_fragment, unless the policy reads each
 * segment alone (inspection.reassemble: false, the 2021 profile, blind to
 * fragments as that throttler was) and does not drop fragments. */
static __always_inline int enter_fragment_stage(struct ctx_buff *ctx, const struct packet_info *pkt,
						const struct sluice_config *cfg)
{
	__u32 zero = 0;

	counter_inc(SLUICE_CNT_FRAGMENTS);
	if ((cfg->flags & SLUICE_CFG_NO_REASSEMBLY) && !(cfg->flags & SLUICE_CFG_DROP_FRAGMENTS))
		return verdict_pass_unjudged(pkt->frame_len);
	struct frag_scratch *scratch = frag_buffers.lookup(&zero);
	if (!scratch)
		return verdict_pass_unjudged(pkt->frame_len);
	__builtin_memcpy(&scratch->pkt, pkt, sizeof(*pkt));
	call_stage(ctx, SLUICE_STAGE_FRAGMENT);
	return verdict_pass_unjudged(pkt->frame_len);
}

/* The verdict on a TCP packet flow_open_tcp() found no flow for. A held
 * SYN passes: it names nothing, and the server answers one on a live
 * connection with a challenge ACK. One that carries data (Fast Open) is
 * dropped: its data would reach the server unread. The client then sends
 * its SYN again without data (Linux does, after a SYN timeout), which is
 * held and passes, and its data comes at the stream start (flow.h). */
static __always_inline int pass_flowless(const struct packet_info *pkt, int opening)
{
	if (opening == FLOW_SYN_HELD && pkt->payload_len) {
		verdict_account(0, SLUICE_DIR_UP, pkt->frame_len, OUTCOME_DROPPED);
		return CTX_ACT_DROP;
	}
	return verdict_pass_unjudged(pkt->frame_len);
}

/* Is the packet read for a name? Every packet of a flow still inspected
 * is offered (inspect_tcp_segment() picks), save where the flow was judged
 * at its opening packet: there only the client's payload is, and the rest
 * takes that judgement's verdict. A classified flow whose name came from
 * its SYN's data reads its next client segment: the server may have
 * dropped that data (receiver.h). */
static __always_inline int read_for_name(const struct flow_state *flow, const struct packet_info *pkt,
					 int sender_is_hi)
{
	int client_payload = pkt->payload_len && sender_is_hi == flow->client_is_hi;

	if (flow->state != SLUICE_FLOW_INSPECTING)
		return (flow->receiver & SLUICE_RECEIVER_SYN_DATA) && client_payload;
	return !flow->rule_id || client_payload;
}

/* A server segment of a flow whose client sent bytes only at a TTL that
 * may not reach the server (tentative.h): its ACK number may confirm them,
 * in sluice_stage_confirm. Should that stage be missing, the segment goes
 * on as any other. */
static __always_inline void offer_server_ack(struct ctx_buff *ctx, const struct packet_info *pkt,
					     const struct flow_id *id, int from_fragments)
{
	__u32 zero = 0;
	struct payload_scratch *scratch = payload_buffers.lookup(&zero);
	__u32 ack;

	if (!scratch || !(pkt->tcp_flags & TCP_FLAG_ACK) ||
	    receiver_load_ack_number(ctx, pkt, from_fragments, &ack) < 0)
		return;
	__builtin_memcpy(&scratch->id, id, sizeof(*id));
	flow_make_key(pkt, &scratch->key);
	scratch->frame_len = pkt->frame_len;
	scratch->proto = SLUICE_PROTO_UNKNOWN;
	scratch->in_stream = 0;
	scratch->raw_name_len = 0;
	scratch->name_len = 0;
	/* Nothing of the server's segment is stored: the stream is read as it is. */
	scratch->segment_len = 0;
	scratch->len = 0;
	/* ...and its own payload is what its verdict counts, if it confirms nothing. */
	scratch->payload_len = pkt->payload_len;
	scratch->from_fragments = from_fragments;
	scratch->segment.ack = ack;
	scratch->confirming = 1;
	call_stage(ctx, SLUICE_STAGE_CONFIRM);
}

/* A segment from the server's end of a flow still read (for a name, or
 * for its SYN's data to be checked): what it says of the server's sequence
 * numbers, against which the client's ACK numbers are held (receiver.h),
 * and whether it acknowledges client bytes held tentatively (tentative.h).
 * One the client forged (it came in on the client's interface, the
 * server's being another: receiver.h) says neither; under
 * inspection.on_evasion: block it blocks the flow, and is dropped. The
 * server's first from elsewhere, after a confirmation on the client's
 * interface, finds that one out: the flow is judged afresh.
 * Once the flow is settled, this costs one test of its state. */
static __always_inline void note_server_segment(struct ctx_buff *ctx, struct flow_state *flow,
						const struct packet_info *pkt, const struct flow_id *id,
						int sender_is_hi, int from_fragments,
						const struct sluice_config *cfg)
{
	if ((flow->state == SLUICE_FLOW_INSPECTING ||
	     (flow->receiver & (SLUICE_RECEIVER_SYN_DATA | SLUICE_RECEIVER_CONFIRMED_HERE))) &&
	    flow->opened_by_client && sender_is_hi != flow->client_is_hi) {
		int forged = receiver_server_segment_forged(ctx, flow);
		if (forged != SERVER_SEGMENT_OWN) {
			struct flow_key key = {};
			counter_inc(SLUICE_CNT_EVASION_FORGED_SERVER);
			flow->receiver |= SLUICE_RECEIVER_EVASION;
			flow_make_key(pkt, &key);
			if (cfg->flags & SLUICE_CFG_BLOCK_EVASION)
				receiver_block_evasion(flow, &key, flow->client_is_hi);
			else if (forged == SERVER_SEGMENT_FORGED_BEFORE)
				receiver_refute_confirmation(flow, &key, cfg);
			if (forged == SERVER_SEGMENT_FORGED)
				return;
		}
		/* Settled, and here only for a confirmation yet to be borne out. */
		if (flow->state != SLUICE_FLOW_INSPECTING && !(flow->receiver & SLUICE_RECEIVER_SYN_DATA))
			return;
		receiver_note_server_segment(ctx, flow, pkt, from_fragments);
		if (flow->tentative_ttl && flow->state == SLUICE_FLOW_INSPECTING)
			offer_server_ack(ctx, pkt, id, from_fragments);
	}
}

/* Evasion was seen: a segment the server would not keep as it came,
 * copies that disagree, or an urgent byte. Under inspection.on_evasion:
 * block the flow is blocked; else the segment passes unread (the server
 * drops a refused one itself). */
static __always_inline int evasion_seen(struct ctx_buff *ctx, struct flow_state *flow,
					const struct payload_scratch *scratch, const struct sluice_config *cfg)
{
	flow->receiver |= SLUICE_RECEIVER_EVASION;
	if (cfg->flags & SLUICE_CFG_BLOCK_EVASION)
		receiver_block_evasion(flow, &scratch->key, scratch->sender_is_hi);
	if (flow->state == SLUICE_FLOW_INSPECTING)
		return verdict_pass_unjudged(scratch->frame_len);
	return verdict_apply_tcp(ctx, flow, flow_key_client_address(flow, &scratch->key), scratch->sender_is_hi,
				 scratch->frame_len, scratch->segment_len, cfg);
}

/* Count the segment in the flow's window, and read it: in the stream if
 * it continues or precedes others, else alone. */
static __always_inline int read_segment(struct ctx_buff *ctx, struct flow_state *flow,
					struct payload_scratch *scratch, const struct sluice_config *cfg)
{
	flow->payload_packets += 1;
	__u32 inspected = flow->payload_bytes + scratch->segment_len;
	flow->payload_bytes = inspected > SLUICE_WINDOW_BYTES_MAX ? SLUICE_WINDOW_BYTES_MAX : inspected;
	/* A segment that does not start the client's stream may continue a
	 * ClientHello, or have overtaken the one that starts it. Without a
	 * SYN, where the stream starts is known only once a ClientHello that
	 * continues past its first segment is seen. */
	int mid_stream = flow->opened_by_client && scratch->seq != flow->stream_base;
	if (!(cfg->flags & SLUICE_CFG_NO_REASSEMBLY) && (flow->streaming || mid_stream))
		call_stage(ctx, SLUICE_STAGE_STREAM);
	else
		call_stage(ctx, SLUICE_STAGE_TLS);
	return verdict_pass_unjudged(scratch->frame_len);
}

/* Read a client segment of a flow still inspected: through the receiver
 * model, or (inspection.on_evasion: ignore) as it comes. */
static __always_inline int read_received(struct ctx_buff *ctx, struct flow_state *flow,
					 struct payload_scratch *scratch, const struct sluice_config *cfg)
{
	if (!(cfg->flags & SLUICE_CFG_NO_RECEIVER_MODEL)) {
		call_stage(ctx, SLUICE_STAGE_RECEIVER);
		return verdict_pass_unjudged(scratch->frame_len);
	}
	if (scratch->segment_len == 0)		/* the SYN, judged at its opening */
		return verdict_pass_unjudged(scratch->frame_len);
	return read_segment(ctx, flow, scratch, cfg);
}

/* A TCP segment of a flow still inspected (or read again): the client's
 * SYN and payload go to the receiver model, which reads on the segments the
 * server keeps; without it (inspection.on_evasion: ignore) every payload is
 * read. opens: the packet opens the flow (flow_open_tcp()). from_fragments:
 * the segment was gathered out of IP fragments, its bytes are in
 * frag_scratch.bytes (ip_frag.h), not the frame. */
static __always_inline int inspect_tcp_segment(struct ctx_buff *ctx, struct flow_state *flow,
					       const struct packet_info *pkt, const struct flow_id *id,
					       int sender_is_hi, const struct sluice_config *cfg,
					       int opens, int from_fragments)
{
	int receiver_model = !(cfg->flags & SLUICE_CFG_NO_RECEIVER_MODEL);
	int opening = opens && (cfg->flags & SLUICE_CFG_OPENING_RULES);
	__u32 zero = 0;

	/* The SYN's timestamp is the one later segments are held to; and the
	 * SYN is where rules for any flow judge it. */
	if (pkt->payload_len == 0 && !(receiver_model && flow_is_bare_syn(pkt)) && !opening)
		return verdict_pass_unjudged(pkt->frame_len);
	/* Once the client is known, only what it sends can name the flow:
	 * a server cannot get its own flow judged by what it answers. */
	if (flow->client_known && sender_is_hi != flow->client_is_hi)
		return verdict_pass_unjudged(pkt->frame_len);
	struct payload_scratch *scratch = payload_buffers.lookup(&zero);
	if (!scratch)
		return verdict_pass_unjudged(pkt->frame_len);
	__builtin_memcpy(&scratch->id, id, sizeof(*id));
	flow_make_key(pkt, &scratch->key);
	scratch->frame_len = pkt->frame_len;
	scratch->sender_is_hi = sender_is_hi;
	scratch->proto = SLUICE_PROTO_UNKNOWN;
	scratch->in_stream = 0;
	scratch->raw_name_len = 0;
	scratch->confirming = 0;
	/* A SYN's own data (TCP Fast Open) follows the sequence number the SYN takes. */
	scratch->seq = pkt->seq + (pkt->tcp_flags & TCP_FLAG_SYN ? 1 : 0);
	scratch->segment_offset = pkt->payload_offset;
	scratch->segment_len = pkt->payload_len;
	scratch->from_fragments = from_fragments;
	scratch->payload_len = 0;
	scratch->len = 0;
	scratch->segment.header_len = pkt->tcp_header_len;
	scratch->segment.tcp_flags = pkt->tcp_flags;
	scratch->segment.ttl = pkt->ttl;
	scratch->segment.hop_by_hop_late = pkt->hop_by_hop_late;
	/* A gathered datagram's fragments had theirs checked (frag_gather()). */
	scratch->segment.ipv4_header_len = from_fragments ? 0 : pkt->ipv4_header_len;
	scratch->segment.ip_truncated = from_fragments ? 0 : pkt->ip_truncated;
	if (pkt->payload_len && copy_payload(ctx, scratch, pkt->payload_offset, pkt->payload_len) < 0)
		return verdict_pass_unjudged(pkt->frame_len);
	if (opening)
		call_stage(ctx, SLUICE_STAGE_OPENING);
	return read_received(ctx, flow, scratch, cfg);
}

int CTX_ENTRY(struct ctx_buff *ctx)
{
	struct packet_info pkt = {};
	struct flow_id id;

	counter_inc(SLUICE_CNT_PACKETS);
	struct sluice_config *cfg = config_enter();
	if (!cfg)
		return CTX_ACT_OK;
	int parsed = parse_packet(ctx_data(ctx), ctx_data_end(ctx), ctx_len(ctx), &pkt, ~cfg->closed_tunnels);
	/* tc: a header past the skb's linear part; bring it in and read again. */
	if (parsed < 0 && ctx_pull_headers(ctx)) {
		__builtin_memset(&pkt, 0, sizeof(pkt));
		parsed = parse_packet(ctx_data(ctx), ctx_data_end(ctx), ctx_len(ctx), &pkt, ~cfg->closed_tunnels);
	}
	if (pkt.tunnel)
		tunnel_counter_inc(pkt.tunnel, pkt.tunnel_outcome);
	if (parsed < 0) {
		counter_inc(SLUICE_CNT_SKIPPED);
		return CTX_ACT_OK;
	}
	if (parsed == PACKET_FRAGMENT)
		return enter_fragment_stage(ctx, &pkt, cfg);
	if (pkt.l4proto == IPPROTO_UDP)
		return quic_judge_udp(ctx, &pkt, cfg, 0);

	int sender_is_hi = flow_make_id(&pkt, &id);
	int opening;
	struct flow_state *flow = flow_open_tcp(ctx, &pkt, &id, sender_is_hi, cfg, &opening);
	if (!flow)
		return pass_flowless(&pkt, opening);
	note_server_segment(ctx, flow, &pkt, &id, sender_is_hi, 0, cfg);
	if (!read_for_name(flow, &pkt, sender_is_hi))
		return verdict_apply_tcp(ctx, flow, flow_client_address(flow, &pkt, sender_is_hi), sender_is_hi,
					 pkt.frame_len, pkt.payload_len, cfg);
	return inspect_tcp_segment(ctx, flow, &pkt, &id, sender_is_hi, cfg, opening == FLOW_OPENS, 0);
}

/* The state every stage starts from; 0 if anything is missing. */
static __always_inline struct payload_scratch *stage_scratch(struct flow_state **flow,
							     struct sluice_config **cfg)
{
	__u32 zero = 0;
	struct payload_scratch *scratch = payload_buffers.lookup(&zero);

	*cfg = config_of_packet();
	if (!scratch || !*cfg)
		return 0;
	*flow = flows.lookup(&scratch->id);
	return *flow ? scratch : 0;
}

int sluice_stage_tls(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);

	if (!scratch)
		return CTX_ACT_OK;
	if (skip_proxy_header(ctx, flow, scratch, cfg) < 0)
		return verdict_inspect_next_packet(flow, scratch, cfg);
	int skipped = skip_leading_records(ctx, scratch);
	int outcome = tls_parse_client_hello(scratch->bytes, scratch->len, PAYLOAD_COPY_MASK, &scratch->hello);
	if (wait_for_whole_hello(scratch, outcome, cfg))
		outcome = TLS_TRUNCATED;
	if (scratch->hello.ech && (outcome == TLS_SNI_FOUND || outcome == TLS_NO_SNI))
		counter_inc(SLUICE_CNT_TLS_ECH);
	switch (outcome) {
	case TLS_SNI_FOUND:
		counter_inc(SLUICE_CNT_TLS_SNI_FOUND);
		scratch->proto = SLUICE_PROTO_TLS;
		scratch->raw_name_off = scratch->hello.name_off;
		scratch->raw_name_len = scratch->hello.name_len;
		break;
	case TLS_NO_SNI:
		counter_inc(SLUICE_CNT_TLS_NO_SNI);
		scratch->proto = SLUICE_PROTO_TLS;
		break;
	case TLS_TRUNCATED:
		counter_inc(SLUICE_CNT_TLS_TRUNCATED);
		if (cfg->flags & SLUICE_CFG_NO_REASSEMBLY)
			return verdict_inspect_next_packet(flow, scratch, cfg);
		/* The rest is in later segments or records: keep this one. */
		call_stage(ctx, SLUICE_STAGE_STREAM);
		return verdict_inspect_next_packet(flow, scratch, cfg);
	case TLS_MALFORMED:
		counter_inc(SLUICE_CNT_TLS_MALFORMED);
		return verdict_inspect_next_packet(flow, scratch, cfg);
	default:
		/* TLS records came first: whatever follows is no HTTP request. */
		if (skipped) {
			counter_inc(SLUICE_CNT_NOT_TLS);
			return verdict_inspect_next_packet(flow, scratch, cfg);
		}
		call_stage(ctx, SLUICE_STAGE_HTTP);
		return verdict_pass_unjudged(scratch->frame_len);
	}
	keep_alpn(scratch, scratch->bytes, PAYLOAD_COPY_MASK);
	call_stage(ctx, SLUICE_STAGE_MATCH);
	return verdict_pass_unjudged(scratch->frame_len);
}

/* Nothing to name yet: wait for the next segment, and drop the stream if
 * the window is spent. */
static __always_inline int stream_wait(struct flow_state *flow, const struct payload_scratch *scratch,
				       const struct sluice_config *cfg)
{
	verdict_inspect_next_packet(flow, scratch, cfg);
	if (flow->state == SLUICE_FLOW_GAVE_UP)
		streams.delete(&scratch->key);
	return verdict_pass_unjudged(scratch->frame_len);
}

/* The flow is named: its stream has served. */
static __always_inline void stream_done(struct flow_state *flow, const struct flow_key *key)
{
	flow->streaming = 0;
	streams.delete(key);
}

/* Keep the segment in the flow's stream, then read the stream as TLS or
 * HTTP, each in a stage of its own. */
int sluice_stage_stream(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);

	if (!scratch)
		return CTX_ACT_OK;
	struct client_stream *stream = stream_open(&scratch->key);
	if (!stream)
		return verdict_inspect_next_packet(flow, scratch, cfg);
	flow->streaming = 1;
	__u32 stored_at = stream_store_received(ctx, stream, flow, scratch, cfg);
	stream_find_origin(stream, stored_at, stream_urgent_offset(flow));
	/* A segment that brings bytes the stream lacked, while the stream may
	 * yet hold a hello or request, is the hello's own however small, and
	 * does not spend the packet window: zapret's --wssize 1:6 shrinks the
	 * server's window so that a browser's 1.8 KB hello comes in 29
	 * segments of 64 bytes, more than the window's 20, and the server
	 * reads it all the same. window_bytes still bounds them (each counts
	 * its bytes), and no one packet costs more than before: the window
	 * counts what adds nothing (copies) and what can name nothing (junk). */
	if (scratch->stream_grew && flow->payload_packets && stream_may_hold_a_hello(stream))
		flow->payload_packets -= 1;
	if (scratch->copies_disagree && !(cfg->flags & SLUICE_CFG_NO_RECEIVER_MODEL)) {
		counter_inc(SLUICE_CNT_EVASION_CONFLICT);
		if (cfg->flags & SLUICE_CFG_BLOCK_EVASION)
			return evasion_seen(ctx, flow, scratch, cfg);
		flow->receiver |= SLUICE_RECEIVER_EVASION;
	}
	if (stream->origin != STREAM_ORIGIN_UNKNOWN) {
		call_stage(ctx, SLUICE_STAGE_STREAM_TLS);
		return stream_wait(flow, scratch, cfg);
	}
	/* No ClientHello: the stream may hold an HTTP request, unless its one
	 * byte so far may yet start a record. */
	__u8 first = masked_u8(stream->bytes, 0, STREAM_MASK);
	__u32 held = stream_held_end(stream, 0);
	/* Handed on in map memory: the next stage need not walk the bitmap. */
	scratch->stream_held = held;
	if (held > 1 || (held == 1 && first != TLS_CONTENT_HANDSHAKE && first != TLS_CONTENT_CHANGE_CIPHER_SPEC))
		call_stage(ctx, SLUICE_STAGE_STREAM_HTTP);
	return stream_wait(flow, scratch, cfg);
}

/* A ClientHello held in the flow's stream, in records from its origin on. */
int sluice_stage_stream_tls(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);
	__u32 zero = 0;

	if (!scratch)
		return CTX_ACT_OK;
	struct handshake_scratch *handshake = handshake_buffers.lookup(&zero);
	struct stream_view *view = stream_views.lookup(&zero);
	struct client_stream *stream = streams.lookup(&scratch->key);
	struct record_gathering *records = &scratch->records;
	if (!handshake || !view || !stream) {
		records->pending = 0;
		return verdict_inspect_next_packet(flow, scratch, cfg);
	}
	if (!records->pending) {	/* the first pass */
		__u32 origin = stream->origin;
		__builtin_memset(records, 0, sizeof(*records));
		records->end = stream_read_as_delivered(stream, stream_urgent_offset(flow), origin,
							stream_held_end(stream, origin), view);
	}
	records->pending = 0;
	/* The records are walked in passes, this stage tail-calling itself
	 * (the view and the handshake stay in per-CPU memory meanwhile). */
	int pass = stream_gather_records(view->bytes, handshake, scratch, records);
	if (pass == RECORDS_GO_ON) {
		records->pending = 1;
		call_stage(ctx, SLUICE_STAGE_STREAM_TLS);
		records->pending = 0;	/* no pass more: read what was gathered */
	}
	/* As in the match stage: the parser is verified once, for one unknown
	 * length, not once for every way out of the gathering loop. */
	__u32 avail = forget_range(scratch->forget_slot,
				   pass == RECORDS_NOT_TLS ? 0 : stream_gathered_handshake(handshake, records->gathered));
	int outcome = tls_parse_client_hello(handshake->bytes, avail, HANDSHAKE_MASK, &scratch->hello);
	if (wait_for_whole_hello(scratch, outcome, cfg))
		outcome = TLS_TRUNCATED;
	if (outcome == TLS_TRUNCATED || outcome == TLS_MALFORMED || outcome == TLS_NOT_CLIENT_HELLO) {
		if (outcome == TLS_MALFORMED)
			counter_inc(SLUICE_CNT_TLS_MALFORMED);
		return stream_wait(flow, scratch, cfg);
	}
	counter_inc(SLUICE_CNT_TLS_REASSEMBLED);
	if (scratch->hello.ech)
		counter_inc(SLUICE_CNT_TLS_ECH);
	counter_inc(outcome == TLS_SNI_FOUND ? SLUICE_CNT_TLS_SNI_FOUND : SLUICE_CNT_TLS_NO_SNI);
	scratch->proto = SLUICE_PROTO_TLS;
	scratch->raw_name_off = 0;
	scratch->raw_name_len = 0;
	__u32 name_len = scratch->hello.name_len;
	if (outcome == TLS_SNI_FOUND && name_len > 0 && name_len <= SLUICE_NAME_MAX) {
		/* The match stage reads the name from the scratch buffer. Hide
		 * the length first: knowing it is at most SLUICE_NAME_MAX, clang
		 * 19 drops the mask below, and the verifier cannot carry the
		 * bound checked above over to the register the copy is given. */
		hide_from_compiler(name_len);
		if (copy_within_maps(scratch->bytes, name_len & NAME_BUFFER_MASK,
				     &handshake->bytes[scratch->hello.name_off & STREAM_MASK]) == 0)
			scratch->raw_name_len = name_len;
	}
	keep_alpn(scratch, handshake->bytes, HANDSHAKE_MASK);
	stream_done(flow, &scratch->key);
	call_stage(ctx, SLUICE_STAGE_MATCH);
	return verdict_pass_unjudged(scratch->frame_len);
}

/* An HTTP request held in the flow's stream, cut anywhere: its request
 * line and its Host line, however far into the header section (tpws's
 * --hostpad puts kilobytes of padding before it), are copied one after
 * the other into the scratch buffer, where the HTTP stages read them as
 * they read a request in one packet. The stream is scanned in passes of
 * HTTP_STREAM_SCAN_BYTES, this stage tail-calling itself for the next
 * (the view of the stream stays in per-CPU memory meanwhile), up to the
 * end of what the stream holds in order or of the header section. */
int sluice_stage_stream_http(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);

	if (!scratch)
		return CTX_ACT_OK;
	__u32 zero = 0;
	struct client_stream *stream = streams.lookup(&scratch->key);
	struct stream_view *view = stream_views.lookup(&zero);
	struct request_layout *layout = &scratch->layout;
	if (!stream || !view) {
		layout->scan_at = 0;
		return verdict_inspect_next_packet(flow, scratch, cfg);
	}
	__u32 at = layout->scan_at;
	layout->scan_at = 0;
	if (!at) {			/* the first pass */
		__u32 end = stream_read_as_delivered(stream, stream_urgent_offset(flow), 0, scratch->stream_held, view);
		__u32 start = 0;
		for (int i = 0; i < HTTP_EMPTY_LINE_BYTES_MAX; i++) {
			__u8 c = masked_u8(view->bytes, start, STREAM_MASK);
			if (start >= end || (c != '\r' && c != '\n'))
				break;
			start++;
		}
		__builtin_memset(layout, 0, sizeof(*layout));
		layout->start = at = start;
		layout->end = end;
	}
	/* Forgotten, both: the scan is verified once, not once per empty line. */
	at = forget_range(scratch->forget_slot, at);
	__u32 end = forget_range(scratch->forget_slots[0], layout->end);
	http_scan_stream_request(view->bytes, at, end, layout);
	if (!layout->headers_end && end - at > HTTP_STREAM_SCAN_BYTES) {
		layout->scan_at = at + HTTP_STREAM_SCAN_BYTES;
		call_stage(ctx, SLUICE_STAGE_STREAM_HTTP);
		layout->scan_at = 0;	/* no pass more: read what the scan found */
	}
	/* ...and again: each way out of the scan knows them differently. */
	__u32 start = forget_range(scratch->forget_slot, layout->start);
	end = forget_range(scratch->forget_slots[0], layout->end);
	/* The request line, without the spaces after its version, and with
	 * room left for the Host line after it. */
	if (!layout->line_end || layout->line_last < start)
		return stream_wait(flow, scratch, cfg);
	__u32 line_len = layout->line_last + 1 - start;
	if (line_len >= PAYLOAD_COPY_BYTES - HTTP_HOST_LINE_COPY)
		return stream_wait(flow, scratch, cfg);
	hide_from_compiler(line_len);
	line_len &= PAYLOAD_COPY_MASK;
	if (copy_within_maps(scratch->bytes, line_len, &view->bytes[start & STREAM_MASK]) < 0)
		return stream_wait(flow, scratch, cfg);
	scratch->bytes[line_len & PAYLOAD_COPY_MASK] = '\n';
	__u32 len = line_len + 1;
	if (layout->host_line) {
		/* The Host line as "host:" and its value, without the
		 * whitespace before it, however much there was. */
		if (!layout->host_value)
			return stream_wait(flow, scratch, cfg);
		__u32 host_len = end - layout->host_value;
		if (host_len > HTTP_HOST_LINE_COPY - HTTP_HOST_FIELD_LEN)
			host_len = HTTP_HOST_LINE_COPY - HTTP_HOST_FIELD_LEN;
		hide_from_compiler(host_len);
		host_len &= NAME_BUFFER_MASK | 0x100;
		__u32 value_at = len + HTTP_HOST_FIELD_LEN;
		hide_from_compiler(value_at);	/* the bound below must reach the verifier */
		if (value_at > PAYLOAD_COPY_BYTES - HTTP_HOST_LINE_COPY)
			return stream_wait(flow, scratch, cfg);
		__builtin_memcpy(&scratch->bytes[value_at - HTTP_HOST_FIELD_LEN], "host:", HTTP_HOST_FIELD_LEN);
		if (copy_within_maps(&scratch->bytes[value_at], host_len,
				     &view->bytes[layout->host_value & STREAM_MASK]) < 0)
			return stream_wait(flow, scratch, cfg);
		len = value_at + host_len;
	} else if (layout->headers_end) {
		/* No Host before the blank line: the request has none. */
		scratch->bytes[len & PAYLOAD_COPY_MASK] = '\r';
		scratch->bytes[(len + 1) & PAYLOAD_COPY_MASK] = '\n';
		len += 2;
	}
	scratch->len = len;
	scratch->in_stream = 1;
	call_stage(ctx, SLUICE_STAGE_HTTP);
	return stream_wait(flow, scratch, cfg);
}

int sluice_stage_http(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);

	if (!scratch)
		return CTX_ACT_OK;
	int outcome = http_parse_request_line(scratch);
	if (outcome == HTTP_HOST_FOUND) {
		call_stage(ctx, SLUICE_STAGE_HTTP_HOST);
		return verdict_pass_unjudged(scratch->frame_len);
	}
	/* What the stream holds is counted once, when it names the flow. */
	if (scratch->in_stream)
		return verdict_inspect_next_packet(flow, scratch, cfg);
	if (outcome != HTTP_TRUNCATED) {
		counter_inc(SLUICE_CNT_NOT_TLS);
		return verdict_inspect_next_packet(flow, scratch, cfg);
	}
	counter_inc(SLUICE_CNT_HTTP_TRUNCATED);
	if (cfg->flags & SLUICE_CFG_NO_REASSEMBLY)
		return verdict_inspect_next_packet(flow, scratch, cfg);
	/* The rest of the request is in later segments: keep this one. */
	call_stage(ctx, SLUICE_STAGE_STREAM);
	return verdict_inspect_next_packet(flow, scratch, cfg);
}

int sluice_stage_http_host(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);
	__u32 name_off = 0, name_len = 0;

	if (!scratch)
		return CTX_ACT_OK;
	switch (http_parse_request_host(scratch, &name_off, &name_len)) {
	case HTTP_HOST_FOUND:
		counter_inc(SLUICE_CNT_HTTP_HOST_FOUND);
		scratch->proto = SLUICE_PROTO_HTTP;
		scratch->raw_name_off = name_off;
		scratch->raw_name_len = name_len;
		break;
	case HTTP_NO_HOST:
		counter_inc(SLUICE_CNT_HTTP_NO_HOST);
		scratch->proto = SLUICE_PROTO_HTTP;
		break;
	default:
		if (scratch->in_stream)
			return verdict_inspect_next_packet(flow, scratch, cfg);
		counter_inc(SLUICE_CNT_HTTP_TRUNCATED);
		if (cfg->flags & SLUICE_CFG_NO_REASSEMBLY)
			return verdict_inspect_next_packet(flow, scratch, cfg);
		call_stage(ctx, SLUICE_STAGE_STREAM);
		return verdict_inspect_next_packet(flow, scratch, cfg);
	}
	if (scratch->in_stream)
		stream_done(flow, &scratch->key);
	call_stage(ctx, SLUICE_STAGE_MATCH);
	return verdict_pass_unjudged(scratch->frame_len);
}

/* The verdict on the packet in hand, its flow just named: the client's
 * segment that named it; or the server's segment whose ACK confirmed the
 * tentative bytes that did (tentative.h), which passes: the verdict holds
 * from the flow's next packet on. */
static __always_inline int judge_packet_in_hand(struct ctx_buff *ctx, struct flow_state *flow,
						const struct payload_scratch *scratch,
						const struct sluice_config *cfg)
{
	if (scratch->confirming)
		return verdict_pass_unjudged(scratch->frame_len);
	return verdict_apply_tcp(ctx, flow, flow_key_client_address(flow, &scratch->key), scratch->sender_is_hi,
				 scratch->frame_len, scratch->segment_len, cfg);
}

int sluice_stage_match(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);

	if (!scratch)
		return CTX_ACT_OK;
	scratch->name_len = domain_normalise_name(scratch->bytes, scratch->raw_name_off,
						  scratch->raw_name_len, scratch->name);
	/* The length passes through forget_range(): the matching loop is then
	 * verified for one unknown length, not once per length domain_normalise_name()
	 * can return. */
	scratch->set_id = domain_match(cfg, scratch->name, forget_range(scratch->forget_slot, scratch->name_len));
	/* No entry names it: the rules without a name condition may apply. */
	if (!scratch->set_id && (cfg->flags & SLUICE_CFG_UNNAMED_RULES))
		scratch->set_id = SLUICE_RULE_SET_UNNAMED;
	if (scratch->set_id) {
		call_stage(ctx, SLUICE_STAGE_SELECT);
		return verdict_pass_unjudged(scratch->frame_len);
	}
	verdict_classify(flow, 0, 0, scratch, cfg);
	return judge_packet_in_hand(ctx, flow, scratch, cfg);
}

/* What the rule conditions look at of the flow, but its ClientHello: the
 * sender of the packet in hand (the name, or the opening packet) is the
 * client; the other end is the server. */
static __always_inline void view_flow(struct flow_view *client, const struct payload_scratch *scratch,
				      const struct flow_state *flow, const struct sluice_config *cfg)
{
	const struct flow_key *key = &scratch->key;

	__builtin_memcpy(client->addr, scratch->sender_is_hi ? key->addr_hi : key->addr_lo, 16);
	client->server_port = bpf_ntohs(scratch->sender_is_hi ? key->port_lo : key->port_hi);
	client->opened_by_client = flow->opened_by_client;
	client->class_id = match_client_class(cfg, client->addr);
	client->destination_id = match_destination_set(cfg, scratch->sender_is_hi ? key->addr_lo : key->addr_hi);
	client->proto = scratch->proto;
}

int sluice_stage_select(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);
	struct flow_view client = {};

	if (!scratch)
		return CTX_ACT_OK;
	const struct flow_key *key = &scratch->key;
	view_flow(&client, scratch, flow, cfg);
	/* The hello's facts hold only for this flow's hello: the per-CPU
	 * scratch keeps the last one parsed, whatever flow it was. */
	if (scratch->proto == SLUICE_PROTO_TLS) {
		client.ech = scratch->hello.ech != 0;
		client.alpn_ids = match_offered_alpn_ids(cfg, scratch->alpn, scratch->alpn_len);
	}
	__u32 rule_id = match_select_rule(scratch->set_id, &client, cfg);
	verdict_classify(flow, rule_id, client.class_id, scratch, cfg);
	return judge_packet_in_hand(ctx, flow, scratch, cfg);
}

/* A new flow's opening packet, the client's bare SYN or a UDP flow's first
 * datagram, where some rule applies to any flow (SLUICE_CFG_OPENING_RULES):
 * the rules of flows without a name judge it now, as a flow whose protocol
 * is not known, or as QUIC (quic_judged_at_opening()); verdict_judge_opening()
 * says what settles it. A TCP flow not settled is then read for a name as
 * any other; a QUIC flow's Initial is with the controller already (quic.h). */
int sluice_stage_opening(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);
	struct flow_view client = {};

	if (!scratch)
		return CTX_ACT_OK;
	const struct flow_key *key = &scratch->key;
	int tcp = key->l4proto == IPPROTO_TCP;
	view_flow(&client, scratch, flow, cfg);
	client.proto = quic_judged_at_opening(ctx, flow, scratch, cfg) ? SLUICE_PROTO_QUIC : SLUICE_PROTO_UNKNOWN;
	__u32 rule_id = match_select_rule(SLUICE_RULE_SET_UNNAMED, &client, cfg);
	if (verdict_judge_opening(flow, rule_id, client.class_id, tcp || flow->proto == SLUICE_PROTO_QUIC,
				  scratch, cfg)) {
		if (tcp)
			return verdict_apply_tcp(ctx, flow, flow_key_client_address(flow, key), scratch->sender_is_hi,
						 scratch->frame_len, scratch->segment_len, cfg);
		return verdict_apply(flow, flow_key_client_address(flow, key), scratch->sender_is_hi,
				     scratch->frame_len, scratch->segment_len, cfg);
	}
	if (!tcp)
		return verdict_pass_unjudged(scratch->frame_len);
	return read_received(ctx, flow, scratch, cfg);
}

/* A TCP segment gathered out of IP fragments (ip_frag.h), read as the entry
 * program reads one that came whole: its bytes go to the stages from the
 * gathered datagram instead of the frame (payload_scratch.from_fragments).
 * It is the fragment that completed the datagram that is judged. */
static __always_inline int judge_gathered_segment(struct packet_info *pkt, const struct sluice_config *cfg,
						  struct ctx_buff *ctx)
{
	struct flow_id id;
	int sender_is_hi = flow_make_id(pkt, &id);
	int opening;
	struct flow_state *flow = flow_open_tcp(ctx, pkt, &id, sender_is_hi, cfg, &opening);

	if (!flow)
		return pass_flowless(pkt, opening);
	note_server_segment(ctx, flow, pkt, &id, sender_is_hi, 1, cfg);
	if (!read_for_name(flow, pkt, sender_is_hi))
		return verdict_apply(flow, flow_client_address(flow, pkt, sender_is_hi), sender_is_hi, pkt->frame_len,
				     pkt->payload_len, cfg);
	return inspect_tcp_segment(ctx, flow, pkt, &id, sender_is_hi, cfg, opening == FLOW_OPENS, 1);
}

int sluice_stage_fragment(struct ctx_buff *ctx)
{
	struct packet_info pkt = {};
	__u32 zero = 0;
	struct frag_scratch *gathered = frag_buffers.lookup(&zero);
	struct sluice_config *cfg = config_of_packet();

	if (!gathered || !cfg)
		return CTX_ACT_OK;
	if (cfg->flags & SLUICE_CFG_DROP_FRAGMENTS)
		return frag_drop_young(ctx, &gathered->pkt, cfg);
	__u32 frame_len = gathered->pkt.frame_len;
	if (frag_gather(ctx, gathered, coarse_now_ns(cfg)) != FRAG_COMPLETE ||
	    frag_parse_transport(gathered, &pkt) < 0)
		return verdict_pass_unjudged(frame_len);
	if (pkt.l4proto == IPPROTO_UDP)
		return quic_judge_udp(ctx, &pkt, cfg, &gathered->bytes[sizeof(struct udphdr)]);
	return judge_gathered_segment(&pkt, cfg, ctx);
}

/* The receiver model (receiver.h): read on only what the server keeps. */
int sluice_stage_receiver(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);

	if (!scratch)
		return CTX_ACT_OK;
	struct segment_view *segment = &scratch->segment;
	int header_read = receiver_load_tcp_header(ctx, scratch) == 0;
	segment->ack_read = header_read;
	if (header_read) {
		segment->ack = (masked_be16(segment->header, TCP_ACK_NUMBER, TCP_HEADER_MASK) << 16) |
			       masked_be16(segment->header, TCP_ACK_NUMBER + 2, TCP_HEADER_MASK);
		receiver_read_tcp_options(scratch);
	} else {
		segment->has_timestamp = segment->auth_option = 0;
	}
	/* The IPv4 header lies before the TCP header, without a gap. */
	segment->ipv4_header_holds = !segment->ipv4_header_len ||
		checksum_ipv4_header_holds(ctx, scratch->segment_offset - segment->header_len - segment->ipv4_header_len,
					   segment->ipv4_header_len);
	/* Looked for once, for both checks; a gathered segment's headers were its fragments'. */
	__u32 ipv6_at = scratch->from_fragments ? 0 : receiver_ipv6_header_at(ctx);
	segment->ipv6_extension_refused = receiver_ipv6_extension_refused(ctx, scratch, ipv6_at);
	segment->ip_header_refused = receiver_ip_header_refused(ctx, scratch, ipv6_at);
	__u32 refused = receiver_refuses(flow, scratch, cfg);
	if (scratch->segment_len == 0) {	/* the client's SYN (one held never comes here: flow.h) */
		/* One the server drops sets nothing: stamped in the future, it
		 * would make the real hello a PAWS decoy. */
		if (refused) {
			counter_inc(refused);
			return evasion_seen(ctx, flow, scratch, cfg);
		}
		receiver_note_syn(flow, scratch, cfg);
		return verdict_pass_unjudged(scratch->frame_len);
	}
	if (refused) {
		counter_inc(refused);
		/* A TTL that may not reach the server, and nothing else: held
		 * until the server says (tentative.h). Not under on_evasion:
		 * block, which blocks the flow at it, nor without reassembly,
		 * which keeps no stream. */
		if (refused == SLUICE_CNT_EVASION_LOW_TTL && flow->state == SLUICE_FLOW_INSPECTING &&
		    !(cfg->flags & (SLUICE_CFG_BLOCK_EVASION | SLUICE_CFG_NO_REASSEMBLY))) {
			flow->receiver |= SLUICE_RECEIVER_EVASION;
			call_stage(ctx, SLUICE_STAGE_TENTATIVE);
		}
		return evasion_seen(ctx, flow, scratch, cfg);
	}
	/* The first client segment after a SYN with data: one at the stream's
	 * start says the server dropped that data, and is read instead. */
	if ((flow->receiver & SLUICE_RECEIVER_SYN_DATA) && !(segment->tcp_flags & TCP_FLAG_SYN)) {
		flow->receiver &= ~SLUICE_RECEIVER_SYN_DATA;
		if (scratch->seq == flow->stream_base) {
			if (scratch->segment_len < flow->syn_data_len ||
			    receiver_payload_sum(scratch, flow->syn_data_len) != flow->syn_data_sum) {
				counter_inc(SLUICE_CNT_EVASION_SYN_DATA);
				if (cfg->flags & SLUICE_CFG_BLOCK_EVASION)
					return evasion_seen(ctx, flow, scratch, cfg);
				flow->receiver |= SLUICE_RECEIVER_EVASION;
			}
			receiver_inspect_again(flow, &scratch->key, cfg);
		}
	}
	__u32 in_order_end = receiver_in_order_end(scratch);
	/* An urgent byte in the stream: read from the stream, without it. */
	if (header_read && (segment->tcp_flags & TCP_FLAG_URG) && receiver_take_urgent_mark(flow, scratch, in_order_end)) {
		counter_inc(SLUICE_CNT_EVASION_URGENT);
		if (cfg->flags & SLUICE_CFG_BLOCK_EVASION)
			return evasion_seen(ctx, flow, scratch, cfg);
		flow->receiver |= SLUICE_RECEIVER_EVASION;
		flow->streaming = 1;
	}
	receiver_note_accepted(flow, scratch, in_order_end);
	if (flow->state != SLUICE_FLOW_INSPECTING)
		return verdict_apply_tcp(ctx, flow, flow_key_client_address(flow, &scratch->key), scratch->sender_is_hi,
				 scratch->frame_len, scratch->segment_len, cfg);
	return read_segment(ctx, flow, scratch, cfg);
}

/* A client segment refused for its TTL alone (receiver.h): kept in the
 * flow's stream as tentative, unread until the server acknowledges it
 * (tentative.h); it passes, as the server would drop it if it were what
 * its TTL says. */
int sluice_stage_tentative(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);

	if (!scratch)
		return CTX_ACT_OK;
	__u8 ttl = scratch->segment.ttl;
	/* A lower TTL goes no farther than the one whose bytes are kept. */
	if (ttl < flow->tentative_ttl)
		return verdict_pass_unjudged(scratch->frame_len);
	struct client_stream *stream = stream_open(&scratch->key);
	if (!stream)
		return verdict_pass_unjudged(scratch->frame_len);
	if (ttl != flow->tentative_ttl) {
		tentative_forget(stream);
		flow->tentative_ttl = ttl;
	}
	tentative_store(stream, flow, scratch);
	/* Later segments go to the stream too, where accepted bytes replace
	 * tentative ones. */
	flow->streaming = 1;
	return verdict_pass_unjudged(scratch->frame_len);
}

/* A server segment whose ACK number may confirm the client's tentative
 * bytes (tentative.h): if it does, the stream is read again for the
 * client, as after a client segment, and the segment in hand passes.
 * Else it is judged as any server segment of a flow still inspected. */
int sluice_stage_confirm(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);

	if (!scratch)
		return CTX_ACT_OK;
	struct client_stream *stream = streams.lookup(&scratch->key);
	if (stream && tentative_confirm(stream, flow, scratch->segment.ack)) {
		counter_inc(SLUICE_CNT_LOW_TTL_CONFIRMED);
		/* The stream's reading names the client as the sender. */
		scratch->sender_is_hi = flow->client_is_hi;
		scratch->seq = flow->stream_base;
		call_stage(ctx, SLUICE_STAGE_STREAM);
		return verdict_pass_unjudged(scratch->frame_len);
	}
	/* As read_for_name() and the entry program judge it. */
	if (!flow->rule_id)
		return verdict_pass_unjudged(scratch->frame_len);
	return verdict_apply_tcp(ctx, flow, flow_key_client_address(flow, &scratch->key), !flow->client_is_hi,
				 scratch->frame_len, scratch->payload_len, cfg);
}

/* A known QUIC flow's datagram, offered by quic_offer(): to the controller,
 * unless it repeats one handed over (quic.h). */
int sluice_stage_quic(struct ctx_buff *ctx)
{
	struct flow_state *flow;
	struct sluice_config *cfg;
	struct payload_scratch *scratch = stage_scratch(&flow, &cfg);
	__u32 zero = 0;

	if (!scratch)
		return CTX_ACT_OK;
	struct frag_scratch *gathered = scratch->from_fragments ? frag_buffers.lookup(&zero) : 0;
	if (scratch->from_fragments && !gathered)
		return scratch->quic_verdict;
	if (quic_refused_for_length(ctx, scratch, gathered ? gathered->bytes : 0, gathered ? gathered->len : 0, cfg)) {
		counter_inc(SLUICE_CNT_EVASION_TRUNCATED);
		return scratch->quic_verdict;
	}
	quic_hand_over(ctx, flow, scratch, cfg, gathered ? &gathered->bytes[sizeof(struct udphdr)] : 0);
	return scratch->quic_verdict;
}

int sluice_stage_reply(struct ctx_buff *ctx)
{
	return reply_stage(ctx);
}
