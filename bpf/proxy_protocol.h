/* SPDX-License-Identifier: GPL-2.0-only */
/* proxy_protocol.h - step over a PROXY protocol header (HAProxy's, v1 and
 * v2) that a load balancer puts at the start of a TCP stream it forwards,
 * ahead of the client's own first bytes.
 *
 * Only where the policy asks (inspection.proxy_protocol): any client could
 * send such a header, and only the servers behind a load balancer accept it.
 */
#ifndef SLUICE_PROXY_PROTOCOL_H
#define SLUICE_PROXY_PROTOCOL_H

#include "payload.h"

#define PROXY_V1_PREFIX_LEN 6		/* "PROXY " */
#define PROXY_V1_LINE_MAX 107		/* the longest v1 line, CRLF included */
#define PROXY_V2_SIGNATURE_LEN 12
#define PROXY_V2_HEADER_LEN 16		/* signature, version and command, family, length */
#define PROXY_V2_VERSION_MASK 0xF0
#define PROXY_V2_VERSION 0x20
#define PROXY_V2_COMMAND_MASK 0x0F
#define PROXY_V2_COMMAND_MAX 1		/* LOCAL or PROXY */

/* The signature "\r\n\r\n\0\r\nQUIT\n", as three big-endian words. */
#define PROXY_V2_SIGNATURE_0 0x0D0A0D0A
#define PROXY_V2_SIGNATURE_1 0x000D0A51
#define PROXY_V2_SIGNATURE_2 0x5549540A

/* The v1 header's length: "PROXY " up to its CRLF, all in bytes[0..len). */
static __always_inline __u32 proxy_v1_len(const __u8 *bytes, __u32 len)
{
	if (len < PROXY_V1_PREFIX_LEN || payload_u8(bytes, 0) != 'P' || payload_u8(bytes, 1) != 'R' ||
	    payload_u8(bytes, 2) != 'O' || payload_u8(bytes, 3) != 'X' || payload_u8(bytes, 4) != 'Y' ||
	    payload_u8(bytes, 5) != ' ')
		return 0;
	for (__u32 i = PROXY_V1_PREFIX_LEN; i < PROXY_V1_LINE_MAX - 1; i++) {
		if (i + 1 >= len)
			return 0;
		if (payload_u8(bytes, i) == '\r' && payload_u8(bytes, i + 1) == '\n')
			return i + 2;
	}
	return 0;
}

/* The v2 header's length, from its own length field: it may reach past
 * bytes[0..len), into the stream's next segments. */
static __always_inline __u32 proxy_v2_len(const __u8 *bytes, __u32 len)
{
	if (len < PROXY_V2_HEADER_LEN)
		return 0;
	if (payload_be32(bytes, 0) != PROXY_V2_SIGNATURE_0 || payload_be32(bytes, 4) != PROXY_V2_SIGNATURE_1 ||
	    payload_be32(bytes, 8) != PROXY_V2_SIGNATURE_2)
		return 0;
	__u8 version_command = payload_u8(bytes, PROXY_V2_SIGNATURE_LEN);
	if ((version_command & PROXY_V2_VERSION_MASK) != PROXY_V2_VERSION ||
	    (version_command & PROXY_V2_COMMAND_MASK) > PROXY_V2_COMMAND_MAX)
		return 0;
	return PROXY_V2_HEADER_LEN + payload_be16(bytes, PROXY_V2_HEADER_LEN - 2);
}

/* How many bytes of PROXY protocol header the payload in bytes[0..len)
 * starts with; 0 if none. */
static __always_inline __u32 proxy_header_len(const __u8 *bytes, __u32 len)
{
	__u32 v1 = proxy_v1_len(bytes, len);

	return v1 ? v1 : proxy_v2_len(bytes, len);
}

#endif /* SLUICE_PROXY_PROTOCOL_H */
