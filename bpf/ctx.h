/* SPDX-License-Identifier: GPL-2.0-only */
/* ctx.h - the packet context the data plane is compiled for: XDP
 * (ctx_xdp.h), or tc ingress where the controller compiles it again with
 * -DSLUICE_CTX_SKB (ctx_skb.h). The code past the context is one source
 * for both; their tail calls go through prog arrays of their own, since a
 * tail call stays within one program type. */
#ifndef SLUICE_CTX_H
#define SLUICE_CTX_H

#ifdef SLUICE_CTX_SKB
#include "ctx_skb.h"
#else
#include "ctx_xdp.h"
#endif

#endif /* SLUICE_CTX_H */
