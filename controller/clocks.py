# SPDX-License-Identifier: GPL-2.0-only
"""A rate limit as the data plane keeps it: time per byte, the burst as time,
and the clock a policer (throttle) reads: the coarse one where its bucket is
deep enough; and a flow's idle time as the data plane counts it, in jiffies.

The data plane's precise clock (bpf_ktime_get_ns) costs more than an empty
XDP program on every packet it is read for; the coarse clock, read once a
jiffy per CPU, next to nothing (bench/README.md, "Where the time goes"). A
token bucket needs a clock only as fine as it is deep: on a clock that moves
by ticks of T, tokens arrive in lumps of rate*T, and a CPU's coarse time may
lag another's by a tick more. A bucket that holds COARSE_CLOCK_TICKS such
lumps keeps the rate over any interval, give or take a lump or two, and still
three quarters of its burst on the CPU that lags; a shallower one would pass
less than its rate (at most its burst per tick), so it keeps the precise
clock. See enum sluice_rate_clock in bpf/sluice_abi.h.
"""

import time

from .abi import ABI

# Not in Python's time module; Linux's number (include/uapi/linux/time.h).
CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)

# A bucket this many ticks deep (at its rate) or deeper is policed on the coarse clock.
COARSE_CLOCK_TICKS = 4

PS_PER_SECOND = 10**12
BITS_PER_BYTE = 8


def limit_times(limit) -> tuple[int, int]:
    """(ps_per_byte, burst_ns) of struct rate_limit for a policy's RateLimit."""
    ps_per_byte = PS_PER_SECOND * BITS_PER_BYTE // limit.rate_bps
    return ps_per_byte, limit.burst_bytes * ps_per_byte // 1000


def coarse_tick_ns() -> int:
    """The coarse clock's resolution on this machine: one jiffy, 1/CONFIG_HZ s."""
    return round(time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1e9)


def in_jiffies(duration_ns: int, tick_ns: int) -> int:
    """A duration as the data plane's flow clock counts it (flow_now() in
    bpf/flow.h): whole ticks, rounded up, so that a flow never idles out
    sooner than its policy says."""
    return -(-duration_ns // tick_ns)


def police_clock(burst_ns: int, tick_ns: int) -> int:
    """enum sluice_rate_clock for a policer's bucket of burst_ns at its rate."""
    return ABI.SLUICE_CLOCK_COARSE if burst_ns >= COARSE_CLOCK_TICKS * tick_ns else ABI.SLUICE_CLOCK_PRECISE


def describe_clock(clock: int, tick_ns: int) -> str:
    """The clock a policer reads, for an operator (sluice validate)."""
    if clock == ABI.SLUICE_CLOCK_COARSE:
        return f"coarse clock ({tick_ns / 1e6:g} ms tick)"
    return f"precise clock (burst under {COARSE_CLOCK_TICKS} ticks of {tick_ns / 1e6:g} ms)"
