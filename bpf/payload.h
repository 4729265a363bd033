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

#define PAYLOAD_COPY_BYTES 2048		/* a full Ethernet payload fits */
#define PAYLOAD_COPY_MASK (PAYLOAD_COPY_BYTES - 1)
#define NAME_BUFFER_MASK 255		/* names are at most SLUICE_NAME_MAX bytes */
#define HTTP_LINES_MAX 32		/* header lines searched for Host */
#define HTTP_LINE_SLOTS_MASK 63		/* slots past HTTP_LINES_MAX absorb writes */

/* Hide a value from the compiler's range analysis. In a loop such as
 * "for (i = 0; i < MAX; i++) if (i >= len) break;" clang, knowing len <= MAX,
 * would fold both tests into "i != len", whose end the verifier cannot see.
 * Hiding i keeps the constant bound in the code. */
#define hide_from_compiler(var) asm volatile("" : "+r"(var))

/* What the entry program hands to the inspection stages it tail-calls. */
/* Pass a value through map memory and back. The verifier then knows only
 * that it is some number: the code after it is checked once, rather than
 * once for every value (say, every loop iteration) that could reach it. */
#define forget_range(slot, value) ({ (slot) = (value); *(volatile __u32 *)&(slot); })

struct payload_scratch {
	struct flow_key key;		/* the flow being inspected */
	__u32 frame_len;		/* of the packet in hand, for the counters */
	__u32 len;			/* payload bytes copied into bytes[] */
	__u32 raw_name_off;		/* where the name found lies in bytes[] */
	__u32 raw_name_len;		/* 0: the flow has no name */
	__u32 name_len;			/* bytes of name[] in use */
	__u32 payload_offset;		/* where bytes[] was copied from, in the frame */
	__u32 payload_len;		/* the packet's payload from there, copied or not */
	__u8 sender_is_hi;		/* the packet's sender is key's hi end */
	__u8 proto;			/* enum sluice_proto, once known */
	__u8 pad[2];
	__u32 forget_slot;		/* see forget_range() */
	__u32 set_id;			/* the rule set the name leads to, 0: none */
	__u8 bytes[PAYLOAD_COPY_BYTES];
	char name[SLUICE_NAME_MAX + 1];	/* the extracted, normalised name */
	__u16 line_starts[HTTP_LINE_SLOTS_MASK + 1]; /* see find_line_starts() */
};

static __always_inline __u8 payload_u8(const __u8 *bytes, __u32 off)
{
	return bytes[off & PAYLOAD_COPY_MASK];
}

static __always_inline __u32 payload_be16(const __u8 *bytes, __u32 off)
{
	return ((__u32)payload_u8(bytes, off) << 8) | payload_u8(bytes, off + 1);
}

static __always_inline __u32 payload_be24(const __u8 *bytes, __u32 off)
{
	return ((__u32)payload_u8(bytes, off) << 16) | payload_be16(bytes, off + 1);
}

#endif /* SLUICE_PAYLOAD_H */
