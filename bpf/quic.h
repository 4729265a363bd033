/* quic.h - hand the Initial packets of new QUIC flows to the controller.
 *
 * A QUIC client's first datagrams carry its ClientHello in Initial packets,
 * encrypted with keys derived from the connection id (RFC 9001, RFC 9369).
 * Decrypting that in the kernel is out of reach, so the data plane only
 * recognises a client Initial, opens a flow entry for it, and sends the
 * datagram whole to the controller over a ring buffer; the flow passes
 * meanwhile. The controller (controller/quic_flows.py) reassembles the
 * ClientHello, finds the rule for its SNI and writes the verdict into the
 * flow's entry, which every later packet of the flow obeys.
 *
 * UDP that is not a QUIC client Initial, or that arrives while no
 * controller reads the ring, passes without an entry.
 */
#ifndef SLUICE_QUIC_H
#define SLUICE_QUIC_H

#include "maps.h"
#include "flow.h"
#include "verdict.h"

#define QUIC_LONG_HEADER 0x80
#define QUIC_LONG_TYPE_SHIFT 4
#define QUIC_LONG_TYPE_MASK 3
#define QUIC_V1 0x00000001
#define QUIC_V1_INITIAL 0		/* RFC 9000, 17.2 */
#define QUIC_V2 0x6b3343cf
#define QUIC_V2_INITIAL 1		/* RFC 9369, 3.2: packet types are rotated */
#define QUIC_INITIAL_MIN_DATAGRAM 1200	/* a client pads its Initial datagrams to this */
#define QUIC_HEADER_PEEK 5		/* first byte and version */
#define QUIC_DATAGRAM_MASK (SLUICE_QUIC_DATAGRAM_MAX - 1)

/* Do a UDP payload's first QUIC_HEADER_PEEK bytes start a client Initial
 * of QUIC v1 or v2? */
static __always_inline int is_quic_initial_header(const __u8 *head)
{
	if (!(head[0] & QUIC_LONG_HEADER))
		return 0;
	__u32 version = ((__u32)head[1] << 24) | ((__u32)head[2] << 16) | ((__u32)head[3] << 8) | head[4];
	__u8 type = (head[0] >> QUIC_LONG_TYPE_SHIFT) & QUIC_LONG_TYPE_MASK;
	return (version == QUIC_V1 && type == QUIC_V1_INITIAL) ||
	       (version == QUIC_V2 && type == QUIC_V2_INITIAL);
}

/* Does the packet carry a client Initial? Its payload is in the frame at
 * pkt->payload_offset, or, gathered out of IP fragments (ip_frag.h), in map
 * memory at gathered. */
static __always_inline int is_quic_client_initial(struct xdp_md *ctx, const struct packet_info *pkt,
						  const __u8 *gathered)
{
	__u8 head[QUIC_HEADER_PEEK];

	if (pkt->payload_len < QUIC_INITIAL_MIN_DATAGRAM)
		return 0;
	if (gathered)
		__builtin_memcpy(head, gathered, sizeof(head));
	else if (bpf_xdp_load_bytes(ctx, pkt->payload_offset, head, sizeof(head)) < 0)
		return 0;
	return is_quic_initial_header(head);
}

static __always_inline void send_to_controller(struct xdp_md *ctx, const struct packet_info *pkt,
					       const struct flow_key *key, int client_is_hi,
					       const __u8 *gathered)
{
	struct quic_datagram *datagram = quic_datagrams.ringbuf_reserve(sizeof(struct quic_datagram));
	__u32 len = pkt->payload_len;

	if (!datagram) {
		count(SLUICE_CNT_QUIC_RING_FULL);
		return;
	}
	__builtin_memcpy(&datagram->key, key, sizeof(*key));
	datagram->client_is_hi = client_is_hi;
	if (len > SLUICE_QUIC_DATAGRAM_MAX)
		len = SLUICE_QUIC_DATAGRAM_MAX;
	/* len is 1..SLUICE_QUIC_DATAGRAM_MAX already; the mask shows the verifier. */
	hide_from_compiler(len);
	len = ((len - 1) & QUIC_DATAGRAM_MASK) + 1;
	datagram->len = len;
	int loaded = gathered ? copy_within_maps(datagram->bytes, len, gathered) :
				bpf_xdp_load_bytes(ctx, pkt->payload_offset, datagram->bytes, len);
	if (loaded < 0) {
		quic_datagrams.ringbuf_discard(datagram, 0);
		return;
	}
	quic_datagrams.ringbuf_submit(datagram, 0);
	count(SLUICE_CNT_QUIC_DATAGRAMS);
}

/* The verdict of a UDP packet (gathered: see is_quic_client_initial()). */
static __always_inline int judge_udp(struct xdp_md *ctx, struct packet_info *pkt,
				     const struct sluice_config *cfg, const __u8 *gathered)
{
	struct flow_key key = {};

	/* Without a controller reading the ring no QUIC flow is ever opened,
	 * so UDP needs no flow lookup at all. */
	if (!(cfg->flags & SLUICE_CFG_EVENTS))
		return pass_unjudged(pkt->frame_len);
	int sender_is_hi = make_flow_key(pkt, &key);
	__u64 now = coarse_now_ns(cfg);
	struct flow_state *flow = flows.lookup(&key);

	if (flow && flow_is_idle(flow, now, cfg)) {
		count(SLUICE_CNT_FLOWS_EXPIRED);
		flow = 0;
	}
	if (flow) {
		flow_touch(flow, now, cfg);
		if (flow->state != SLUICE_FLOW_INSPECTING)
			return apply_verdict(flow, &key, sender_is_hi, pkt->frame_len, cfg);
		/* Browsers spread a ClientHello over several Initials. */
		if (sender_is_hi == flow->client_is_hi && flow->payload_packets < cfg->window_packets &&
		    is_quic_client_initial(ctx, pkt, gathered)) {
			flow->payload_packets += 1;
			send_to_controller(ctx, pkt, &key, sender_is_hi, gathered);
		}
		return pass_unjudged(pkt->frame_len);
	}
	if (!is_quic_client_initial(ctx, pkt, gathered))
		return pass_unjudged(pkt->frame_len);
	flow = flow_start(&key, sender_is_hi, 1, 0, now);
	if (!flow)
		return pass_unjudged(pkt->frame_len);
	count(SLUICE_CNT_FLOWS_CREATED);
	flow->proto = SLUICE_PROTO_QUIC;
	flow->payload_packets = 1;
	send_to_controller(ctx, pkt, &key, sender_is_hi, gathered);
	return pass_unjudged(pkt->frame_len);
}

#endif /* SLUICE_QUIC_H */
