"""The documented playbook end to end (issue 23): each example policy in
policies/ reproduces its documented signature in the lab, with real
servers and clients through the edge, as `sluice run` enforces it (QUIC
verdicts written by the controller's QUIC code)."""

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers import enforcing, polling_rings
from sluice.datapath import Datapath
from sluice.lab import SERVER_V4, SERVER_V6, Lab
from sluice.policy import load_policy
from sluice.quic_flows import QuicFlows
from test_e2e_quic import SERVER as QUIC_ECHO_SERVER, quic_get

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and XDP need root")]

POLICIES = Path(__file__).resolve().parent.parent / "policies"
TESTS = Path(__file__).resolve().parent
OTHER_SERVER_V4 = "198.51.100.200"      # outside freeze-16k-2025's destination set
DATAGRAM_PORT = 4433                    # QUIC is read by content, not port: a counting listener's
KIB = 1024

# Counts the datagrams each client port sends (a QUIC Initial need not be answered to be counted).
DATAGRAM_COUNTER = f"""
import collections, socket
listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
listener.bind(("0.0.0.0", {DATAGRAM_PORT}))
print("ready", flush=True)
seen = collections.Counter()
while True:
    data, (address, port) = listener.recvfrom(4096)
    seen[port] += 1
    print(port, seen[port], flush=True)
"""
# A TCP service sluice reads no name from, which speaks first as SSH does:
# it sends BULK_BYTES on each connection, then closes once the client has
# (closing with the client's bytes unread would reset the connection).
BULK_PORT, BULK_BYTES = 2222, 200_000
BULK_SERVER = f"""
import socket, threading
listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("::", {BULK_PORT}))
listener.listen(16)
print("ready", flush=True)

def serve(connection):
    with connection:
        connection.sendall(b"SSH-2.0-lab\\r\\n" + bytes({BULK_BYTES} - 13))
        connection.shutdown(socket.SHUT_WR)
        while connection.recv(4096):
            pass

while True:
    threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()
"""
# Its client: sends its own banner, reads until the server closes or is silent for 1.5 s;
# prints the bytes read (0: no connection).
BULK_CLIENT = """
import socket, sys
try:
    connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
except OSError:
    print(0)
    sys.exit()
connection.sendall(b"SSH-2.0-client\\r\\n")
connection.settimeout(1.5)
got = 0
try:
    while data := connection.recv(65536):
        got += len(data)
except TimeoutError:
    pass
print(got)
"""
# An HTTP/3 server on H3_PORT (the QUIC echo server has 443).
H3_PORT = 8443
H3_SERVER = f"""
import asyncio, sys
from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration

class Http3Server(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)

    def quic_event_received(self, event):
        for received in self.h3.handle_event(event):
            if isinstance(received, HeadersReceived):
                self.h3.send_headers(received.stream_id, [(b":status", b"200")])
                self.h3.send_data(received.stream_id, b"over h3\\n", end_stream=True)
        self.transmit()

async def main():
    configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    configuration.load_cert_chain(sys.argv[1], sys.argv[2])
    await serve("::", {H3_PORT}, configuration=configuration, create_protocol=Http3Server)
    print("ready", flush=True)
    await asyncio.Future()

asyncio.run(main())
"""
# A browser-like client: HTTP/3 first, and if that has not served the page within
# H3_WAIT_SECONDS (its Initials dropped), HTTP over TLS over TCP, as browsers fall back.
# Prints the protocol that served the page, its status and the seconds it took.
H3_WAIT_SECONDS = 3.0
BROWSER_LIKE_CLIENT = f"""
import asyncio, os, sys, time
from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration

class Http3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.status = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event):
        for received in self.h3.handle_event(event):
            if isinstance(received, HeadersReceived) and not self.status.done():
                self.status.set_result(dict(received.headers)[b":status"].decode())

async def h3_get(address, name, cafile):
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=name)
    configuration.load_verify_locations(cafile)
    async with connect(address, {H3_PORT}, configuration=configuration, create_protocol=Http3Client) as client:
        stream = client._quic.get_next_available_stream_id()
        client.h3.send_headers(stream, [(b":method", b"GET"), (b":scheme", b"https"),
                                        (b":authority", name.encode()), (b":path", b"/")], end_stream=True)
        client.transmit()
        return await client.status

async def browse(address, name, cafile):
    attempt = asyncio.ensure_future(h3_get(address, name, cafile))
    done, _ = await asyncio.wait({{attempt}}, timeout={H3_WAIT_SECONDS})
    if done and not attempt.exception():
        return "h3", attempt.result()
    tcp = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-w", "%{{http_code}}", "--max-time", "5", "--cacert", cafile,
        "--resolve", f"{{name}}:443:{{address}}", f"https://{{name}}/", stdout=asyncio.subprocess.PIPE)
    return "tcp", (await tcp.communicate())[0].decode()

async def main():
    started = time.monotonic()
    protocol, status = await browse(*sys.argv[1:4])
    print(protocol, status, round(time.monotonic() - started, 2), flush=True)
    os._exit(0)     # before asyncio.run() waits for the abandoned HTTP/3 attempt, as a browser does not

asyncio.run(main())
"""
# A ClientHello built by tests/packets.py, over a real TCP connection: how
# many bytes the server answers within the timeout (0: the flow is frozen).
HELLO_CLIENT = """
import os, socket, sys, time
sys.path.insert(0, sys.argv[1])
from packets import EXT_ECH, alpn_extension, client_hello, extension
name, ech, cut, address = sys.argv[2].encode(), sys.argv[3] == "ech", int(sys.argv[4]), sys.argv[5]
# An outer ECH extension: type outer, HKDF-SHA256/AES-128-GCM, config id, enc, payload.
outer = bytes([0]) + bytes.fromhex("00010001") + b"\\x2a" + (32).to_bytes(2, "big") + os.urandom(32)
outer += (208).to_bytes(2, "big") + os.urandom(208)
after = (alpn_extension(b"h2", b"http/1.1"),) + ((extension(EXT_ECH, outer),) if ech else ())
hello = client_hello(name, extensions_after=after)
connection = socket.create_connection((address, 443), timeout=3)
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if cut:
    connection.sendall(hello[:cut])
    time.sleep(0.2)
    hello = hello[cut:]
connection.sendall(hello)
try:
    print(len(connection.recv(4096)))
except TimeoutError:
    print(0)
"""
# A QUIC v1 client Initial whose ClientHello is built by tests/quic_packets.py,
# sent twice on one flow with a pause for the controller's verdict between.
INITIAL_CLIENT = f"""
import os, socket, sys, time
sys.path.insert(0, sys.argv[1])
from packets import EXT_ECH, extension
from quic_packets import crypto_frame, handshake_client_hello, initial_packet
name, ech, address = sys.argv[2].encode(), sys.argv[3] == "ech", sys.argv[4]
after = (extension(EXT_ECH, bytes(240)),) if ech else ()
datagram = initial_packet(crypto_frame(0, handshake_client_hello(name, extensions_after=after)),
                          dcid=os.urandom(8), size=1200)
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.bind(("0.0.0.0", 0))
sender.sendto(datagram, (address, {DATAGRAM_PORT}))
time.sleep(0.5)
sender.sendto(datagram, (address, {DATAGRAM_PORT}))
print(sender.getsockname()[1])
"""


@pytest.fixture(scope="module")
def lab():
    with Lab() as built:
        built.run_in(built.server_ns, ["ip", "addr", "add", f"{OTHER_SERVER_V4}/24", "dev", "eth0"], check=True)
        processes = [subprocess.Popen(["ip", "netns", "exec", built.server_ns, sys.executable, "-c", script, *args],
                                      stdout=subprocess.PIPE, text=True)
                     for script, args in ((QUIC_ECHO_SERVER, (str(built.workdir / "server.pem"),
                                                              str(built.workdir / "server.key"))),
                                          (DATAGRAM_COUNTER, ()), (BULK_SERVER, ()),
                                          (H3_SERVER, (str(built.workdir / "server.pem"),
                                                       str(built.workdir / "server.key"))))]
        for process in processes:
            assert process.stdout.readline().strip() == "ready"
        built.datagrams = Counter()            # client port -> datagrams the listener received

        def count_datagrams():
            for line in processes[1].stdout:
                port, count = line.split()
                built.datagrams[port] = int(count)
        threading.Thread(target=count_datagrams, daemon=True).start()
        yield built
        for process in processes:
            process.kill()
            process.wait()


def example_enforced(lab, policy_name: str):
    """The example policy loaded and attached to the edge, with the controller's QUIC
    code reading the rings, as `sluice run` does; detached at the end."""
    datapath = Datapath(load_policy(POLICIES / policy_name), events=True)
    quic = QuicFlows(datapath)
    with enforcing(lab, datapath), polling_rings(datapath):
        yield datapath, quic
    datapath.close()


def server_answered(lab, name: str, ech: bool, cut: int = 0) -> int:
    """Bytes the server answers a built ClientHello with (0: none within 3 s)."""
    result = lab.run_in(lab.client_ns, [sys.executable, "-c", HELLO_CLIENT, str(TESTS), name,
                                        "ech" if ech else "plain", str(cut), SERVER_V4], timeout=20)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def bulk_received(lab, server: str) -> int:
    """Bytes a plain TCP client (no TLS, no HTTP) reads from the lab's bulk service on server."""
    result = lab.run_in(lab.client_ns, [sys.executable, "-c", BULK_CLIENT, server, str(BULK_PORT)], timeout=20)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def browse(lab, name: str) -> tuple[str, str, float]:
    """(protocol that served the page, HTTP status, seconds) for a browser-like client."""
    result = lab.run_in(lab.client_ns, [sys.executable, "-c", BROWSER_LIKE_CLIENT, SERVER_V4, name, lab.ca_path],
                        timeout=30)
    assert result.returncode == 0, result.stderr
    protocol, status, seconds = result.stdout.split()
    return protocol, status, float(seconds)


def initials_received(lab, name: str, ech: bool) -> int:
    """How many of a QUIC flow's two client Initials reached the server."""
    result = lab.run_in(lab.client_ns, [sys.executable, "-c", INITIAL_CLIENT, str(TESTS), name,
                                        "ech" if ech else "plain", SERVER_V4], timeout=20)
    assert result.returncode == 0, result.stderr
    time.sleep(0.5)                        # for the listener's last line
    return lab.datagrams[result.stdout.strip()]


@pytest.fixture(scope="class")
def ech_2024(lab):
    yield from example_enforced(lab, "ech-2024.yaml")


@pytest.fixture(scope="class")
def freeze_16k_2025(lab):
    yield from example_enforced(lab, "freeze-16k-2025.yaml")


@pytest.mark.usefixtures("ech_2024")
class TestEch2024:
    @pytest.mark.parametrize("cut", [0, 60])
    def test_ech_with_the_cdn_name_is_frozen_over_tcp_either_alone_passes(self, lab, cut):
        assert server_answered(lab, "cloudflare-ech.com", ech=True, cut=cut) == 0, "frozen: nothing back, no RST"
        assert server_answered(lab, "open.example", ech=True, cut=cut) > 0, "ECH with another name passes"
        assert server_answered(lab, "cloudflare-ech.com", ech=False, cut=cut) > 0, "the name alone passes"

    def test_ech_with_the_cdn_name_is_frozen_over_quic(self, lab, ech_2024):
        # The first Initial passes while the controller reads it; the verdict stops the second.
        assert initials_received(lab, "cloudflare-ech.com", ech=True) == 1
        assert initials_received(lab, "open.example", ech=True) == 2
        assert initials_received(lab, "cloudflare-ech.com", ech=False) == 2
        datapath, quic = ech_2024
        assert quic.flows_by_rule[datapath.policy.rule_by_name("ech-cloudflare-freeze").id] == 1


class TestQuicBlock2022:
    def test_every_quic_flow_is_dropped_and_the_client_falls_back_to_tcp(self, lab):
        assert quic_get(lab, "open.example"), "QUIC works before the policy"
        assert browse(lab, "open.example")[:2] == ("h3", "200"), "the browser-like client takes HTTP/3"
        for _ in example_enforced(lab, "quic-block-2022.yaml"):
            protocol, status, seconds = browse(lab, "open.example")
            # Its Initials dropped, it falls back to TCP within its wait and a page's load.
            assert (protocol, status) == ("tcp", "200") and seconds < H3_WAIT_SECONDS + 5, (protocol, status, seconds)
            for name in ("open.example", "blocked.example"):
                assert not quic_get(lab, name), name
                assert lab.curl(name, timeout=3.0).ok, f"{name} over TCP is untouched"
            # No rule for QUIC looks at the hello: the data plane drops the first Initial itself.
            assert initials_received(lab, "any.example", ech=False) == 0
            # Blocking by IP prefix: any protocol, from the SYN; another server is untouched.
            assert bulk_received(lab, OTHER_SERVER_V4) == 0
            assert lab.run_in(lab.client_ns, ["curl", "-s", "-o", "/dev/null", "--max-time", "2",
                                              f"http://{OTHER_SERVER_V4}/"], timeout=20).returncode != 0
            assert bulk_received(lab, SERVER_V4) == BULK_BYTES


@pytest.mark.usefixtures("freeze_16k_2025")
class TestFreeze16k2025:
    @staticmethod
    def downloaded(lab, url: str, *extra) -> int:
        result = lab.run_in(lab.client_ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}",
                                            "--max-time", "3", "-r", "0-199999", "--cacert", lab.ca_path,
                                            *extra, url], timeout=20)
        return int(result.stdout)

    @pytest.mark.parametrize("server", [SERVER_V4, f"[{SERVER_V6}]"])
    def test_a_download_from_the_set_stalls_at_16k(self, lab, server):
        assert 14 * KIB <= self.downloaded(lab, f"http://{server}/download") <= 18 * KIB

    def test_over_tls_too_16k_of_the_servers_bytes_pass(self, lab, freeze_16k_2025):
        datapath, _quic = freeze_16k_2025
        rule = datapath.policy.rule_by_name("hosting-16k-freeze")
        before = datapath.rule_stats()[rule.id]["down"]
        got = self.downloaded(lab, "https://open.example/download", "--resolve", f"open.example:443:{SERVER_V4}")
        after = datapath.rule_stats()[rule.id]["down"]
        # TLS records of 16 KB: the client may decrypt nothing of the body before the freeze.
        assert got < 16 * KIB
        passed = (after["bytes"] - after["dropped_bytes"]) - (before["bytes"] - before["dropped_bytes"])
        packets = (after["packets"] - after["dropped_packets"]) - (before["packets"] - before["dropped_packets"])
        # Frames: 16 KiB of payload (handshake included) and each packet's headers (at most 80 bytes).
        assert 14 * KIB <= passed - 80 * packets and passed <= 16 * KIB + 80 * packets, (passed, packets)
        assert after["dropped_packets"] > before["dropped_packets"]

    @pytest.mark.parametrize("server", [SERVER_V4, SERVER_V6])
    def test_a_flow_sluice_reads_no_name_from_stalls_at_16k_too(self, lab, server):
        assert 14 * KIB <= bulk_received(lab, server) <= 18 * KIB

    def test_another_destination_is_untouched(self, lab):
        assert self.downloaded(lab, f"http://{OTHER_SERVER_V4}/download") == 200000
        assert bulk_received(lab, OTHER_SERVER_V4) == BULK_BYTES
