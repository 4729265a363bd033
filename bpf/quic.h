/* SPDX-License-Identifier: GPL-2.0-only */
/* quic.h - hand the Initial packets of new QUIC flows to the controller.
 *
 * A QUIC client's first datagrams carry its ClientHello in Initial packets,
 * encrypted with keys derived from the connection id (RFC 9001, RFC 9369,
 * and each draft and Google version with its own salt), or in Google QUIC's
 * plaintext CHLO. Decrypting that in the kernel is out of reach, and the
 * versions are many, so the data plane only recognises the header forms:
 * any long header with a version (IETF invariants, RFC 8999) and Google
 * QUIC's public header with a version, in a datagram padded as a client's
 * first flight is. It opens a flow entry and sends the datagram whole to
 * the controller over a ring buffer; the flow passes meanwhile. The
 * controller (controller/quic_flows.py, controller/quic.py) reads the
 * version, reassembles the ClientHello, finds the rule for its SNI and
 * writes the verdict into the flow's entry, which every later packet of
 * the flow obeys. A server's Version Negotiation goes over too, to be
 * counted: the client then starts again in another version on the same
 * flow, whose entry is still inspecting.
 *
 * UDP that is neither, or that arrives while no controller reads the ring,
 * passes without an entry, unless some rule applies to any flow: each UDP
 * flow is then judged at its first datagram (sluice_stage_opening). So is
 * a QUIC flow, as one of protocol quic, where no rule that may apply to it
 * looks at its hello (quic_judged_at_opening()).
 */
#ifndef SLUICE_QUIC_H
#define SLUICE_QUIC_H

#include "maps.h"
#include "common.h"
#include "flow.h"
#include "verdict.h"
#include "siphash.h"

#define QUIC_LONG_HEADER 0x80
#define QUIC_FIXED_BIT 0x40		/* set in every client Initial (RFC 9000, 17.2); clear in RTP's first byte */
#define QUIC_VERSION_NEGOTIATION 0	/* RFC 9000, 17.2.1: the version a server's VN carries */
#define QUIC_VERSION_PEEK 5		/* first byte and version of a long header */
/* Google QUIC's public header (up to Q043): flags (version present, 8-byte
 * connection id; no long-header bit, no multipath bit), the id, then a
 * version that starts with 'Q'. */
#define GQUIC_PUBLIC_FLAGS_MASK 0xc9
#define GQUIC_PUBLIC_FLAGS_CLIENT 0x09
#define GQUIC_PUBLIC_VERSION_OFFSET 9
#define GQUIC_VERSION_MARK 'Q'
#define QUIC_HEADER_PEEK (GQUIC_PUBLIC_VERSION_OFFSET + 4)
#define QUIC_DATAGRAM_MASK (SLUICE_QUIC_DATAGRAM_MAX - 1)

/* Could a datagram starting with these QUIC_HEADER_PEEK bytes be a
 * client's first flight, whatever its version? */
static __always_inline int quic_is_initial_header(const __u8 *head)
{
	if (head[0] & QUIC_LONG_HEADER)
		return (head[0] & QUIC_FIXED_BIT) && (head[1] | head[2] | head[3] | head[4]) != QUIC_VERSION_NEGOTIATION;
	return (head[0] & GQUIC_PUBLIC_FLAGS_MASK) == GQUIC_PUBLIC_FLAGS_CLIENT &&
	       head[GQUIC_PUBLIC_VERSION_OFFSET] == GQUIC_VERSION_MARK;
}

/* The first bytes of the payload: from the packet, or from the datagram its
 * fragments were gathered into (map memory, starting at the payload). */
static __always_inline int quic_load_head(struct ctx_buff *ctx, const struct packet_info *pkt,
					  const __u8 *gathered, __u8 *head, __u32 size)
{
	return gathered ? copy_within_maps(head, size, gathered) :
			  ctx_load_bytes(ctx, pkt->payload_offset, head, size);
}

/* Could the packet be a client's first flight? (gathered: see quic_load_head()) */
static __always_inline int quic_is_client_initial(struct ctx_buff *ctx, const struct packet_info *pkt,
						  const __u8 *gathered)
{
	__u8 head[QUIC_HEADER_PEEK];

	if (pkt->payload_len < SLUICE_QUIC_INITIAL_MIN_DATAGRAM)
		return 0;
	if (quic_load_head(ctx, pkt, gathered, head, sizeof(head)) < 0)
		return 0;
	return quic_is_initial_header(head);
}

/* Is the packet a Version Negotiation packet (sent by servers only)? */
static __always_inline int quic_is_version_negotiation(struct ctx_buff *ctx, const struct packet_info *pkt,
						       const __u8 *gathered)
{
	__u8 head[QUIC_VERSION_PEEK];

	if (pkt->payload_len < sizeof(head) || quic_load_head(ctx, pkt, gathered, head, sizeof(head)) < 0)
		return 0;
	return (head[0] & QUIC_LONG_HEADER) && (head[1] | head[2] | head[3] | head[4]) == QUIC_VERSION_NEGOTIATION;
}

/* Is the datagram, by its signature, one the flow handed over already?
 * If not, its signature is kept, in place of the oldest of the flow's. */
static __always_inline int quic_repeats_sent(const struct flow_id *id, __u64 signature)
{
	struct quic_signatures *sent = quic_signatures.lookup(id);

	if (!sent) {
		struct quic_signatures first = { .signature = { signature }, .count = 1 };
		quic_signatures.update(id, &first);
		return 0;
	}
	for (__u32 i = 0; i < SLUICE_QUIC_SIGNATURES; i++)
		if (i < sent->count && sent->signature[i] == signature)
			return 1;
	sent->signature[sent->count % SLUICE_QUIC_SIGNATURES] = signature;
	sent->count += 1;
	return 0;
}

/* Hand the datagram (its payload at offset in the packet, or gathered:
 * see quic_load_head()) to the controller over the ring; 0 if it was not,
 * as it repeats one the flow handed over (signed: the flow's key in
 * flows, see quic_hand_over()), 1 otherwise, handed over or lost to a full
 * ring. Its flow_key is made from pkt, or else copied from key; cfg
 * gives the signing key and the ring's flags (ring_flags()). The
 * record is checked for NULL once, where it is reserved: 6.1's verifier
 * does not know a record, once checked, is not NULL, and would follow a
 * second check's NULL branch to a tail call with the record unreleased. */
static __always_inline int quic_send_datagram(struct ctx_buff *ctx, __u32 offset, __u32 len, int client_is_hi,
					      const __u8 *gathered, const struct packet_info *pkt,
					      const struct flow_key *key, const struct flow_id *signed_id,
					      const struct sluice_config *cfg)
{
	struct quic_datagram *datagram = quic_datagrams.ringbuf_reserve(sizeof(struct quic_datagram));

	if (!datagram) {
		counter_inc(SLUICE_CNT_QUIC_RING_FULL);
		return 1;
	}
	datagram->client_is_hi = client_is_hi;
	if (len > SLUICE_QUIC_DATAGRAM_MAX)
		len = SLUICE_QUIC_DATAGRAM_MAX;
	/* len is 1..SLUICE_QUIC_DATAGRAM_MAX already; the mask shows the verifier. */
	hide_from_compiler(len);
	len = ((len - 1) & QUIC_DATAGRAM_MASK) + 1;
	datagram->len = len;
	int loaded = gathered ? copy_within_maps(datagram->bytes, len, gathered) :
				ctx_load_bytes(ctx, offset, datagram->bytes, len);
	if (loaded < 0) {
		quic_datagrams.ringbuf_discard(datagram, 0);
		return 1;
	}
	/* The hash reads len back from the record: a length whose range the
	 * verifier knows gives each of the loop's 256 ways out a state of its
	 * own, past its million instructions; one read from memory does not. */
	if (signed_id && quic_repeats_sent(signed_id, siphash13(cfg->datagram_key, datagram->bytes,
								*(volatile __u32 *)&datagram->len,
								SLUICE_QUIC_DATAGRAM_MAX))) {
		quic_datagrams.ringbuf_discard(datagram, 0);
		counter_inc(SLUICE_CNT_QUIC_REPEATS);
		return 0;
	}
	if (pkt)
		flow_make_key(pkt, &datagram->key);
	else
		__builtin_memcpy(&datagram->key, key, sizeof(datagram->key));
	datagram->key.pad[0] = datagram->key.pad[1] = 0;	/* reserved memory is not zeroed */
	quic_datagrams.ringbuf_submit(datagram, ring_flags(cfg));
	counter_inc(SLUICE_CNT_QUIC_DATAGRAMS);
	return 1;
}

/* Hand a new QUIC flow's first datagram to the controller. */
static __always_inline void quic_send_first(struct ctx_buff *ctx, const struct packet_info *pkt,
					    const struct flow_id *id, int client_is_hi, const __u8 *gathered,
					    const struct sluice_config *cfg)
{
	/* An earlier flow's signatures under the same key are not this one's. */
	quic_signatures.delete(id);
	quic_send_datagram(ctx, pkt->payload_offset, pkt->payload_len, client_is_hi, gathered, pkt, 0, 0, cfg);
}

/* The per-CPU scratch through which a stage learns of a UDP datagram in
 * hand: its flow, where its payload is, its sender; 0 if missing. */
static __always_inline struct payload_scratch *quic_stage_scratch(const struct packet_info *pkt,
								  const struct flow_id *id, int sender_is_hi)
{
	__u32 zero = 0;
	struct payload_scratch *scratch = payload_buffers.lookup(&zero);

	if (!scratch)
		return 0;
	__builtin_memcpy(&scratch->id, id, sizeof(*id));
	flow_make_key(pkt, &scratch->key);
	scratch->frame_len = pkt->frame_len;
	scratch->segment_offset = pkt->payload_offset;
	scratch->segment_len = pkt->payload_len;
	scratch->sender_is_hi = sender_is_hi;
	return scratch;
}

/* A later datagram of a known flow, to be handed over as its
 * payload_packets allow, by sluice_stage_quic; the packet gets verdict.
 * Returns if the stage is missing (the datagram is not handed over). The
 * stage keeps the signature's hash, a loop over every byte, out of the
 * programs that call this: walked on each of their ways here, it would
 * take the verifier past its million instructions. */
static __always_inline void quic_offer(struct ctx_buff *ctx, const struct packet_info *pkt, const struct flow_id *id,
				       int client_is_hi, const __u8 *gathered, int verdict)
{
	struct payload_scratch *scratch = quic_stage_scratch(pkt, id, client_is_hi);

	if (!scratch)
		return;
	scratch->from_fragments = gathered != 0;
	scratch->quic_verdict = verdict;
	call_stage(ctx, SLUICE_STAGE_QUIC);
}

/* sluice_stage_quic's work: hand the datagram offered (quic_offer()) to
 * the controller, unless it repeats, byte for byte, one the flow handed
 * over. zapret sends its fake Initial again and again
 * (--dpi-desync-repeats), and a real server reads one copy and drops the
 * rest; so does the controller, but only of what it gets, and N copies
 * would spend the flow's window ahead of the real hello. So a flow's
 * datagrams after its first are signed, by a keyed hash of their every
 * byte, and a repeat is not handed over nor counted against the window.
 * The first datagram is not signed: that would be every QUIC flow's cost,
 * and a repeat of it is handed over once more at worst, then known. */
static __always_inline void quic_hand_over(struct ctx_buff *ctx, struct flow_state *flow,
					   const struct payload_scratch *scratch, const struct sluice_config *cfg,
					   const __u8 *gathered)
{
	if (quic_send_datagram(ctx, scratch->segment_offset, scratch->segment_len, scratch->sender_is_hi, gathered, 0,
			       &scratch->key, &scratch->id, cfg))
		flow->payload_packets += 1;
}

/* Hand a new UDP flow's first datagram (gathered: see quic_load_head())
 * to sluice_stage_opening, to be judged by the rules for any flow, or as
 * QUIC (quic_judged_at_opening()); returns if that stage is missing. */
static __always_inline void quic_judge_opening_datagram(struct ctx_buff *ctx, const struct packet_info *pkt,
							const struct flow_id *id, int sender_is_hi,
							const struct flow_state *flow, const __u8 *gathered)
{
	struct payload_scratch *scratch = quic_stage_scratch(pkt, id, sender_is_hi);

	if (!scratch)
		return;
	scratch->proto = flow->proto;
	scratch->from_fragments = gathered != 0;
	call_stage(ctx, SLUICE_STAGE_OPENING);
}

/* Is the flow, new, a QUIC flow to be judged at its first datagram (in
 * hand in sluice_stage_opening) as a flow of protocol quic? Where no rule
 * that may apply to a QUIC flow looks at its hello (SLUICE_CFG_QUIC_AT_OPENING:
 * no name, ECH or ALPN condition, no `quic: block`), the controller would
 * choose the rule the opening packet's facts choose, but a round trip
 * late: a block would let the first flight pass. Judged here, the first
 * Initial is dropped, as the documented systems dropped it. Only Initials
 * of a version the controller reads (quic_versions): another version's
 * flow it cannot name, and it stays unjudged as before. */
static __always_inline int quic_judged_at_opening(struct ctx_buff *ctx, const struct flow_state *flow,
						  const struct payload_scratch *scratch, const struct sluice_config *cfg)
{
	__u8 head[QUIC_HEADER_PEEK];
	__be32 version;
	__u32 zero = 0;

	if (!(cfg->flags & SLUICE_CFG_QUIC_AT_OPENING) || flow->proto != SLUICE_PROTO_QUIC)
		return 0;
	if (scratch->from_fragments) {
		struct frag_scratch *gathered = frag_buffers.lookup(&zero);
		if (!gathered || copy_within_maps(head, sizeof(head), &gathered->bytes[sizeof(struct udphdr)]) < 0)
			return 0;
	} else if (ctx_load_bytes(ctx, scratch->segment_offset, head, sizeof(head)) < 0) {
		return 0;
	}
	/* quic_is_initial_header() took it for one of the two header forms. */
	if (head[0] & QUIC_LONG_HEADER)
		__builtin_memcpy(&version, &head[1], sizeof(version));
	else
		__builtin_memcpy(&version, &head[GQUIC_PUBLIC_VERSION_OFFSET], sizeof(version));
	return quic_versions.lookup(&version) != 0;
}

/* The payload of a UDP datagram of l4_len bytes (at least its header) as a
 * receiver reads it, given the length its header says (udp_len): the
 * bytes past that length are trimmed, and a datagram whose length says
 * more than it holds, or less than the header, is dropped (Linux:
 * __udp4_lib_rcv() and __udp6_lib_rcv(), short_packet); 0 over IPv6 is a
 * jumbogram's, the whole. Returns 1 if dropped, else 0 and the payload's
 * length in *payload_len. */
static __always_inline int quic_udp_payload_len(__u32 udp_len, __u32 l4_len, int is_v6, __u32 *payload_len)
{
	if (udp_len == 0 && is_v6)
		udp_len = l4_len;
	if (udp_len < sizeof(struct udphdr) || udp_len > l4_len)
		return 1;
	*payload_len = udp_len - sizeof(struct udphdr);
	return 0;
}

/* Would the server drop the datagram offered (quic_offer()) for a length
 * that does not fit, the IP packet's or its own, or for one that cuts it
 * short of an Initial's? If not, the datagram handed over ends where its
 * UDP length says (scratch->segment_len). gathered: the datagram gathered
 * from fragments (its UDP header first, len bytes; ip_frag.h refused
 * fragments that were truncated), or 0: the frame is parsed again. Done here, in
 * sluice_stage_quic, and not in the entry program, where the datagram is
 * first judged: there one value more, kept along the UDP path, took
 * Debian 6.1's verifier past its limit. So a flow's first datagram, sent
 * from the entry program, is handed over as its IP length says: a fake
 * sent first names the flow as a hello of another connection does, which
 * can only make its verdict stricter (controller/quic_flows.py); the
 * window's others cannot spend it. */
static __always_inline int quic_refused_for_length(struct ctx_buff *ctx, struct payload_scratch *scratch,
						   const __u8 *gathered, __u32 len, const struct sluice_config *cfg)
{
	struct packet_info datagram = {};
	__u32 udp_len;

	if (gathered) {
		udp_len = ((__u32)gathered[offsetof(struct udphdr, len)] << 8) | gathered[offsetof(struct udphdr, len) + 1];
	} else {
		__be16 field;
		if (parse_packet(ctx_data(ctx), ctx_data_end(ctx), ctx_len(ctx), &datagram, ~cfg->closed_tunnels) !=
			    PACKET_UNFRAGMENTED || datagram.l4proto != IPPROTO_UDP)
			return 0;
		if (datagram.ip_truncated)
			return 1;
		if (ctx_load_bytes(ctx, datagram.payload_offset - sizeof(struct udphdr) + offsetof(struct udphdr, len),
				   &field, sizeof(field)) < 0)
			return 0;
		udp_len = bpf_ntohs(field);
		len = datagram.payload_len + sizeof(struct udphdr);
	}
	__u32 whole = scratch->segment_len;
	if (quic_udp_payload_len(udp_len, len, scratch->key.ipv6, &scratch->segment_len))
		return 1;
	/* A server reads no client Initial from a datagram shorter than this
	 * (RFC 9000 14.1): one that its UDP length cuts shorter was sent to be
	 * ignored. A server's Version Negotiation, short but not cut, is read. */
	return scratch->segment_len < whole && scratch->segment_len < SLUICE_QUIC_INITIAL_MIN_DATAGRAM;
}

/* The verdict of a UDP packet (gathered: see quic_is_client_initial()). */
static __always_inline int quic_judge_udp(struct ctx_buff *ctx, struct packet_info *pkt,
					  const struct sluice_config *cfg, const __u8 *gathered)
{
	struct flow_id id;
	int sender_is_hi;

	/* Without a controller reading the ring no QUIC flow is ever opened,
	 * and without rules for any flow no other UDP flow is: UDP then
	 * needs no flow lookup at all. */
	if (!(cfg->flags & (SLUICE_CFG_EVENTS | SLUICE_CFG_OPENING_RULES)))
		return verdict_pass_unjudged(pkt->frame_len);
	__u64 now = flow_now(cfg);
	struct flow_state *flow = flow_lookup(pkt, &id, &sender_is_hi);

	if (flow && flow_is_idle(flow, now, cfg)) {
		counter_inc(SLUICE_CNT_FLOWS_EXPIRED);
		flow = 0;
	}
	if (flow) {
		flow_touch(flow, now, cfg);
		const __u8 *client_address = flow_client_address(flow, pkt, sender_is_hi);
		int client_sends = sender_is_hi == flow->client_is_hi;
		int verdict, offer;
		if (flow->state != SLUICE_FLOW_INSPECTING) {
			verdict = verdict_apply(flow, client_address, sender_is_hi, pkt->frame_len, pkt->payload_len, cfg);
			/* A named QUIC flow may carry Initials of another
			 * connection (zapret's fake, its own DCID, ahead of the
			 * real one): the controller weighs those too, for the
			 * rest of the window (controller/quic_flows.py). */
			offer = verdict != CTX_ACT_DROP && flow->state == SLUICE_FLOW_CLASSIFIED &&
				flow->proto == SLUICE_PROTO_QUIC && client_sends;
		} else {
			/* A QUIC flow judged at its opening datagram keeps that
			 * verdict until the controller reads its name. */
			verdict = flow->rule_id ? verdict_apply(flow, client_address, sender_is_hi, pkt->frame_len,
								pkt->payload_len, cfg) : -1;
			if (verdict == CTX_ACT_DROP || flow->state != SLUICE_FLOW_INSPECTING)
				return verdict;
			/* Browsers spread a ClientHello over several Initials,
			 * and a client told its version is not spoken starts
			 * again. */
			offer = 1;
			if (verdict != CTX_ACT_OK)
				verdict = verdict_pass_unjudged(pkt->frame_len);
		}
		if (offer && flow->payload_packets < cfg->window_packets &&
		    (client_sends ? quic_is_client_initial(ctx, pkt, gathered) :
				    quic_is_version_negotiation(ctx, pkt, gathered)))
			quic_offer(ctx, pkt, &id, flow->client_is_hi, gathered, verdict);
		return verdict;
	}
	int quic = (cfg->flags & SLUICE_CFG_EVENTS) && quic_is_client_initial(ctx, pkt, gathered);
	if (!quic && !(cfg->flags & SLUICE_CFG_OPENING_RULES))
		return verdict_pass_unjudged(pkt->frame_len);
	flow = flow_start(&id, sender_is_hi, 1, pkt, now, pkt->seq, pkt->ttl);
	if (!flow)
		return verdict_pass_unjudged(pkt->frame_len);
	counter_inc(SLUICE_CNT_FLOWS_CREATED);
	if (quic) {
		flow->proto = SLUICE_PROTO_QUIC;
		flow->payload_packets = 1;
		quic_send_first(ctx, pkt, &id, sender_is_hi, gathered, cfg);
	}
	if (cfg->flags & (SLUICE_CFG_OPENING_RULES | SLUICE_CFG_QUIC_AT_OPENING))
		quic_judge_opening_datagram(ctx, pkt, &id, sender_is_hi, flow, gathered);
	/* Nothing of a UDP flow but QUIC's Initials is read. */
	if (!quic)
		flow->state = SLUICE_FLOW_GAVE_UP;
	return verdict_pass_unjudged(pkt->frame_len);
}

#endif /* SLUICE_QUIC_H */
