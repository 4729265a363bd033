/* SPDX-License-Identifier: GPL-2.0-only */
/* http_host.h - find the Host header of an HTTP/1.x request.
 *
 * A request is recognised by its content, on any port: a method token, a
 * space, and a first line that ends in "HTTP/1.x" (RFC 9112 section 3).
 * Header field names are case-insensitive and the value may be surrounded by
 * optional whitespace (RFC 9110 section 5.6.3). The Host value loses its
 * port; an IPv6 literal loses its brackets. A request whose target is in
 * absolute form ("GET http://name/ HTTP/1.1") is named by its target, not
 * by its Host field, as servers take it (RFC 9112 section 3.2.2).
 */
#ifndef SLUICE_HTTP_HOST_H
#define SLUICE_HTTP_HOST_H

#include "payload.h"

#define HTTP_METHOD_MAX 24		/* longer than any registered method */
#define HTTP_VERSION_PREFIX_LEN 7	/* "HTTP/1." */
#define HTTP_HOST_FIELD_LEN 5		/* "host:" */
#define HTTP_OWS_MAX 16			/* whitespace tolerated before the value */
#define HTTP_HOST_VALUE_MAX (SLUICE_NAME_MAX + 8) /* a name, a colon and a port */
#define HTTP_SCHEME_MAX 16		/* "http", "https", and room for any other */
#define HTTP_AUTHORITY_MAX 512		/* userinfo@host:port of an absolute-form target */
#define HTTP_EMPTY_LINE_BYTES_MAX 16	/* CR and LF bytes stepped over before a request line */
/* A request in a stream is searched for its Host line this far in one
 * pass: the verifier follows at most 8192 jumps in one go, two per byte
 * here. More passes, each a tail call, read on to the stream's end. */
#define HTTP_STREAM_SCAN_BYTES 2600
/* Of the Host line, what http_parse_host_value() may read: the field name, the
 * whitespace, a value, the line end. */
#define HTTP_HOST_LINE_COPY (HTTP_HOST_FIELD_LEN + HTTP_OWS_MAX + HTTP_HOST_VALUE_MAX + 2)
/* "\nhost:" as it reads in the last six bytes of a 64-bit shift register. */
#define HTTP_HOST_LINE_PATTERN 0x0a686f73743aULL

enum http_outcome {
	HTTP_NOT_REQUEST = 0,
	HTTP_HOST_FOUND,
	HTTP_NO_HOST,			/* complete header block without a usable Host */
	HTTP_TRUNCATED,			/* the header block continues past these bytes */
};

/* RFC 9110 tchar: the characters a method token may use. */
static __always_inline int http_is_token_char(__u8 c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
	case '+': case '-': case '.': case '^': case '_': case '`': case '|': case '~':
		return 1;
	}
	return 0;
}

static __always_inline int http_is_ows(__u8 c)
{
	return c == ' ' || c == '\t';
}

/* Where the line whose '\n' is at newline_off ends without its '\r', if
 * it has one (RFC 9112 2.2 lets a recipient take a bare LF as the end). */
static __always_inline __u32 http_line_content_end(const __u8 *bytes, __u32 newline_off)
{
	return newline_off > 0 && payload_u8(bytes, newline_off - 1) == '\r' ? newline_off - 1 : newline_off;
}

/* Does the request line's content, up to end, end in "HTTP/1.x"? */
static __always_inline int http_request_line_has_version(const __u8 *bytes, __u32 end)
{
	if (end < HTTP_VERSION_PREFIX_LEN + 1)
		return 0;
	__u32 v = end - HTTP_VERSION_PREFIX_LEN - 1;
	__u8 digit = payload_u8(bytes, end - 1);
	return payload_u8(bytes, v) == 'H' && payload_u8(bytes, v + 1) == 'T' &&
	       payload_u8(bytes, v + 2) == 'T' && payload_u8(bytes, v + 3) == 'P' &&
	       payload_u8(bytes, v + 4) == '/' && payload_u8(bytes, v + 5) == '1' &&
	       payload_u8(bytes, v + 6) == '.' && digit >= '0' && digit <= '9';
}

static __always_inline int http_is_host_field(const __u8 *bytes, __u32 off)
{
	/* OR-ing 0x20 lower-cases ASCII letters and leaves ':' alone. */
	return (payload_u8(bytes, off) | 0x20) == 'h' &&
	       (payload_u8(bytes, off + 1) | 0x20) == 'o' &&
	       (payload_u8(bytes, off + 2) | 0x20) == 's' &&
	       (payload_u8(bytes, off + 3) | 0x20) == 't' &&
	       payload_u8(bytes, off + 4) == ':';
}

/* Locate the host in the Host value that starts at off. */
static __always_inline int http_parse_host_value(struct payload_scratch *scratch, __u32 off,
						 __u32 *name_off, __u32 *name_len)
{
	const __u8 *bytes = scratch->bytes;
	__u32 avail = scratch->len;

	for (int i = 0; i < HTTP_OWS_MAX; i++) {
		if (off >= avail)
			return HTTP_TRUNCATED;
		if (!http_is_ows(payload_u8(bytes, off)))
			break;
		off++;
	}
	/* More whitespace than that, which servers step over however much
	 * there is: the stream's scan finds where the value starts. */
	if (off >= avail || http_is_ows(payload_u8(bytes, off)))
		return HTTP_TRUNCATED;

	int bracketed = payload_u8(bytes, off) == '[';
	__u32 start = forget_range(scratch->forget_slot, off + bracketed);
	__u32 len = 0;
	/* Past SLUICE_NAME_MAX bytes without the host's end no continuation
	 * can make it a name: there is none, whether or not the value goes on. */
	for (; len <= SLUICE_NAME_MAX; len++) {
		if (start + len >= avail)
			return HTTP_TRUNCATED;
		__u8 c = payload_u8(bytes, start + len);
		if (c == '\r' || c == '\n' || http_is_ows(c))
			break;
		if (bracketed ? c == ']' : c == ':')
			break;
	}
	if (len == 0 || len > SLUICE_NAME_MAX)
		return HTTP_NO_HOST;
	*name_off = start;
	*name_len = len;
	return HTTP_HOST_FOUND;
}

/* Record where the first HTTP_LINES_MAX lines after the request line start:
 * line_starts[k] is the offset just past the (k+1)-th newline. The loop body
 * is branch-free arithmetic apart from its exit, because the verifier keeps
 * every untaken branch of every iteration pending, and a branchy body over a
 * full payload would exceed its limit. Returns the number of newlines found
 * (at most HTTP_LINES_MAX). */
static __always_inline __u32 http_find_line_starts(const __u8 *bytes, __u32 avail, __u16 *line_starts)
{
	__u64 newlines = 0;

	for (__u64 i = 0; i < PAYLOAD_COPY_BYTES; i++) {
		/* 1 while below the bound, from the sign bit of the difference */
		__u64 more_room = (newlines - HTTP_LINES_MAX) >> 63;
		__u64 in_payload = (i - avail) >> 63;
		if (!(more_room & in_payload))
			break;
		__u64 is_newline = ((__u64)(payload_u8(bytes, i) ^ '\n') - 1) >> 63;
		line_starts[newlines & HTTP_LINE_SLOTS_MASK] = i + 1;
		newlines += is_newline;
	}
	return newlines;
}

/* Is the method, of method_len bytes, CONNECT (methods are case-sensitive, RFC 9110 9.1)? */
static __always_inline int http_is_connect(const __u8 *bytes, __u32 method_len)
{
	return method_len == 7 && payload_u8(bytes, 0) == 'C' && payload_u8(bytes, 1) == 'O' &&
	       payload_u8(bytes, 2) == 'N' && payload_u8(bytes, 3) == 'N' && payload_u8(bytes, 4) == 'E' &&
	       payload_u8(bytes, 5) == 'C' && payload_u8(bytes, 6) == 'T';
}

static __always_inline int http_is_scheme_char(__u8 c)
{
	__u8 lower = c | 0x20;

	return (lower >= 'a' && lower <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
}

/* Where the authority of an absolute-form target (scheme "://" authority)
 * that starts at off begins, or 0 when the target has another form. */
static __always_inline __u32 http_absolute_form_authority(const __u8 *bytes, __u32 off, __u32 line_end)
{
	__u8 first = payload_u8(bytes, off) | 0x20;

	if (first < 'a' || first > 'z')
		return 0;
	for (int i = 1; i < HTTP_SCHEME_MAX; i++) {
		__u32 at = off + i;
		if (at + 3 > line_end)
			return 0;
		__u8 c = payload_u8(bytes, at);
		if (c == ':')
			return payload_u8(bytes, at + 1) == '/' && payload_u8(bytes, at + 2) == '/' ? at + 3 : 0;
		if (!http_is_scheme_char(c))
			return 0;
	}
	return 0;
}

/* The host of the authority at start: past any userinfo ("user@"), up to
 * the port, path, query, fragment or the space before the version. */
static __always_inline int http_parse_authority(struct payload_scratch *scratch, __u32 start, __u32 line_end,
						__u32 *name_off, __u32 *name_len)
{
	const __u8 *bytes = scratch->bytes;
	__u64 host = start;
	__u32 end = 0;

	for (__u32 i = 0; i < HTTP_AUTHORITY_MAX; i++) {
		__u32 at = start + i;
		__u8 c = payload_u8(bytes, at);
		if (at >= line_end || c == '/' || c == '?' || c == '#' || c == ' ') {
			end = at;
			break;
		}
		/* Branch-free, as in http_find_line_starts(): the host starts past the last '@'. */
		__u64 is_at = ((__u64)(c ^ '@') - 1) >> 63;
		hide_from_compiler(is_at);
		host += is_at * (at + 1 - host);
	}
	if (end == 0)
		return HTTP_NO_HOST;
	/* Both forgotten: the host is then walked once, not once for every
	 * place the authority could have ended. */
	end = forget_range(scratch->forget_slots[0], end);
	__u32 first = forget_range(scratch->forget_slot, (__u32)host);
	int bracketed = first < end && payload_u8(bytes, first) == '[';
	first += bracketed;
	__u32 len = 0;
	for (; len <= SLUICE_NAME_MAX; len++) {
		if (first + len >= end)
			break;
		__u8 c = payload_u8(bytes, first + len);
		if (c == '\r' || c == '\n' || http_is_ows(c) || (bracketed ? c == ']' : c == ':'))
			break;
	}
	if (len == 0 || len > SLUICE_NAME_MAX)
		return HTTP_NO_HOST;
	*name_off = first;
	*name_len = len;
	return HTTP_HOST_FOUND;
}

/* The request line: a method, a space, a target, "HTTP/1.x". Returns
 * HTTP_HOST_FOUND when it is one, having noted in scratch where the lines
 * after it start and where an absolute-form target's authority is; the
 * host itself is found by http_parse_request_host(), in the next stage, so that
 * the verifier checks the two halves apart (older verifiers give up on the
 * whole). */
static __always_inline int http_parse_request_line(struct payload_scratch *scratch)
{
	const __u8 *bytes = scratch->bytes;
	__u16 *line_starts = scratch->line_starts;
	__u32 avail = scratch->len;
	__u32 off = 0;

	/* A server ignores empty lines before a request line (RFC 9112 2.2):
	 * the request is then read from the flow's stream, past them. */
	if (avail > 0 && !scratch->in_stream &&
	    (payload_u8(bytes, 0) == '\r' || payload_u8(bytes, 0) == '\n'))
		return HTTP_TRUNCATED;
	/* The method: one or more token characters, then a space. */
	for (int i = 0; i < HTTP_METHOD_MAX; i++) {
		if (off >= avail)
			return off > 0 ? HTTP_TRUNCATED : HTTP_NOT_REQUEST;
		if (!http_is_token_char(payload_u8(bytes, off)))
			break;
		off++;
	}
	/* A method of HTTP_METHOD_MAX bytes, and no more: its space may come next. */
	if (off > 0 && off >= avail)
		return HTTP_TRUNCATED;
	if (off == 0 || payload_u8(bytes, off) != ' ')
		return HTTP_NOT_REQUEST;
	/* Forgotten, so that what follows is verified once, not once per method length. */
	__u32 target = forget_range(scratch->forget_slot, off + 1);

	__u32 newlines = http_find_line_starts(bytes, avail, line_starts);
	if (newlines == 0)
		return HTTP_TRUNCATED;
	__u32 line_end = line_starts[0] - 1;
	__u32 content_end = http_line_content_end(bytes, line_end);
	/* nginx takes any number of spaces after the version: the stream's scan,
	 * which reads the line to its end, finds where it ends without them. */
	if (!http_request_line_has_version(bytes, content_end))
		return content_end > 0 && payload_u8(bytes, content_end - 1) == ' ' ? HTTP_TRUNCATED :
										      HTTP_NOT_REQUEST;
	/* A CONNECT's target is the authority its proxy connects to (RFC 9112
	 * 3.2.3), as an absolute-form target's is the server's: it names the
	 * request, not the Host field. */
	scratch->authority_off = http_is_connect(bytes, target - 1) ? target :
				 http_absolute_form_authority(bytes, target, line_end);
	scratch->header_lines = newlines;
	return HTTP_HOST_FOUND;
}

/* The host of a request whose line http_parse_request_line() accepted. */
static __always_inline int http_parse_request_host(struct payload_scratch *scratch,
						   __u32 *name_off, __u32 *name_len)
{
	const __u8 *bytes = scratch->bytes;
	__u16 *line_starts = scratch->line_starts;
	__u32 avail = scratch->len;
	__u32 newlines = scratch->header_lines;

	if (scratch->authority_off)
		return http_parse_authority(scratch, scratch->authority_off, line_starts[0] - 1, name_off, name_len);

	/* Header lines: line k starts just past newline k. Only the start of
	 * the Host value is found here, so the verifier walks the value once. */
	__u32 value_off = 0;
	for (__u32 k = 0; k < HTTP_LINES_MAX; k++) {
		if (k >= newlines)
			return HTTP_TRUNCATED;
		__u32 line = line_starts[k & HTTP_LINE_SLOTS_MASK];
		if (line >= avail)
			return HTTP_TRUNCATED;
		__u8 first = payload_u8(bytes, line);
		if (first == '\r' || first == '\n')
			return HTTP_NO_HOST;	/* the blank line ends the headers */
		/* Too few bytes left for "host:": the line may go on past them,
		 * unless its newline is among them (a line follows), and then
		 * it is no Host line ("host:" holds no newline). */
		if (line + HTTP_HOST_FIELD_LEN > avail && k + 1 >= newlines)
			return HTTP_TRUNCATED;
		if (http_is_host_field(bytes, line)) {
			value_off = line + HTTP_HOST_FIELD_LEN;
			break;
		}
	}
	/* More header lines before any Host than a packet is looked through
	 * for: the stream's scan (http_scan_stream_request()) reads on, as a
	 * server does (nginx and Apache take 100 lines and more). */
	if (!value_off)
		return scratch->in_stream ? HTTP_NO_HOST : HTTP_TRUNCATED;
	return http_parse_host_value(scratch, forget_range(scratch->forget_slot, value_off), name_off, name_len);
}

/* One pass of the search for the request line's end (and its last byte
 * before any spaces after the version), the Host line (and where its value
 * starts, past any whitespace), and the header section's end in a stream
 * buffer's request, however many header lines come before the Host line:
 * it reads bytes[start, end), at most HTTP_STREAM_SCAN_BYTES of them,
 * going on from where the passes
 * before it left layout (zeroed before the first). The body is branch-free
 * arithmetic but for the exit (see http_find_line_starts()): a Host line
 * is "\nhost:" in a shift register of the bytes, letters lower-cased, that
 * comes before the blank line. The layout is kept in map memory, where the
 * verifier does not follow it: the code after the scan is verified once,
 * not once per way out of it. */
static __always_inline void http_scan_stream_request(const __u8 *bytes, __u32 start, __u32 end,
						     struct request_layout *layout)
{
	__u64 recent = layout->recent, line_end = layout->line_end, host_line = layout->host_line;
	__u64 headers_end = layout->headers_end, line_last = layout->line_last, host_value = layout->host_value;

	for (__u64 i = 0; i < HTTP_STREAM_SCAN_BYTES; i++) {
		__u64 at = start + i;
		if (at >= end)
			break;
		__u64 c = masked_u8(bytes, at, STREAM_MASK);
		__u64 from_a = c - 'A';
		__u64 is_upper = ((from_a - 26) >> 63) & (~from_a >> 63);
		recent = (recent << 8) | c | (is_upper << 5);
		__u64 is_newline = ((c ^ '\n') - 1) >> 63;
		__u64 is_host_line = (((recent & 0xffffffffffffULL) ^ HTTP_HOST_LINE_PATTERN) - 1) >> 63;
		__u64 is_blank_line = ((((recent & 0xffff) ^ 0x0a0d) - 1) >> 63) |
				      ((((recent & 0xffff) ^ 0x0a0a) - 1) >> 63);
		__u64 is_space = ((c ^ ' ') - 1) >> 63;
		__u64 is_blank = is_space | ((c ^ '\t') - 1) >> 63;
		__u64 no_line_end = (line_end - 1) >> 63;
		__u64 no_host_line = (host_line - 1) >> 63;
		__u64 in_headers = (headers_end - 1) >> 63;
		/* Past the Host line's colon (met at an earlier byte), the first
		 * byte that is no space or tab. */
		__u64 seeking_value = (no_host_line ^ 1) & ((host_value - 1) >> 63);
		host_value += seeking_value * (is_blank ^ 1) * at;
		line_end += is_newline * no_line_end * at;
		line_last += no_line_end * ((is_space | is_newline | (((c ^ '\r') - 1) >> 63)) ^ 1) * (at - line_last);
		/* The register ends at the colon: the line starts 4 bytes back. */
		host_line += is_host_line * no_host_line * in_headers * (at - 4);
		headers_end += is_blank_line * in_headers * at;
	}
	layout->line_end = line_end;
	layout->line_last = line_last;
	layout->host_line = host_line;
	layout->host_value = host_value;
	layout->headers_end = headers_end;
	layout->recent = recent;
}

#endif /* SLUICE_HTTP_HOST_H */
