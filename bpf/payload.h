/* SPDX-License-Identifier: GPL-2.0-only */
/* payload.h - a per-CPU copy of the start of a packet's payload.
 *
 * The TLS and HTTP parsers walk lengths read from the packet itself. Rather
 * than prove each of those data-dependent offsets against data_end, the
 * payload is copied once into a scratch buffer whose size is a power of two,
 * and every read masks its offset into that buffer. The verifier then needs
 * no bounds proofs at all, and the parsers check offsets against the number
 * of bytes really copied, which is the only bound that matters to them.
 */
#ifndef SLUICE_PAYLOAD_H
#define SLUICE_PAYLOAD_H

#include "sluice_abi.h"
#include "scratch.h"
#include "verifier.h"

static __always_inline __u8 payload_u8(const __u8 *bytes, __u32 off)
{
	return masked_u8(bytes, off, PAYLOAD_COPY_MASK);
}

static __always_inline __u32 payload_be16(const __u8 *bytes, __u32 off)
{
	return masked_be16(bytes, off, PAYLOAD_COPY_MASK);
}

static __always_inline __u32 payload_be32(const __u8 *bytes, __u32 off)
{
	return (payload_be16(bytes, off) << 16) | payload_be16(bytes, off + 2);
}

#endif /* SLUICE_PAYLOAD_H */
