"""What sluice should make of one client payload packet, in plain Python.

The fuzz suite (tests/test_fuzz.py) runs the real XDP program on a payload
and compares its verdict and counters with classify() below. This module is
written from the specifications, not from the C:

  TLS   RFC 8446 section 5.1 (records) and 4.1.2 (ClientHello), RFC 6066
        section 3 (server_name);
  HTTP  RFC 9112 sections 2.2, 3 and 5 (request line, header fields),
        RFC 9110 section 5.6.3 (whitespace) and 7.2 (Host);

plus the choices sluice documents in bpf/*.h, each marked "sluice:" below.

The outcome is one of the data plane's parser counters, and a name when the
counter is tls_sni_found or http_host_found. The rule is the same for TLS and
HTTP: the fields are read in order; a field whose length contradicts the
length of what encloses it is malformed; a field that lies past the bytes
held is truncated ("needs more data"), since a later segment may hold it.
"""

import itertools
import re
from dataclasses import dataclass

# sluice: the payload is copied into a 2048-byte buffer (bpf/scratch.h,
# PAYLOAD_COPY_BYTES, a full Ethernet payload); the parsers never see more.
PAYLOAD_COPY_BYTES = 2048
# sluice: a name is at most 255 bytes (bpf/sluice_abi.h): DNS names are 253
# characters, 254 with the root dot; longer server names are not names.
NAME_MAX = 255

# The outcome classes: the data plane's counter names.
TLS_SNI_FOUND = "tls_sni_found"
TLS_NO_SNI = "tls_no_sni"
TLS_TRUNCATED = "tls_truncated"
TLS_MALFORMED = "tls_malformed"
HTTP_HOST_FOUND = "http_host_found"
HTTP_NO_HOST = "http_no_host"
HTTP_TRUNCATED = "http_truncated"
NOT_TLS = "not_tls"          # neither a ClientHello nor an HTTP/1.x request
TLS_REASSEMBLED = "tls_reassembled"
TLS_ECH = "tls_ech"          # a hello with a name, or without, that offers Encrypted Client Hello

# sluice: a ClientHello that continues past its first record, or past the
# packet, is kept (bpf/tcp_stream.h): the first 16 KB of the client's
# stream, whose handshake records (ChangeCipherSpec records stepped over,
# each at most 16 KB as RFC 8446 5.1 allows, as many as the 16 KB hold:
# walked 512 a pass, in as many passes as it takes) are gathered behind one
# record header and read again.
STREAM_BYTES = 16384
RECORDS_MAX = STREAM_BYTES // 5         # each record takes its 5-byte header: no bound short of the stream's
RECORD_FRAGMENT_MAX = 16384


@dataclass(frozen=True)
class Outcome:
    counter: str
    name: bytes | None = None    # raw, as on the wire (see normalise())
    also: tuple[str, ...] = ()   # counters that moved before this one


def normalise(name: bytes) -> bytes:
    """The name rules are matched against: ASCII lower case (DNS names are
    case-insensitive, RFC 4343) and without one trailing dot (the root label:
    "example.com." is "example.com")."""
    name = name.lower()
    return name[:-1] if name.endswith(b".") else name


def classify(payload: bytes) -> Outcome:
    """The parser outcome for the first payload packet of a new flow."""
    hello = leading_change_cipher_specs_skipped(payload)
    tls = parse_client_hello(hello[:PAYLOAD_COPY_BYTES])
    if tls is not None:
        return reassembled(payload) if tls.counter == TLS_TRUNCATED else tls
    if hello != payload:
        return Outcome(NOT_TLS)        # TLS records came first: what follows is no HTTP request
    http = parse_http_request(payload[:PAYLOAD_COPY_BYTES])
    if http.counter != HTTP_TRUNCATED:
        return http
    again = stream_http_request(payload[:STREAM_BYTES])
    return Outcome(again.counter, again.name, also=(HTTP_TRUNCATED,)) if again else http


# sluice: a request read from the stream (bpf/sluice_xdp.c,
# sluice_stage_stream_http): up to 16 CR/LF bytes before it are stepped over
# (RFC 9112 2.2), it is searched to the end of the bytes held for the request
# line and the first Host line before the blank line, and those two lines
# alone are parsed as a request in one packet is: the request line without
# the spaces (and CR) after its version, and the Host line as "host:" and its
# value, without the whitespace before it.
EMPTY_LINE_BYTES_MAX = 16
HOST_LINE_COPY = 5 + 16 + NAME_MAX + 8 + 2     # "host:", OWS_MAX, a value, CRLF


def stream_http_request(data: bytes) -> Outcome | None:
    """The outcome once a request held in a stream decides one, else None."""
    start = 0
    while start < min(len(data), EMPTY_LINE_BYTES_MAX) and data[start] in b"\r\n":
        start += 1
    scan = data[start:]
    line_end = scan.find(b"\n")
    line = scan[:line_end].rstrip(b" \r")
    if line_end < 0 or not line or len(line) >= PAYLOAD_COPY_BYTES - HOST_LINE_COPY:
        return None
    request = line + b"\n"
    host = re.search(rb"\n[Hh][Oo][Ss][Tt]:", scan)
    blank = re.search(rb"\n[\r\n]", scan)
    if host and (not blank or host.start() < blank.start()):
        value = scan[host.end():].lstrip(OWS)
        if not value:
            return None
        if len(request) + 5 > PAYLOAD_COPY_BYTES - HOST_LINE_COPY:
            return None
        request += b"host:" + value[:HOST_LINE_COPY - 5]
    elif blank:
        request += b"\r\n"
    outcome = parse_http_request(request)
    return None if outcome.counter in (HTTP_TRUNCATED, NOT_TLS) else outcome


def reassembled(payload: bytes) -> Outcome:
    """A truncated hello, read again from all its records (see STREAM_BYTES)."""
    again = parse_client_hello(gathered_records(payload[:STREAM_BYTES]))
    if again is None or again.counter == TLS_TRUNCATED:
        return Outcome(TLS_TRUNCATED)
    if again.counter == TLS_MALFORMED:
        return Outcome(TLS_MALFORMED, also=(TLS_TRUNCATED,))
    return Outcome(again.counter, again.name, also=(TLS_TRUNCATED, TLS_REASSEMBLED, *again.also))


def gathered_records(data: bytes) -> bytes:
    """The handshake bytes of the records at the start of data, behind one
    record header; b"" if a record is not a handshake or ChangeCipherSpec."""
    off, gathered = 0, b""
    for _ in range(RECORDS_MAX):
        if off + RECORD_HEADER_LEN > len(data):
            break
        content, major, fragment = data[off], data[off + 1], int.from_bytes(data[off + 3:off + 5], "big")
        if (major != RECORD_MAJOR_VERSION or fragment > RECORD_FRAGMENT_MAX
                or content not in (CONTENT_HANDSHAKE, CONTENT_CHANGE_CIPHER_SPEC)):
            return b""
        off += RECORD_HEADER_LEN
        have = min(len(data) - off, fragment)
        take = have if content == CONTENT_HANDSHAKE else 0
        if RECORD_HEADER_LEN + len(gathered) + take >= STREAM_BYTES:
            break
        gathered += data[off:off + take]
        if have < fragment:
            break
        off += fragment
    if not gathered:
        return b""
    return bytes([CONTENT_HANDSHAKE, RECORD_MAJOR_VERSION, 1]) + len(gathered).to_bytes(2, "big") + gathered


# --- TLS ---------------------------------------------------------------------

CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_HANDSHAKE = 22
RECORD_MAJOR_VERSION = 3
# sluice: record versions 3.0 to 3.4 are TLS (RFC 8446 5.1 sends 3.1 or 3.3;
# SSL 3.0 and a future 3.4 cost nothing to accept).
RECORD_MAX_MINOR_VERSION = 4
RECORD_HEADER_LEN = 5
# sluice: a record header is recognised from its first three bytes (type,
# version); fewer that fit a handshake record's start are truncated.
RECORD_PREFIX_RECOGNISED = 3
HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_HEADER_LEN = 4
LEGACY_VERSION_AND_RANDOM_LEN = 2 + 32
SESSION_ID_MAX = 32
EXTENSION_HEADER_LEN = 2 + 2
EXT_SERVER_NAME = 0
EXT_ENCRYPTED_CLIENT_HELLO = 0xFE0D
SERVER_NAME_HEADER_LEN = 2 + 1 + 2
NAME_TYPE_HOST_NAME = 0
# sluice: some clients, and circumvention tools on purpose, put
# ChangeCipherSpec records ahead of the ClientHello; up to 4 are stepped over.
LEADING_CHANGE_CIPHER_SPECS_MAX = 4
# sluice: extensions walked looking for server_name (browsers send about 20,
# GREASE included): 64 one by one, then 1,024 more skipped over for it
# (bpf/tls_sni.h tls_skip_extensions()). A hello with more is left
# undecided: truncated.
EXTENSIONS_MAX = 64 + 1024


class _Truncated(Exception):
    """A field lies past the bytes held."""


class _Malformed(Exception):
    """A length contradicts the length of what encloses it."""


class _Vector:
    """A cursor over bytes[pos:end] of a TLS structure, of which only
    bytes[:held] are here. Skipping needs no bytes, reading does."""

    def __init__(self, data: bytes, pos: int, end: int, held: int):
        self.data, self.pos, self.end, self.held = data, pos, end, held

    def __len__(self) -> int:
        """The bytes left in this vector, held or not."""
        return self.end - self.pos

    def at_end(self) -> bool:
        return self.pos == self.end

    def skip(self, length: int) -> None:
        if self.pos + length > self.end:
            raise _Malformed
        self.pos += length

    def require(self, length: int) -> None:
        """Are the next length bytes inside this vector, and here?"""
        if self.pos + length > self.end:
            raise _Malformed
        if self.pos + length > self.held:
            raise _Truncated

    def read(self, length: int) -> bytes:
        self.require(length)
        self.pos += length
        return self.data[self.pos - length:self.pos]

    def number(self, length: int) -> int:
        return int.from_bytes(self.read(length), "big")

    def vector(self, length_bytes: int) -> "_Vector":
        """The variable-length vector that starts here (RFC 8446 3.4): its
        length, then its body, which must fit inside this one."""
        length = self.number(length_bytes)
        inner = _Vector(self.data, self.pos, self.pos + length, self.held)
        self.skip(length)
        return inner


def leading_change_cipher_specs_skipped(payload: bytes) -> bytes:
    """The payload past any leading ChangeCipherSpec records, each stepped
    over only when more bytes follow it in this packet."""
    for _ in range(LEADING_CHANGE_CIPHER_SPECS_MAX):
        if (len(payload) < RECORD_HEADER_LEN or payload[0] != CONTENT_CHANGE_CIPHER_SPEC
                or payload[1] != RECORD_MAJOR_VERSION):
            break
        record_end = RECORD_HEADER_LEN + int.from_bytes(payload[3:5], "big")
        if record_end >= len(payload):
            break
        payload = payload[record_end:]
    return payload


def _is_handshake_record(data: bytes) -> bool:
    return (data[0] == CONTENT_HANDSHAKE and data[1] == RECORD_MAJOR_VERSION
            and data[2] <= RECORD_MAX_MINOR_VERSION)


def parse_client_hello(data: bytes) -> Outcome | None:
    """The outcome for TLS bytes, or None if they are not a ClientHello."""
    if len(data) < RECORD_PREFIX_RECOGNISED:
        # sluice: a record cut after its first byte or two (the circumvention
        # tools' default split) may still be a ClientHello's start.
        return Outcome(TLS_TRUNCATED) if data and bytes([CONTENT_HANDSHAKE, RECORD_MAJOR_VERSION]).startswith(data) \
            else None
    if not _is_handshake_record(data):
        return None
    # sluice: only the first record is read here; a hello that goes on in a
    # later record is truncated, as one cut by the segment is, and read
    # again once its records are gathered (reassembled()).
    record_end = RECORD_HEADER_LEN + int.from_bytes(data[3:5], "big")
    held = min(len(data), record_end)
    if held <= RECORD_HEADER_LEN:
        return Outcome(TLS_TRUNCATED)
    if data[RECORD_HEADER_LEN] != HANDSHAKE_CLIENT_HELLO:
        return None
    if held < RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN:
        return Outcome(TLS_TRUNCATED)
    hello_len = int.from_bytes(data[RECORD_HEADER_LEN + 1:RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN], "big")
    body = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN
    hello = _Vector(data, body, body + hello_len, held)
    try:
        return _client_hello_body(hello)
    except _Truncated:
        return Outcome(TLS_TRUNCATED)
    except _Malformed:
        return Outcome(TLS_MALFORMED)


def _client_hello_body(hello: _Vector) -> Outcome:
    hello.skip(LEGACY_VERSION_AND_RANDOM_LEN)
    if len(hello.vector(1)) > SESSION_ID_MAX:          # opaque legacy_session_id<0..32>
        raise _Malformed
    suites_len = len(hello.vector(2))                  # CipherSuite cipher_suites<2..2^16-2>
    if suites_len < 2 or suites_len % 2:
        raise _Malformed
    if len(hello.vector(1)) < 1:                       # opaque legacy_compression_methods<1..2^8-1>
        raise _Malformed
    # A TLS 1.2 hello may end here (RFC 5246 7.4.1.2): no extensions, no name.
    if hello.at_end():
        return Outcome(TLS_NO_SNI)
    # sluice: whatever follows the extensions is not read, and only the
    # first server_name; the walk goes on past it only to see whether the
    # hello offers Encrypted Client Hello, and nothing it meets there can
    # undo the name.
    extensions = hello.vector(2)
    found, ech = None, False
    for walked in itertools.count():
        if extensions.at_end():
            break
        if walked == EXTENSIONS_MAX:
            if found:
                break
            raise _Truncated
        try:
            # Every extension has a 4-byte header (type, length): fewer bytes
            # left in the block are a contradiction, whatever they hold.
            extensions.require(EXTENSION_HEADER_LEN)
            ext_type = extensions.number(2)
            body = extensions.vector(2)
        except (_Truncated, _Malformed):
            if found:
                break
            raise
        ech = ech or ext_type == EXT_ENCRYPTED_CLIENT_HELLO
        if ext_type == EXT_SERVER_NAME and not found:
            found = _server_name(body)
    outcome = found or Outcome(TLS_NO_SNI)
    return Outcome(outcome.counter, outcome.name, also=(TLS_ECH,) if ech else ())


def _server_name(ext: _Vector) -> Outcome:
    """The first entry of a server_name extension (RFC 6066 3): a list
    length, then name_type, then the HostName vector."""
    # sluice reads the list length, name type and name length together, as
    # one 5-byte header: a segment cut inside it is truncated.
    ext.require(SERVER_NAME_HEADER_LEN)
    names = ext.vector(2)
    name_type = names.number(1)
    name = names.vector(2)
    # RFC 6066 defines host_name only, and HostName<1..2^16-1>; sluice adds
    # its NAME_MAX.
    if name_type != NAME_TYPE_HOST_NAME or not 1 <= len(name) <= NAME_MAX:
        raise _Malformed
    return Outcome(TLS_SNI_FOUND, name.read(len(name)))


# --- HTTP --------------------------------------------------------------------

# RFC 9110 5.6.2: a method is a token, 1*tchar
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
# sluice: methods longer than any registered method (24) are not requests.
METHOD_MAX = 24
# sluice: a request line is a method, a space, and anything that ends in
# "HTTP/1.x"; RFC 9112 2.2 lets a recipient take a bare LF as a line end.
REQUEST_LINE_END = re.compile(rb"HTTP/1\.[0-9]\r?\Z")
# sluice: Host is looked for in a packet's first 32 header lines; past them,
# the stream is read on.
HEADER_LINES_MAX = 32
# sluice: at most 16 whitespace characters are stepped over before the Host
# value in one packet (RFC 9110 5.6.3 sets no limit); past them, the value is
# read from the stream.
OWS_MAX = 16
OWS = b" \t"
# Where a host ends inside a Host value (RFC 9110 7.2: uri-host [":" port]):
# at the port, or at whitespace or the end of the line, which RFC 3986 never
# allows inside a host. An IP-literal ends at its "]".
HOST_END = re.compile(rb"[\r\n \t:]")
IP_LITERAL_END = re.compile(rb"[\r\n \t\]]")
# An absolute-form request target (RFC 9112 3.2.2): scheme "://" authority,
# the authority ending at the path, query or fragment, or at the space
# before the version.
ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+\-.]*://([^/?# ]*)")
AUTHORITY = re.compile(rb"[^/?# ]*")
# sluice: a scheme of at most 16 characters ("http", "https" and room for
# others), and an authority of at most 512 bytes (userinfo, host and port);
# past them, the target is not taken for absolute-form, or names nothing.
SCHEME_MAX = 16
AUTHORITY_MAX = 512


def parse_http_request(data: bytes) -> Outcome:
    if data[:1] in (b"\r", b"\n"):
        return Outcome(HTTP_TRUNCATED)     # sluice: empty lines first: read from the stream
    method = TOKEN.match(data).group()
    if not method or len(method) > METHOD_MAX:
        return Outcome(NOT_TLS)
    if len(data) == len(method):
        return Outcome(HTTP_TRUNCATED)     # the space may come next
    if data[len(method)] != ord(" "):
        return Outcome(NOT_TLS)
    line_end = data.find(b"\n")
    if line_end < 0:
        return Outcome(HTTP_TRUNCATED)
    request_line = data[:line_end]
    if not REQUEST_LINE_END.search(request_line):
        # nginx takes any number of spaces after the version: read from the stream
        ends_in_space = request_line.removesuffix(b"\r").endswith(b" ")
        return Outcome(HTTP_TRUNCATED if ends_in_space else NOT_TLS)
    # RFC 9112 3.2.3: a CONNECT's target is the authority its proxy connects to.
    if method == b"CONNECT":
        return _authority_host(AUTHORITY.match(request_line, len(method) + 1).group())
    # RFC 9112 3.2.2: a server given an absolute-form target takes the host
    # from it and ignores any Host field. The request line is whole: decided.
    target = ABSOLUTE_FORM.match(request_line, len(method) + 1)
    if target and target.start(1) - 3 - (len(method) + 1) < SCHEME_MAX:
        return _authority_host(target.group(1))
    return _host_field(data, line_end + 1)


def _authority_host(authority: bytes) -> Outcome:
    """The host of a target's authority, past any userinfo."""
    if len(authority) >= AUTHORITY_MAX:
        return Outcome(HTTP_NO_HOST)
    return _found(_host(authority.rpartition(b"@")[2], bounded=True))


def _host_field(data: bytes, line: int) -> Outcome:
    """Look for Host in the header lines from offset line on."""
    for _ in range(HEADER_LINES_MAX):
        if line >= len(data):
            return Outcome(HTTP_TRUNCATED)
        # A blank line ends the header section. A bare CR is invalid (RFC
        # 9112 2.2): no usable Host follows it either way.
        if data[line] in b"\r\n":
            return Outcome(HTTP_NO_HOST)
        # Field names are case-insensitive, and no whitespace may come
        # before the colon (RFC 9112 5.1).
        if data[line:line + 5].lower() == b"host:":
            return _host_value(data[line + 5:])
        newline = data.find(b"\n", line)
        if newline < 0:
            return Outcome(HTTP_TRUNCATED)
        line = newline + 1
    return Outcome(HTTP_TRUNCATED)     # more lines than a packet is looked through for: read from the stream


def _host_value(value: bytes) -> Outcome:
    stripped = value.lstrip(OWS)
    if len(value) - len(stripped) > OWS_MAX:
        return Outcome(HTTP_TRUNCATED)     # servers step over any amount: read from the stream
    if not stripped:
        return Outcome(HTTP_TRUNCATED)
    host = _host(stripped, bounded=False)
    return Outcome(HTTP_TRUNCATED) if host is None else _found(host)


def _found(host: bytes) -> Outcome:
    return Outcome(HTTP_HOST_FOUND, host) if host else Outcome(HTTP_NO_HOST)


def _host(authority: bytes, bounded: bool) -> bytes | None:
    """The host of "host[:port]" or "[literal][:port]": the name, b"" when
    there is no usable one, or None when it may go on past these bytes
    (unless bounded: the authority is whole)."""
    literal = authority.startswith(b"[")
    rest = authority[1:] if literal else authority
    end = (IP_LITERAL_END if literal else HOST_END).search(rest)
    host = rest[:end.start()] if end else rest
    if len(host) > NAME_MAX:
        return b""                     # too long, whatever follows
    if not end and not bounded:
        return None
    return host
