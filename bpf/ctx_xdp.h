/* SPDX-License-Identifier: GPL-2.0-only */
/* ctx_xdp.h - the packet context of the XDP build: what the parsing,
 * matching and verdict code asks of the packet in hand, as XDP offers it.
 * ctx_skb.h is the same for tc ingress (sluice_xdp.c compiled again with
 * -DSLUICE_CTX_SKB); ctx.h picks one. As Cilium's bpf/include/bpf/ctx/xdp.h.
 */
#ifndef SLUICE_CTX_XDP_H
#define SLUICE_CTX_XDP_H

#include <uapi/linux/bpf.h>

#define ctx_buff xdp_md
#define CTX_ENTRY sluice_xdp		/* the program attached to interfaces */
#define CTX_ACT_OK XDP_PASS
#define CTX_ACT_DROP XDP_DROP

static __always_inline void *ctx_data(const struct xdp_md *ctx)
{
	return (void *)(long)ctx->data;
}

static __always_inline void *ctx_data_end(const struct xdp_md *ctx)
{
	return (void *)(long)ctx->data_end;
}

/* The whole frame's length: XDP sees a frame whole, between data and data_end. */
static __always_inline __u32 ctx_len(const struct xdp_md *ctx)
{
	return ctx->data_end - ctx->data;
}

static __always_inline int ctx_load_bytes(struct xdp_md *ctx, __u32 offset, void *to, __u32 len)
{
	return bpf_xdp_load_bytes(ctx, offset, to, len);
}

static __always_inline int ctx_store_bytes(struct xdp_md *ctx, __u32 offset, const void *from, __u32 len)
{
	return bpf_xdp_store_bytes(ctx, offset, (void *)from, len);
}

/* The interface the frame came in on. */
static __always_inline __u32 ctx_ifindex(const struct xdp_md *ctx)
{
	return ctx->ingress_ifindex;
}

/* Make the frame len bytes long (a reply built in place). */
static __always_inline int ctx_resize(struct xdp_md *ctx, __u32 len)
{
	int delta = (int)len - (int)(ctx->data_end - ctx->data);

	return delta ? bpf_xdp_adjust_tail(ctx, delta) : 0;
}

/* XDP's frame is whole: there is never more of it to bring between data
 * and data_end. */
static __always_inline int ctx_pull_headers(struct xdp_md *ctx)
{
	return 0;
}

/* The verdict that sends the frame, rewritten, back out of the interface it came in on. */
static __always_inline int ctx_send_back(struct xdp_md *ctx)
{
	return XDP_TX;
}

#endif /* SLUICE_CTX_XDP_H */
