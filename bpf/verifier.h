/* SPDX-License-Identifier: GPL-2.0-only */
/* verifier.h - the idioms that get sluice's C past the BPF verifier.
 *
 * The verifier proves every memory access in bounds and every loop finite by
 * walking each path with the range it knows for each register. What it
 * cannot follow, it refuses; what it must follow in too many states, it gives
 * up on ("program too complex", "sequence of 8193 jumps"). Each idiom here
 * answers one of those:
 *
 *   hide_from_compiler(var)  clang, knowing a value's range, rewrites a bound
 *                            the verifier needs ("i < MAX" into "i != len"),
 *                            or drops a mask it proves needless; hiding the
 *                            value keeps the code as written.
 *   forget_range(slot, v)    the opposite: a value whose exact range would
 *                            make the verifier check what follows once per
 *                            possible value goes through map memory, and
 *                            comes back as "some number", checked once.
 *   copy_within_maps()       bpf_probe_read_kernel by its helper number, for
 *                            copies between map values at offsets the
 *                            verifier cannot bound statically.
 *   masked_u8/_be16/_be24    reads at data-dependent offsets into a buffer of
 *                            a power-of-two size, masked into it: in bounds
 *                            without a proof per offset (payload.h).
 *
 * Idioms that live with their one user:
 *
 *   parse_rejoin()           (parsing_helpers.h) where the parser's ways
 *                            through the headers meet, the cursor becomes
 *                            the frame's start plus a bounded offset, so
 *                            what follows is verified once, not once per way.
 *   flags in map memory      (hello_result, segment_view in scratch.h) the
 *                            verifier does not follow values through memory,
 *                            so flags kept there do not split its states.
 *   slack past a buffer      (client_stream.bytes, frag_datagram.bytes,
 *                            payload_scratch.line_starts in scratch.h) a
 *                            write at a masked offset near the end lands in
 *                            the slack instead of needing its own bound.
 *   stages by tail call      (enum sluice_stage) each stage is its own
 *                            program, so the verifier checks each alone.
 *
 * No verifier trick without its reason: say why at each use that is not
 * obvious, and add a new idiom here.
 */
#ifndef SLUICE_VERIFIER_H
#define SLUICE_VERIFIER_H

#include "sluice_abi.h"

/* Hide a value from the compiler's range analysis. In a loop such as
 * "for (i = 0; i < MAX; i++) if (i >= len) break;" clang, knowing len <= MAX,
 * would fold both tests into "i != len", whose end the verifier cannot see.
 * Hiding i keeps the constant bound in the code. */
#define hide_from_compiler(var) asm volatile("" : "+r"(var))

/* Pass a value through map memory and back. The verifier then knows only
 * that it is some number: the code after it is checked once, rather than
 * once for every value (say, every loop iteration) that could reach it. */
#define forget_range(slot, value) ({ (slot) = (value); *(volatile __u32 *)&(slot); })

/* Copy between map values at offsets the verifier cannot bound statically.
 * This is bpf_probe_read_kernel, called by its helper number: bcc 0.26
 * turns that name into the legacy bpf_probe_read, which XDP programs may not
 * call, whenever it cannot read kernel symbol addresses, as under the
 * systemd unit, which grants no CAP_SYSLOG. Every kernel sluice supports
 * (5.18 and later) has the helper. */
static long (*copy_within_maps)(void *dst, __u32 size, const void *src) =
	(void *)BPF_FUNC_probe_read_kernel;

/* Reads from a buffer of mask + 1 bytes (a power of two). The offset is
 * hidden from the compiler, which would otherwise drop a mask it can prove
 * needless, leaving the verifier, which proves less, an unbounded read. */
static __always_inline __u8 masked_u8(const __u8 *bytes, __u32 off, __u32 mask)
{
	hide_from_compiler(off);
	return bytes[off & mask];
}

static __always_inline __u32 masked_be16(const __u8 *bytes, __u32 off, __u32 mask)
{
	return ((__u32)masked_u8(bytes, off, mask) << 8) | masked_u8(bytes, off + 1, mask);
}

static __always_inline __u32 masked_be24(const __u8 *bytes, __u32 off, __u32 mask)
{
	return ((__u32)masked_u8(bytes, off, mask) << 16) | masked_be16(bytes, off + 1, mask);
}

#endif /* SLUICE_VERIFIER_H */
