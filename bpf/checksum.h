/* SPDX-License-Identifier: GPL-2.0-only */
/* checksum.h - the Internet checksum (RFC 1071) as a receiver checks it.
 *
 * A receiver drops a packet whose checksum does not hold, before any
 * protocol reads it: IPv4's header checksum in ip_rcv_core(), TCP's in
 * tcp_v4_rcv()/tcp_v6_rcv(). Circumvention tools send decoys so made
 * (zapret's badsum, Geneva's tamper{TCP:chksum:corrupt} and
 * tamper{IP:chksum:corrupt}): a middlebox that reads them reads what the
 * server never sees. receiver.h and ip_frag.h check the client's segments
 * and fragments of flows still inspected, and only those: an established
 * flow pays nothing.
 *
 * bpf_csum_diff() returns the sum it keeps as 32 bits, unfolded before
 * Linux 6.12 and folded to 16 since; both fold to the same 16 bits here.
 */
#ifndef SLUICE_CHECKSUM_H
#define SLUICE_CHECKSUM_H

#include "ctx.h"
#include "verifier.h"

#define IPV4_HEADER_MAX 60		/* IHL 15: 20 bytes and 40 of options */
#define IPV4_HEADER_MASK 63

/* A ones' complement sum folded to 16 bits: 0xffff where a checksum holds. */
static __always_inline __u16 checksum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* Does the IPv4 header of len bytes (20 to 60, a multiple of 4) at offset
 * in the frame hold its checksum? A header that cannot be read holds: the
 * parser read it already, and a frame is never judged on what was not
 * seen. */
static __always_inline int checksum_ipv4_header_holds(struct ctx_buff *ctx, __u32 offset, __u32 len)
{
	__u8 header[IPV4_HEADER_MASK + 1];

	if (len < 20 || len > IPV4_HEADER_MAX)
		return 1;
	/* len is 20..60 already; the mask shows the verifier a size that
	 * fits the buffer, the ~3 one that bpf_csum_diff() takes. */
	hide_from_compiler(len);
	len = ((len - 1) & IPV4_HEADER_MASK) + 1;
	if (ctx_load_bytes(ctx, offset, header, len) < 0)
		return 1;
	return checksum_fold((__u32)bpf_csum_diff(0, 0, (void *)header, len & ~3U, 0)) == 0xffff;
}

#endif /* SLUICE_CHECKSUM_H */
