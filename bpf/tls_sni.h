/* SPDX-License-Identifier: GPL-2.0-only */
/* tls_sni.h - find the server name in a TLS ClientHello.
 *
 * The ClientHello is recognised by its content, never by its port: a
 * handshake record (type 22, version 3.x) whose first message is a
 * ClientHello (type 1). The walk follows RFC 8446 section 4.1.2: legacy
 * version, random, session id, cipher suites, compression methods, then the
 * extensions, skipping every extension that is not server_name (GREASE
 * values included, RFC 8701) until it meets server_name (RFC 6066 section 3).
 *
 * Two limits decide every outcome:
 *   hello_end - where the ClientHello says it ends. Anything claiming to go
 *               past it contradicts the outer lengths: malformed.
 *   avail     - where the bytes we hold end (this packet, this record).
 *               Reaching it first means the rest is in a later segment or
 *               record: truncated, not malformed.
 */
#ifndef SLUICE_TLS_SNI_H
#define SLUICE_TLS_SNI_H

#include "payload.h"

#define TLS_CONTENT_CHANGE_CIPHER_SPEC 20
#define TLS_CONTENT_HANDSHAKE 22
#define TLS_LEADING_RECORDS_MAX 4	/* ChangeCipherSpec records stepped over before a hello */
#define TLS_MAJOR_VERSION 3
#define TLS_MAX_MINOR_VERSION 4		/* TLS 1.3's legacy record version is 3.1..3.3 */
#define TLS_HANDSHAKE_CLIENT_HELLO 1
#define TLS_RECORD_HEADER_LEN 5
#define TLS_HANDSHAKE_HEADER_LEN 4
#define TLS_RANDOM_LEN 32
#define TLS_SESSION_ID_MAX 32
#define TLS_EXT_SERVER_NAME 0
#define TLS_EXT_ALPN 16			/* RFC 7301 */
#define TLS_EXT_ENCRYPTED_CLIENT_HELLO 0xfe0d	/* draft-ietf-tls-esni: the outer SNI is a cover name */
#define TLS_SNI_HOST_NAME 0
#define TLS_EXTENSIONS_MAX 64		/* walked one by one; browsers send about 20, GREASE included */
/* Extensions past those, skipped over for server_name: a server reads any
 * number (a hello may carry hundreds of empty ones ahead of its name; a
 * packet holds 375 at most, the 16 KB a stream keeps 4,096). Past these
 * too the hello is not judged. As many as the verifier takes (see
 * tls_skip_extensions()). */
#define TLS_EXTENSIONS_SKIPPED_MAX 1024

enum tls_outcome {
	TLS_NOT_CLIENT_HELLO = 0,
	TLS_SNI_FOUND,
	TLS_NO_SNI,
	TLS_TRUNCATED,
	TLS_MALFORMED,
};

/* tls_check_span()'s "the bytes are held: read on", which is no outcome of
 * the parse (Katran's FURTHER_PROCESSING is the same idea). */
#define TLS_SPAN_HELD (-1)

/* Is [off, off + len) inside the hello? Returns an outcome to stop with, or
 * TLS_SPAN_HELD when the bytes may be read. */
static __always_inline int tls_check_span(__u32 off, __u32 len, __u32 hello_end, __u32 avail)
{
	if (off + len > hello_end)
		return TLS_MALFORMED;
	if (off + len > avail)
		return TLS_TRUNCATED;
	return TLS_SPAN_HELD;
}

/* The server_name extension's body of ext_len bytes at off, within
 * extensions_end (RFC 6066 3: a list of one host_name); on TLS_SNI_FOUND,
 * result->name_off and name_len locate the name. */
static __always_inline int tls_read_server_name(const __u8 *bytes, __u32 off, __u32 ext_len, __u32 avail,
						__u32 mask, struct hello_result *result)
{
	/* server_name_list: length (2), then name_type (1), length (2), name. */
	int span = tls_check_span(off, 5, off + ext_len, avail);
	if (span != TLS_SPAN_HELD)
		return span;
	__u32 list_len = masked_be16(bytes, off, mask);
	__u32 name_type = masked_u8(bytes, off + 2, mask);
	__u32 host_len = masked_be16(bytes, off + 3, mask);
	if (list_len + 2 > ext_len || host_len + 3 > list_len)
		return TLS_MALFORMED;
	if (name_type != TLS_SNI_HOST_NAME || host_len == 0 || host_len > SLUICE_NAME_MAX)
		return TLS_MALFORMED;
	span = tls_check_span(off + 5, host_len, off + ext_len, avail);
	if (span != TLS_SPAN_HELD)
		return span;
	result->name_off = off + 5;
	result->name_len = host_len;
	result->found = 1;
	return TLS_SNI_FOUND;
}

/* Note the extension of ext_type whose body of ext_len bytes is at off in
 * result, if it is ECH or ALPN (ALPN only where its body is held), and
 * fits (1: within the extensions; 0: it claims more, which ends the walk),
 * without a branch: see struct hello_result. */
static __always_inline void tls_note_extension(__u32 ext_type, __u32 off, __u32 ext_len, __u32 avail,
					       __u64 fits, struct hello_result *result)
{
	__u64 is_ech = fits & (((__u64)(ext_type ^ TLS_EXT_ENCRYPTED_CLIENT_HELLO) - 1) >> 63);
	hide_from_compiler(is_ech);
	result->ech |= is_ech;
	/* The ALPN extension, where its body is held (an all-ones mask
	 * where it is, zero elsewhere): */
	__u64 is_alpn = fits & (((__u64)(ext_type ^ TLS_EXT_ALPN) - 1) >> 63);
	__u64 body_held = (((__u64)avail - (off + ext_len)) >> 63) ^ 1;
	__u32 alpn_mask = -(__u32)(is_alpn & body_held);
	hide_from_compiler(alpn_mask);
	result->alpn_off = (result->alpn_off & ~alpn_mask) | (off & alpn_mask);
	result->alpn_len = (result->alpn_len & ~alpn_mask) | (ext_len & alpn_mask);
}

/* The extensions from off on, past the TLS_EXTENSIONS_MAX walked one by
 * one: skipped over with one branch each, its way out (the verifier keeps
 * each pending, 8192 at most, and walks what follows once per way out),
 * noting ECH and ALPN as the walk does. Returns where the first
 * server_name extension's header is, 0 if none; *end_off: where the
 * skipping stopped (extensions_end when it reached it; past it when an
 * extension claims more than the extensions hold). */
static __always_inline __u32 tls_skip_extensions(const __u8 *bytes, __u32 off, __u32 extensions_end,
						 __u32 avail, __u32 mask, struct hello_result *result,
						 __u32 *end_off)
{
	__u64 at = off, server_name_at = 0;
	__u64 held_end = extensions_end < avail ? extensions_end : avail;

	for (__u32 i = 0; i < TLS_EXTENSIONS_SKIPPED_MAX; i++) {
		if (at + 4 > held_end)
			break;
		__u32 ext_type = masked_be16(bytes, at, mask);
		__u32 ext_len = masked_be16(bytes, at + 2, mask);
		__u64 fits = (at + 4 + ext_len - extensions_end - 1) >> 63;
		tls_note_extension(ext_type, at + 4, ext_len, avail, fits, result);
		/* The first server_name's place, where none was met before. */
		__u64 first = (((__u64)ext_type - 1) >> 63) & ((server_name_at - 1) >> 63);
		hide_from_compiler(first);
		server_name_at += first * at;
		at += 4 + ext_len;
	}
	/* Forgotten: what follows is checked once, not once per way out. */
	*end_off = forget_range(result->skipped_to, at);
	return forget_range(result->server_name_at, server_name_at);
}

/* Parse the TLS bytes at the start of `bytes`, a buffer of mask + 1 bytes
 * (avail of them held). On TLS_SNI_FOUND, result->name_off and name_len
 * locate the raw host name. result->ech is set when the extensions walked
 * include Encrypted Client Hello, and result->alpn_off/alpn_len locate the
 * ALPN extension held whole: the walk goes on past server_name for them.
 * Once the name is found, the bytes held ending does not undo it, but
 * result->cut says so: a caller that needs the facts after the name
 * (SLUICE_CFG_WHOLE_HELLO) waits for the rest. */
static __always_inline int tls_parse_client_hello(const __u8 *bytes, __u32 avail, __u32 mask,
						  struct hello_result *result)
{
	int span;

	result->found = 0;
	result->ech = 0;
	result->alpn_len = 0;
	result->cut = 0;
	/* A record cut after its first byte or two (the circumvention tools'
	 * default split) is still the start of one: what is there must fit. */
	if (avail == 0 || masked_u8(bytes, 0, mask) != TLS_CONTENT_HANDSHAKE ||
	    (avail > 1 && masked_u8(bytes, 1, mask) != TLS_MAJOR_VERSION) ||
	    (avail > 2 && masked_u8(bytes, 2, mask) > TLS_MAX_MINOR_VERSION))
		return TLS_NOT_CLIENT_HELLO;
	if (avail < TLS_RECORD_HEADER_LEN)
		return TLS_TRUNCATED;
	__u32 record_end = TLS_RECORD_HEADER_LEN + masked_be16(bytes, 3, mask);
	/* Where this record holds the handshake type, it tells whether this
	 * is a ClientHello at all. */
	if (record_end > TLS_RECORD_HEADER_LEN && avail > TLS_RECORD_HEADER_LEN &&
	    masked_u8(bytes, TLS_RECORD_HEADER_LEN, mask) != TLS_HANDSHAKE_CLIENT_HELLO)
		return TLS_NOT_CLIENT_HELLO;
	/* A handshake header cut by the segment, or by the end of a record
	 * (an empty first record, say): the rest follows. */
	if (avail < TLS_RECORD_HEADER_LEN + TLS_HANDSHAKE_HEADER_LEN ||
	    record_end < TLS_RECORD_HEADER_LEN + TLS_HANDSHAKE_HEADER_LEN)
		return TLS_TRUNCATED;

	__u32 hello_end = TLS_RECORD_HEADER_LEN + TLS_HANDSHAKE_HEADER_LEN + masked_be24(bytes, 6, mask);
	/* Only the first record is parsed here: a ClientHello spread over
	 * several records continues past record_end, which is truncation. */
	if (avail > record_end)
		avail = record_end;

	/* legacy_version (2) and random (32) */
	__u32 off = TLS_RECORD_HEADER_LEN + TLS_HANDSHAKE_HEADER_LEN + 2 + TLS_RANDOM_LEN;

	span = tls_check_span(off, 1, hello_end, avail);
	if (span != TLS_SPAN_HELD)
		return span;
	__u32 session_id_len = masked_u8(bytes, off, mask);
	if (session_id_len > TLS_SESSION_ID_MAX)
		return TLS_MALFORMED;
	off += 1 + session_id_len;

	span = tls_check_span(off, 2, hello_end, avail);
	if (span != TLS_SPAN_HELD)
		return span;
	__u32 cipher_suites_len = masked_be16(bytes, off, mask);
	if (cipher_suites_len < 2 || cipher_suites_len % 2)
		return TLS_MALFORMED;
	off += 2 + cipher_suites_len;

	span = tls_check_span(off, 1, hello_end, avail);
	if (span != TLS_SPAN_HELD)
		return span;
	__u32 compression_len = masked_u8(bytes, off, mask);
	if (compression_len < 1)
		return TLS_MALFORMED;
	off += 1 + compression_len;

	/* A ClientHello may end here: no extensions, so no server name. */
	if (off == hello_end)
		return TLS_NO_SNI;
	span = tls_check_span(off, 2, hello_end, avail);
	if (span != TLS_SPAN_HELD)
		return span;
	__u32 extensions_end = off + 2 + masked_be16(bytes, off, mask);
	if (extensions_end > hello_end)
		return TLS_MALFORMED;
	off += 2;

	for (int i = 0; i < TLS_EXTENSIONS_MAX; i++) {
		if (off == extensions_end)
			return result->found ? TLS_SNI_FOUND : TLS_NO_SNI;
		span = tls_check_span(off, 4, extensions_end, avail);
		if (span != TLS_SPAN_HELD) {
			result->cut = span == TLS_TRUNCATED;
			return result->found ? TLS_SNI_FOUND : span;
		}
		__u32 ext_type = masked_be16(bytes, off, mask);
		__u32 ext_len = masked_be16(bytes, off + 2, mask);
		off += 4;
		if (off + ext_len > extensions_end)
			return result->found ? TLS_SNI_FOUND : TLS_MALFORMED;
		tls_note_extension(ext_type, off, ext_len, avail, 1, result);
		if (ext_type != TLS_EXT_SERVER_NAME || result->found) {
			off += ext_len;
			continue;
		}
		int named = tls_read_server_name(bytes, off, ext_len, avail, mask, result);
		if (named != TLS_SNI_FOUND)
			return named;
		off += ext_len;
	}
	if (off == extensions_end)
		return result->found ? TLS_SNI_FOUND : TLS_NO_SNI;
	/* More extensions than walked one by one: the rest are skipped over. */
	__u32 end_off = off;
	__u32 server_name_at = tls_skip_extensions(bytes, off, extensions_end, avail, mask, result, &end_off);
	int complete = end_off == extensions_end;
	if (result->found) {
		result->cut = !complete;
		return TLS_SNI_FOUND;
	}
	if (server_name_at) {
		__u32 ext_len = masked_be16(bytes, server_name_at + 2, mask);
		if (server_name_at + 4 + ext_len > extensions_end)
			return TLS_MALFORMED;
		int named = tls_read_server_name(bytes, server_name_at + 4, ext_len, avail, mask, result);
		if (named != TLS_SNI_FOUND)
			return named;
		result->cut = !complete;
		return TLS_SNI_FOUND;
	}
	if (complete)
		return TLS_NO_SNI;
	/* An extension past the end, or a header that does not fit in it. */
	if (end_off > extensions_end || end_off + 4 > extensions_end)
		return TLS_MALFORMED;
	/* The bytes held end first, or more extensions than even these:
	 * the rest follows, or we cannot tell, and do not judge. */
	return TLS_TRUNCATED;
}

#endif /* SLUICE_TLS_SNI_H */
