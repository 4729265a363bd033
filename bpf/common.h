/* SPDX-License-Identifier: GPL-2.0-only */
/* common.h - what every program and stage uses: the data plane's clock, its
 * global counters, and the tail call into the next stage.
 *
 * The headers prefix their helpers with their module's name (rate_,
 * domain_, http_, flow_, ...), as Cilium's bpf/lib does; these few are the
 * data plane's common words, and keep theirs short.
 */
#ifndef SLUICE_COMMON_H
#define SLUICE_COMMON_H

#include "sluice_abi.h"
#include "maps.h"

/* The data plane's time: the kernel's monotonic clock, or a frozen clock
 * that tests set to replay exact packet timings. Rates need nanoseconds;
 * idle timeouts are content with the coarse clock (a tick, a few ms),
 * which costs a fraction of the precise one on every packet. */
static __always_inline __u64 now_ns(const struct sluice_config *cfg)
{
	return cfg->clock_ns ? cfg->clock_ns : bpf_ktime_get_ns();
}

static __always_inline __u64 coarse_now_ns(const struct sluice_config *cfg)
{
	return cfg->clock_ns ? cfg->clock_ns : bpf_ktime_get_coarse_ns();
}

static __always_inline void counter_inc(__u32 counter)
{
	__u64 *value = counters.lookup(&counter);

	if (value)
		*value += 1;
}

/* What became of an encapsulated packet (kind and outcome as parse_packet() left them). */
static __always_inline void tunnel_counter_inc(__u8 kind, __u8 outcome)
{
	__u32 index = kind * SLUICE_TUNNELLED_OUTCOMES + outcome;
	__u64 *value = tunnel_counters.lookup(&index);

	if (value)
		*value += 1;
}

/* Tail-call an inspection stage. A tail call that returns has missed: the
 * stage's slot is empty (a kernel refused an optional stage, or the pinned
 * stages were lost) or the chain hit the kernel's limit of 33 calls. The
 * caller then passes the packet unjudged; counting it (as Cilium counts
 * DROP_MISSED_TAIL_CALL) makes that loss visible as
 * sluice_stage_missed_total instead of silent. */
static __always_inline void call_stage(struct xdp_md *ctx, __u32 stage)
{
	stages.call(ctx, stage);
	counter_inc(SLUICE_CNT_STAGE_MISSED);
}

#endif /* SLUICE_COMMON_H */
