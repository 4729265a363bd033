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
#include "ctx.h"
#include "policy_maps.h"

/* The data plane's time: the kernel's monotonic clock, or a frozen clock
 * that tests set to replay exact packet timings. Pacing and shallow token
 * buckets need nanoseconds; idle timeouts and deep buckets are content
 * with the coarse clock (a tick, a few ms), which costs a fraction of the
 * precise one on every packet. */
static __always_inline __u64 now_ns(const struct sluice_config *cfg)
{
	return cfg->clock_ns ? cfg->clock_ns : bpf_ktime_get_ns();
}

/* The coarse clock moves only when the tick moves jiffies on, yet reading
 * it is a helper call that cost three quarters of an empty XDP program
 * (measured on kernel 6.18 in a VM; bpf_jiffies64 is inlined by the
 * verifier, a single load). So each CPU keeps the coarse time it read at its
 * current jiffy, and reads the clock again only once jiffies has moved on.
 * A CPU that read in the instant between the tick moving jiffies and it
 * moving the clock keeps that tick's time for a tick more: a CPU's time may
 * be a tick behind another's (time_since() below).
 * A test's frozen clock is read as a coarse clock of clock_tick_ns would
 * read it, so that tests can tell which clock a rate was judged on. */
static __always_inline __u64 coarse_now_ns(const struct sluice_config *cfg)
{
	__u32 zero = 0;

	if (cfg->clock_ns)
		return cfg->clock_tick_ns ? cfg->clock_ns - cfg->clock_ns % cfg->clock_tick_ns : cfg->clock_ns;
	__u64 tick = bpf_jiffies64();
	struct coarse_clock *cached = coarse_clocks.lookup(&zero);
	if (!cached)
		return bpf_ktime_get_coarse_ns();
	if (cached->jiffies != tick) {
		cached->ns = bpf_ktime_get_coarse_ns();
		cached->jiffies = tick;
	}
	return cached->ns;
}

/* now - then, or 0 where then is later: a time another CPU wrote may be a
 * tick ahead of this CPU's coarse time. */
static __always_inline __u64 time_since(__u64 now, __u64 then)
{
	return now > then ? now - then : 0;
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

/* The flags a record goes on a ring with. A wakeup (the kernel's
 * adaptive one, sent when the reader has caught up) is an irq_work:
 * about 6 us in a VM, several times what making the record costs. A
 * reader that looks at the rings after every frame it runs
 * (SLUICE_CFG_RINGS_POLLED, sluice replay) needs none. Branch-free: the
 * flag's bit shifted down to BPF_RB_NO_WAKEUP's. */
static __always_inline __u64 ring_flags(const struct sluice_config *cfg)
{
	return (cfg->flags / SLUICE_CFG_RINGS_POLLED) & BPF_RB_NO_WAKEUP;
}

/* Tail-call an inspection stage. A tail call that returns has missed: the
 * stage's slot is empty (a kernel refused an optional stage, or the pinned
 * stages were lost) or the chain hit the kernel's limit of 33 calls. The
 * caller then passes the packet unjudged; counting it (as Cilium counts
 * DROP_MISSED_TAIL_CALL) makes that loss visible as
 * sluice_stage_missed_total instead of silent. */
static __always_inline void call_stage(struct ctx_buff *ctx, __u32 stage)
{
	stages.call(ctx, stage);
	counter_inc(SLUICE_CNT_STAGE_MISSED);
}

#endif /* SLUICE_COMMON_H */
