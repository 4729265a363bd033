"""A circumvention sender, sending as zapret, GoodbyeDPI and ByeDPI do, from
a network namespace of the lab.

Debian has none of those tools and PyPI has none that runs here (they need
NFQUEUE or WinDivert to rewrite the kernel's packets), so this does what
they do with the kernel's own TCP and raw frames beside it:

* the connection is a real one, opened by the kernel; an AF_PACKET socket
  on the client's interface sees the handshake's last ACK, which gives the
  addresses, ports, sequence numbers, TTL and timestamps of the flow;
* splits are several send() calls on a TCP_NODELAY socket: the kernel sends
  each as a segment of its own (tinysegments: a byte each up to the name's
  end, more than the inspection window's 20, as a client whose server
  window zapret's --wssize shrank); an urgent byte inside the name is one of
  them, sent with MSG_OOB (the kernel sets URG and the urgent pointer, and
  the server's TCP takes the byte out of the stream);
* raw pieces (disorder, seqovl, IP fragments) are written first into the kernel's send
  queue in TCP_REPAIR mode, where the kernel counts them as sent without
  sending them (so the server's ACKs are for data the kernel knows, and it
  would retransmit them, in order, if the raw pieces were lost), then sent
  as raw frames in the technique's order;
* decoys are raw frames at the real bytes' sequence numbers, carrying a
  ClientHello (or request) for another name, made so that the server drops
  them or they never reach it (a low TTL, a bad checksum, an MD5 option, no
  ACK flag, an old timestamp, an ACK number before the server's first):
  then the kernel sends the real bytes;
* fake-ttl-forged-ack is fake-ttl's decoy followed by the client's own
  segment in the server's name (its addresses and ports swapped), whose ACK
  number acknowledges the decoy, as if the server had received it;
* zapret's --orig-ttl=8 --orig-mod-start=d1 is the socket's own TTL (hop
  limit) set to 8 after the handshake: the kernel sends every data segment
  of the connection at it, and they reach the lab's server, two hops away.

The TLS handshake then goes on with Python's ssl over memory buffers, and a
GET is answered by the lab's nginx, so a flow that passes proves that the
server took the real hello, and not the decoy.
"""

import os
import socket
import ssl
import time
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from packets import ip_fragments
from sluice.netns import inside_netns

# linux/tcp.h, not in Python's socket module
TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, TCP_REPAIR_OFF_NO_WP = 19, 20, 2, -1
ETH_P_ALL, PACKET_OUTGOING = 0x0003, 4
PIECE_GAP_S = 0.005             # between sends, so that no two pieces leave as one segment

PLAIN = "plain"                # the whole hello in one segment: no evasion at all
SPLITS = ("split1", "split2", "multisplit", "tinysegments")
RAW_PIECES = ("disorder", "seqovl", "fragments")
URGENT = "urgent"               # an urgent (out-of-band) byte inside the name
ORIG_TTL = "orig-ttl"           # every data segment at a low TTL that still reaches the server
ORIG_TTL_HOPS = 8               # zapret's --orig-ttl=8: far below the SYN's 64
FORGED_ACK = "fake-ttl-forged-ack"      # fake-ttl, then the client's own "server" ACK of its decoy
# Each decoy, and the receiver-model kind sluice counts it under.
DECOYS = {"fake-ttl": "low_ttl", "fake-checksum": "bad_checksum", "fake-md5": "tcp_auth_option",
          "fake-noack": "no_ack", "fake-timestamp": "paws", "fake-ack": "bad_ack",
          FORGED_ACK: "forged_server"}
TECHNIQUES = SPLITS + RAW_PIECES + (URGENT, ORIG_TTL) + tuple(DECOYS)
FRAGMENT_BYTES = 64            # IP payload per fragment (a multiple of 8): even a request is several
SEQOVL_BYTES = 12              # junk before the stream's first byte: the server trims it as already acknowledged
PAWS_STEP_BACK = 100_000       # ms: a TSval this much older than the flow's last is outside PAWS
ACK_STEP_BACK = 66_000         # zapret's badseq with increment 0: an ACK number before the server's first


@dataclass
class Outcome:
    """What the client got: the server's answer, or the error that ended the connection."""
    answer: str
    error: str

    @property
    def answered(self) -> bool:
        return self.answer.startswith("HTTP/1.1 200")


def client_hello(name: str, ca_path: str) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    """A real ClientHello from Python's ssl (OpenSSL) for `name`, with the state to go on."""
    context = ssl.create_default_context(cafile=ca_path)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return tls, incoming, outgoing, outgoing.read()


def http_request(name: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {name}\r\nUser-Agent: evasion-sender\r\nConnection: close\r\n\r\n".encode()


def cuts_around(stream: bytes, name: str) -> list[int]:
    """multisplit's cuts: inside the record or request-line start, and around and inside the name."""
    at = stream.find(name.encode())
    return sorted({1, 3, at - 2, at + 3, at + len(name) - 2})


def pieces(stream: bytes, cuts) -> list[tuple[int, bytes]]:
    edges = [0, *cuts, len(stream)]
    return [(a, stream[a:b]) for a, b in zip(edges, edges[1:])]


class Sender:
    """One connection from the client namespace to the lab's server."""

    def __init__(self, netns: str, server: str, port: int, timeout: float):
        self.netns, self.server, self.port, self.timeout = netns, server, port, timeout
        self.family = socket.AF_INET6 if ":" in server else socket.AF_INET

    def __enter__(self) -> "Sender":
        # Sockets belong to the namespace they were made in: make them there.
        with inside_netns(self.netns):
            self.sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sniffer.bind(("eth0", 0))
            self.sniffer.settimeout(self.timeout)
            self.sock = socket.socket(self.family, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.connect((self.server, self.port))
        self.template = self._handshake_ack()
        return self

    def __exit__(self, *exc) -> None:
        self.sniffer.close()
        self.sock.close()

    def _handshake_ack(self) -> Ether:
        """The kernel's ACK that ended the handshake: the flow's addresses, numbers and options."""
        port = self.sock.getsockname()[1]
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            frame, address = self.sniffer.recvfrom(65535)
            if address[2] != PACKET_OUTGOING:
                continue
            packet = Ether(frame)
            if TCP in packet and packet[TCP].sport == port and packet[TCP].flags == "A":
                return packet
        raise TimeoutError("the handshake's ACK was not seen on eth0")

    # --- frames -----------------------------------------------------------
    def frame(self, offset: int, payload: bytes, *, ttl=None, flags="PA", options=None, checksum=None,
              ack_step_back: int = 0) -> bytes:
        """A frame of this flow carrying `payload` at `offset` from the stream's first byte."""
        template = self.template
        tcp = template[TCP]
        if IPv6 in template:
            network = IPv6(src=template[IPv6].src, dst=template[IPv6].dst, fl=template[IPv6].fl,
                           hlim=ttl or template[IPv6].hlim)
        else:
            network = IP(src=template[IP].src, dst=template[IP].dst, flags="DF", id=int.from_bytes(os.urandom(2)),
                         ttl=ttl or template[IP].ttl)
        segment = TCP(sport=tcp.sport, dport=tcp.dport, seq=(tcp.seq + offset) % 2**32,
                      ack=(tcp.ack - ack_step_back) % 2**32 if "A" in flags else 0, flags=flags, window=tcp.window,
                      options=tcp.options if options is None else options)
        frame = Ether(src=template.src, dst=template.dst) / network / segment / Raw(payload)
        if checksum is not None:
            frame[TCP].chksum = checksum(Ether(bytes(frame))[TCP].chksum)
        return bytes(frame)

    def timestamps(self, step_back: int = 0) -> list:
        """The flow's TCP options, the timestamp's TSval moved `step_back` ms into the past."""
        return [(kind, ((value[0] - step_back) % 2**32, value[1]) if kind == "Timestamp" else value)
                for kind, value in self.template[TCP].options]

    def decoy(self, technique: str, payload: bytes) -> bytes:
        """A decoy at the stream's first byte that the server will not take."""
        if technique == "fake-ttl":
            return self.frame(0, payload, ttl=1)            # expires at the first router
        if technique == "fake-checksum":
            return self.frame(0, payload, checksum=lambda good: good ^ 0x5A5A)
        if technique == "fake-md5":
            # RFC 2385 signature option: a server with no key for the peer drops the segment.
            return self.frame(0, payload, options=[("NOP", None), ("NOP", None), (19, bytes(16)),
                                                    *self.timestamps()])
        if technique == "fake-noack":
            return self.frame(0, payload, flags="P")
        if technique == "fake-timestamp":
            return self.frame(0, payload, options=self.timestamps(PAWS_STEP_BACK))
        if technique == "fake-ack":
            return self.frame(0, payload, ack_step_back=ACK_STEP_BACK)
        raise ValueError(technique)

    def forged_server_ack(self, upto: int) -> bytes:
        """A segment of the client's own in the server's name: the flow's
        addresses and ports swapped, its ACK number acknowledging the
        stream's first `upto` bytes. It leaves by the client's interface."""
        template = self.template
        tcp = template[TCP]
        if IPv6 in template:
            network = IPv6(src=template[IPv6].dst, dst=template[IPv6].src)
        else:
            network = IP(src=template[IP].dst, dst=template[IP].src, flags="DF")
        segment = TCP(sport=tcp.dport, dport=tcp.sport, seq=tcp.ack, ack=(tcp.seq + upto) % 2**32, flags="A",
                      window=tcp.window)
        return bytes(Ether(src=template.src, dst=template.dst) / network / segment)

    def send_raw(self, *frames: bytes) -> None:
        for frame in frames:
            self.sniffer.send(frame)

    def queue_as_sent(self, stream: bytes) -> None:
        """Put `stream` in the kernel's send queue as sent but unacknowledged, without sending it."""
        self.sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        self.sock.sendall(stream)
        self.sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)

    # --- techniques -------------------------------------------------------
    def send_first_bytes(self, technique: str, stream: bytes, name: str, decoy_stream: bytes) -> None:
        """Send the client's first bytes, `stream`, the way `technique` does."""
        if technique in (PLAIN, *SPLITS):
            # tinysegments: a byte a segment up to the name's end, as a client sends them behind
            # a window zapret's --wssize shrank to a byte: the name comes after the window's 20 packets.
            name_end = stream.find(name.encode()) + len(name)
            cuts = {PLAIN: [], "split1": [1], "split2": [2], "multisplit": cuts_around(stream, name),
                    "tinysegments": range(1, name_end + 1)}[technique]
            for _offset, piece in pieces(stream, cuts):
                self.sock.sendall(piece)
                time.sleep(PIECE_GAP_S)
        elif technique == ORIG_TTL:
            if self.family == socket.AF_INET6:
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ORIG_TTL_HOPS)
            else:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ORIG_TTL_HOPS)
            self.sock.sendall(stream)
        elif technique == URGENT:
            at = stream.index(name.encode()) + 4
            for piece, flags in [(stream[:at], 0), (b"!", socket.MSG_OOB), (stream[at:], 0)]:
                self.sock.send(piece, flags)
                time.sleep(PIECE_GAP_S)
        elif technique == "disorder":
            self.queue_as_sent(stream)
            self.send_raw(*(self.frame(offset, piece) for offset, piece in
                            reversed(pieces(stream, cuts_around(stream, name)))))
        elif technique == "fragments":
            # The whole segment, its IP datagram cut into fragments sent last first.
            self.queue_as_sent(stream)
            ttl = self.template[IPv6].hlim if IPv6 in self.template else self.template[IP].ttl
            self.send_raw(*(bytes(Ether(src=self.template.src, dst=self.template.dst) / Ether(fragment).payload)
                            for fragment in reversed(ip_fragments(self.frame(0, stream), FRAGMENT_BYTES, ttl=ttl,
                                                                  ident=int.from_bytes(os.urandom(2))))))
        elif technique == "seqovl":
            self.queue_as_sent(stream)
            first, rest = pieces(stream, [cuts_around(stream, name)[2]])
            self.send_raw(self.frame(-SEQOVL_BYTES, os.urandom(SEQOVL_BYTES) + first[1]),
                          self.frame(*rest))
        elif technique == FORGED_ACK:
            self.send_raw(self.decoy("fake-ttl", decoy_stream), self.forged_server_ack(len(decoy_stream)))
            self.sock.sendall(stream)
        else:
            self.send_raw(self.decoy(technique, decoy_stream))
            self.sock.sendall(stream)

    def receive_all(self) -> bytes:
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data


def fetch(netns: str, server: str, name: str, technique: str, *, ca_path: str, scheme: str = "https",
          decoy_name: str = "allowed.example", timeout: float = 2.0) -> Outcome:
    """GET / for `name` from `server`, the first bytes sent by `technique`."""
    try:
        with Sender(netns, server, 443 if scheme == "https" else 80, timeout) as sender:
            if scheme == "http":
                sender.send_first_bytes(technique, http_request(name), name, http_request(decoy_name))
                return Outcome(sender.receive_all().decode(errors="replace"), "")
            tls, incoming, outgoing, hello = client_hello(name, ca_path)
            decoy = client_hello(decoy_name, ca_path)[3]
            sender.send_first_bytes(technique, hello, name, decoy)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sender.sock.sendall(outgoing.read())
                    data = sender.sock.recv(65536)
                    if not data:
                        raise ConnectionError("the server closed the connection during the handshake")
                    incoming.write(data)
            tls.write(http_request(name))
            sender.sock.sendall(outgoing.read())
            answer = b""
            while True:
                try:
                    chunk = tls.read(65536)
                    if not chunk:
                        break
                    answer += chunk
                except ssl.SSLWantReadError:
                    data = sender.sock.recv(65536)
                    if not data:
                        break
                    incoming.write(data)
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    break
            return Outcome(answer.decode(errors="replace"), "")
    except (OSError, ssl.SSLError) as error:
        return Outcome("", f"{type(error).__name__}: {error}")
