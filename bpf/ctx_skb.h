/* SPDX-License-Identifier: GPL-2.0-only */
/* ctx_skb.h - the packet context of the tc build (sluice_xdp.c compiled
 * with -DSLUICE_CTX_SKB, attached at clsact ingress: --hook tc): the same
 * words as ctx_xdp.h, over the kernel's skb. As Cilium's ctx/skb.h.
 *
 * An skb need not be linear: a GRO aggregate or a local sender's TSO
 * packet carries its payload in pages past data_end. The parser reads
 * headers between data and data_end, and every payload byte through
 * ctx_load_bytes(), which reads the pages too; so the frame's length is
 * skb->len, not data_end - data, and only headers are ever pulled.
 */
#ifndef SLUICE_CTX_SKB_H
#define SLUICE_CTX_SKB_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#define ctx_buff __sk_buff
#define CTX_ENTRY sluice_tc_ingress	/* the program attached at clsact ingress */
#define CTX_ACT_OK TC_ACT_OK
#define CTX_ACT_DROP TC_ACT_SHOT
/* Enough for the deepest header stack parse_packet() opens in practice
 * (VLAN tags, a tunnel, inner IPv6 with options, TCP with options). */
#define CTX_HEADERS_PULL_BYTES 256

static __always_inline void *ctx_data(const struct __sk_buff *ctx)
{
	return (void *)(long)ctx->data;
}

static __always_inline void *ctx_data_end(const struct __sk_buff *ctx)
{
	return (void *)(long)ctx->data_end;
}

static __always_inline __u32 ctx_len(const struct __sk_buff *ctx)
{
	return ctx->len;
}

/* The interface the skb came in on (at clsact ingress, skb->dev's). */
static __always_inline __u32 ctx_ifindex(const struct __sk_buff *ctx)
{
	return ctx->ifindex;
}

static __always_inline int ctx_load_bytes(struct __sk_buff *ctx, __u32 offset, void *to, __u32 len)
{
	return bpf_skb_load_bytes(ctx, offset, to, len);
}

static __always_inline int ctx_store_bytes(struct __sk_buff *ctx, __u32 offset, const void *from, __u32 len)
{
	return bpf_skb_store_bytes(ctx, offset, from, len, 0);
}

static __always_inline int ctx_resize(struct __sk_buff *ctx, __u32 len)
{
	return len == ctx->len ? 0 : bpf_skb_change_tail(ctx, len, 0);
}

/* Bring the first CTX_HEADERS_PULL_BYTES into the linear part, if some of
 * them are not; returns 1 if it did (data and data_end then move: read
 * them again). Only for a packet the parser could not read: a pull may
 * copy the whole skb (TCP keeps clones of what it sends), which no packet
 * the parser reads should pay. */
static __always_inline int ctx_pull_headers(struct __sk_buff *ctx)
{
	__u32 want = ctx->len < CTX_HEADERS_PULL_BYTES ? ctx->len : CTX_HEADERS_PULL_BYTES;

	if (ctx->data_end - ctx->data >= want)
		return 0;
	return bpf_skb_pull_data(ctx, want) == 0;
}

/* Send the skb, rewritten, back out of the interface it came in on. */
static __always_inline int ctx_send_back(struct __sk_buff *ctx)
{
	return bpf_redirect(ctx->ifindex, 0);
}

#endif /* SLUICE_CTX_SKB_H */
