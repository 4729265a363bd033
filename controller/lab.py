# SPDX-License-Identifier: GPL-2.0-only
"""A lab of network namespaces: client -> edge router -> server.

    client ns            edge ns                          server ns
    eth0 192.0.2.2  ---  cli0 192.0.2.1
         2001:db8:c::2        2001:db8:c::1
                          srv0 198.51.100.1     ---  eth0 198.51.100.2
    client2 ns                 2001:db8:5::1              2001:db8:5::2
    eth0 203.0.113.2 --  cli1 203.0.113.1
         2001:db8:d::2        2001:db8:d::1

The server runs a real nginx on ports 80 and 443 (TLS 1.2 and 1.3) with a
certificate, signed by a throwaway CA, for every name in LAB_NAMES. Clients
reach it with real curl, Python's ssl module or `openssl s_client`, always
through the edge, where sluice attaches to cli0, cli1 and srv0. The second
client network lets a policy treat two classes of client differently.
Names resolve by
curl's --resolve, so no DNS is involved.

Namespace names and the working directory (/tmp/sluice-lab-<pid>-*, 0700:
it holds the throwaway CA's private key) carry the creating process's pid,
so a later lab, or `sluice stop`, can clean up what a killed one left
behind, and never touches a lab whose creator still runs.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.ethtool.ethtool import Ethtool

from .netns import inside_netns

LAB_NAMES = ("blocked.example", "cdn.blocked.example", "notblocked.example", "exact.example",
             "sub.exact.example", "watched.example", "allowed.example", "open.example", "slow.example",
             "video.example", "reset.example", "page.example")
CLIENT_V4, CLIENT_V6 = "192.0.2.2", "2001:db8:c::2"
EDGE_CLIENT_V4, EDGE_CLIENT_V6 = "192.0.2.1", "2001:db8:c::1"
# A second client network, so that policies can treat two classes of client differently.
CLIENT2_V4, CLIENT2_V6 = "203.0.113.2", "2001:db8:d::2"
EDGE_CLIENT2_V4, EDGE_CLIENT2_V6 = "203.0.113.1", "2001:db8:d::1"
EDGE_SERVER_V4, EDGE_SERVER_V6 = "198.51.100.1", "2001:db8:5::1"
SERVER_V4, SERVER_V6 = "198.51.100.2", "2001:db8:5::2"
NAMESPACE_PREFIX = "sluice-"
WORKDIR_PREFIX = "sluice-lab-"
PF_EXITING = 0x4            # include/linux/sched.h: the process has begun to exit
NGINX = "/usr/sbin/nginx"
DOWNLOAD_BYTES = 2**30                # /download serves this many bytes (a sparse file): enough for any timed run
UPLOAD_LIMIT = "1g"                   # nginx accepts uploads this large (and discards them)
READY_TIMEOUT_S = 10.0

NGINX_CONF = """\
daemon off;
user root;   # the workers read and write the lab's private temporary directory
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size {upload_limit};
    server {{
        listen 80;
        listen [::]:80;
        listen 443 ssl;
        listen [::]:443 ssl;
        ssl_certificate {dir}/server.pem;
        ssl_certificate_key {dir}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root {dir}/www;
        location = / {{ default_type text/plain; return 200 "sluice lab: $host\\n"; }}
        location = /download {{ default_type application/octet-stream; }}
        # Uploads: nginx reads the whole body before answering, then discards it.
        location = /upload {{ default_type text/plain; client_body_in_file_only off;
                              proxy_pass http://127.0.0.1:8081/; }}
    }}
    server {{ listen 127.0.0.1:8081; location / {{ return 200 "received\\n"; }} }}
}}
"""


@dataclass
class ClientResult:
    """What one client connection achieved."""
    name: str
    client: str             # "curl", "python", "openssl"
    family: int
    ok: bool
    exit_code: int
    http_code: int
    body: str
    seconds: float
    error: str


class LabError(RuntimeError):
    pass


def cleanup_stale() -> None:
    """Delete lab namespaces (and their nginx) and working directories whose creating process is gone."""
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        match = re.match(rf"^{NAMESPACE_PREFIX}[a-z]-(\d+)-\w+$", name)
        if match and not process_runs(int(match[1])):
            _kill_namespace_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    temp = Path(tempfile.gettempdir())
    for workdir in temp.glob(f"{WORKDIR_PREFIX}*"):
        match = re.match(rf"^{WORKDIR_PREFIX}(\d+)-\w+$", workdir.name)
        if match and not process_runs(int(match[1])) and workdir.is_dir() and not workdir.is_symlink():
            shutil.rmtree(workdir, ignore_errors=True)


def process_runs(pid: int) -> bool:
    """Is pid a process that still runs? Not one that is gone, nor one on
    its way out, nor a zombie its parent has not yet waited for: a killed
    controller can be either when `sluice stop` comes right after the kill."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # proc(5): after "(comm)", the state, then the flags as the ninth field.
    state, *fields = stat.rpartition(")")[2].split()
    return state not in ("Z", "X", "x") and not int(fields[5]) & PF_EXITING


def _kill_namespace_processes(ns: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


class Lab:
    """Build with `with Lab() as lab:`; everything is torn down on exit."""

    edge_client_iface = "cli0"
    edge_client2_iface = "cli1"
    edge_server_iface = "srv0"
    edge_ifaces = (edge_client_iface, edge_client2_iface, edge_server_iface)

    def __init__(self, tag: str | None = None):
        tag = tag or uuid.uuid4().hex[:6]
        self.client_ns = f"{NAMESPACE_PREFIX}c-{os.getpid()}-{tag}"
        self.client2_ns = f"{NAMESPACE_PREFIX}d-{os.getpid()}-{tag}"
        self.edge_ns = f"{NAMESPACE_PREFIX}e-{os.getpid()}-{tag}"
        self.server_ns = f"{NAMESPACE_PREFIX}s-{os.getpid()}-{tag}"
        self.workdir: Path | None = None
        self.nginx: subprocess.Popen | None = None

    @property
    def ca_path(self) -> str:
        return str(self.workdir / "ca.pem")

    def __enter__(self) -> "Lab":
        cleanup_stale()
        try:
            # mkdtemp makes it 0700: the CA's private key is for no one else to read.
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
            self._build_network()
            self._make_certificates()
            self._start_nginx()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.nginx is not None:
            self.nginx.kill()
            self.nginx.wait()
            self.nginx = None
        for ns in (self.client_ns, self.client2_ns, self.edge_ns, self.server_ns):
            if ns in netns.listnetns():
                _kill_namespace_processes(ns)
                netns.remove(ns)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # --- building ---------------------------------------------------------
    def _build_network(self) -> None:
        for ns in (self.client_ns, self.client2_ns, self.edge_ns, self.server_ns):
            netns.create(ns)
        with IPRoute() as ipr:
            # Create each veth pair in the root namespace, then move its ends.
            for ns, iface, peer in ((self.client_ns, "eth0", self.edge_client_iface),
                                    (self.client2_ns, "eth0", self.edge_client2_iface),
                                    (self.server_ns, "eth0", self.edge_server_iface)):
                tmp_a, tmp_b = f"sl{uuid.uuid4().hex[:8]}", f"sl{uuid.uuid4().hex[:8]}"
                ipr.link("add", ifname=tmp_a, kind="veth", peer=tmp_b)
                ipr.link("set", index=ipr.link_lookup(ifname=tmp_a)[0], net_ns_fd=ns, ifname=iface)
                ipr.link("set", index=ipr.link_lookup(ifname=tmp_b)[0], net_ns_fd=self.edge_ns, ifname=peer)
        for ns in (self.client_ns, self.client2_ns):
            self._checksum_in_software(ns, "eth0")
        self._configure(self.client_ns, "eth0", [(CLIENT_V4, 24), (CLIENT_V6, 64)],
                        gateways=(EDGE_CLIENT_V4, EDGE_CLIENT_V6))
        self._configure(self.client2_ns, "eth0", [(CLIENT2_V4, 24), (CLIENT2_V6, 64)],
                        gateways=(EDGE_CLIENT2_V4, EDGE_CLIENT2_V6))
        self._configure(self.server_ns, "eth0", [(SERVER_V4, 24), (SERVER_V6, 64)],
                        gateways=(EDGE_SERVER_V4, EDGE_SERVER_V6))
        self._configure(self.edge_ns, self.edge_client_iface, [(EDGE_CLIENT_V4, 24), (EDGE_CLIENT_V6, 64)])
        self._configure(self.edge_ns, self.edge_client2_iface, [(EDGE_CLIENT2_V4, 24), (EDGE_CLIENT2_V6, 64)])
        self._configure(self.edge_ns, self.edge_server_iface, [(EDGE_SERVER_V4, 24), (EDGE_SERVER_V6, 64)])
        self.set_forwarding(True)

    def _checksum_in_software(self, ns: str, iface: str) -> None:
        """The clients' stacks fill in their checksums, as frames from the wire
        carry them: a veth leaves a local sender's TCP checksum to an offload
        that never runs, so it reaches the edge half done, and sluice takes
        such a segment for a decoy the server would drop (bpf/receiver.h)."""
        with self.enter(ns), Ethtool() as ethtool:
            features = ethtool.get_features(iface)
            features.features["tx-checksum-ip-generic"].enable = False
            ethtool.set_features(iface, features)

    def _configure(self, ns: str, iface: str, addresses, gateways=()) -> None:
        # DAD would keep the IPv6 addresses unusable for a second or two.
        self.sysctl(ns, f"net.ipv6.conf.{iface}.accept_dad", 0)
        self.sysctl(ns, "net.ipv6.conf.all.accept_dad", 0)
        with self.enter(ns), IPRoute() as ipr:
            index = ipr.link_lookup(ifname=iface)[0]
            for address, prefix in addresses:
                ipr.addr("add", index=index, address=address, prefixlen=prefix)
            ipr.link("set", index=index, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            for gateway in gateways:
                family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
                ipr.route("add", dst="default", gateway=gateway, family=family)

    def set_forwarding(self, enabled: bool) -> None:
        """Routing on the edge: without it nothing crosses from client to server."""
        self.sysctl(self.edge_ns, "net.ipv4.ip_forward", int(enabled))
        self.sysctl(self.edge_ns, "net.ipv6.conf.all.forwarding", int(enabled))

    def sysctl(self, ns: str, key: str, value) -> None:
        with self.enter(ns):
            Path("/proc/sys", *key.split(".")).write_text(f"{value}\n")

    def _make_certificates(self) -> None:
        d = self.workdir
        _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-days", "2", "-subj", "/CN=sluice lab CA", "-keyout", str(d / "ca.key"),
              "-out", str(d / "ca.pem"), "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign"])
        _run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-subj", "/CN=sluice lab server", "-keyout", str(d / "server.key"), "-out", str(d / "server.csr")])
        (d / "san.ext").write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in LAB_NAMES) + "\n")
        _run(["openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"),
              "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / "san.ext"),
              "-out", str(d / "server.pem")])

    def _start_nginx(self) -> None:
        d = self.workdir
        (d / "www").mkdir()
        with open(d / "www" / "download", "wb") as out:
            out.truncate(DOWNLOAD_BYTES)
        (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d, upload_limit=UPLOAD_LIMIT))
        self.nginx = subprocess.Popen(["ip", "netns", "exec", self.server_ns, NGINX, "-c", str(d / "nginx.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.nginx.poll() is not None:
                break
            listening = self.run_in(self.server_ns, ["ss", "-Htln"]).stdout
            if all(re.search(rf"[:\]]{port}\s", listening) for port in (80, 443)):
                return
            time.sleep(0.05)
        log = (d / "error.log").read_text() if (d / "error.log").exists() else ""
        raise LabError(f"nginx did not start in the server namespace: {log.strip() or 'no error log'}")

    # --- using ------------------------------------------------------------
    def enter(self, ns: str):
        """Switch this thread into namespace ns for the body (for netlink calls)."""
        return inside_netns(ns)

    def run_in(self, ns: str, argv, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", ns, *argv], **kwargs)

    @staticmethod
    def server_address(family: int) -> str:
        return SERVER_V6 if family == 6 else SERVER_V4

    def resolve(self, name: str, scheme: str, family: int) -> list[str]:
        """curl's arguments that send `name` to the lab's server, with no DNS."""
        address = self.server_address(family)
        port = 443 if scheme == "https" else 80
        return ["--resolve", f"{name}:{port}:[{address}]" if family == 6 else f"{name}:{port}:{address}"]

    def curl(self, name: str, scheme: str = "https", family: int = 4, path: str = "/",
             timeout: float = 3.0, extra_args=(), second_client: bool = False) -> ClientResult:
        """A real curl from the client namespace (or the second one); body, status and timing come back."""
        argv = ["curl", "-sS", "--max-time", str(timeout), "--cacert", self.ca_path,
                *self.resolve(name, scheme, family), "-o", "-", "-w", "\n%{http_code}",
                *extra_args, f"{scheme}://{name}{path}"]
        started = time.monotonic()
        result = self.run_in(self.client2_ns if second_client else self.client_ns, argv, timeout=timeout + 5)
        seconds = time.monotonic() - started
        body, _, code = result.stdout.rpartition("\n")
        http_code = int(code) if code.isdigit() else 0
        return ClientResult(name, "curl", family, result.returncode == 0 and 200 <= http_code < 400,
                            result.returncode, http_code, body, seconds, result.stderr.strip())

    # exclude_setup below: time the transfer from the request on, after the
    # TCP and TLS handshakes, as a rate limiter's steady state is judged.
    # Under emulation (TCG) a handshake takes seconds of a short run.

    def download_rate(self, name: str, seconds: float = 2.0, family: int = 4,
                      exclude_setup: bool = False, nbytes: int | None = None, scheme: str = "https") -> float:
        """Download /download for at most `seconds`; the achieved goodput in bit/s.

        nbytes: fetch exactly that many bytes (an HTTP range) and time the
        whole transfer; `seconds` is then only a time limit. A transfer cut
        off at a time limit undercounts a path that drops: the bytes after a
        lost segment wait in the client's socket until the retransmission
        arrives, and curl never sees them."""
        extra = ("-r", f"0-{nbytes - 1}") if nbytes else ()
        return self._transfer_rate(name, "/download", seconds, family, "size_download", exclude_setup,
                                   extra, expect_bytes=nbytes, scheme=scheme)

    def upload_rate(self, name: str, nbytes: int, timeout: float = 30.0, family: int = 4,
                    exclude_setup: bool = False, scheme: str = "https") -> float:
        """Upload nbytes to /upload and wait for the server's answer; goodput in bit/s.

        The whole body must arrive: what curl has merely handed to its socket
        buffer says nothing about the path's rate."""
        body = self.workdir / f"upload-{nbytes}.bin"
        if not body.exists():
            body.write_bytes(os.urandom(nbytes))
        return self._transfer_rate(name, "/upload", timeout, family, "size_upload", exclude_setup,
                                   ("--data-binary", f"@{body}", "-H", "Expect:"), expect_bytes=nbytes,
                                   scheme=scheme)

    def _transfer_rate(self, name, path, seconds, family, size_variable, exclude_setup, extra=(),
                       expect_bytes=None, scheme="https") -> float:
        result = self.run_in(self.client_ns, [
            "curl", "-s", "--max-time", str(seconds), "--cacert", self.ca_path,
            *self.resolve(name, scheme, family), "-o", "/dev/null", *extra,
            "-w", f"%{{{size_variable}}} %{{time_pretransfer}} %{{time_total}}", f"{scheme}://{name}{path}"],
            # curl keeps its own --max-time; this bound is for a hung process only. It is
            # generous because under emulation (the VM kernels) on a busy machine even
            # `ip netns exec` and curl's start took more than 5 s.
            timeout=seconds + 60)
        size, setup, total = result.stdout.split()
        if expect_bytes is not None and (result.returncode != 0 or int(size) != expect_bytes):
            raise RuntimeError(f"{path} of {expect_bytes} bytes via {name} did not complete within "
                               f"{seconds} s: {size} bytes, curl exit {result.returncode}")
        return int(size) * 8 / (float(total) - (float(setup) if exclude_setup else 0.0))

    def python_tls(self, name: str, family: int = 4, timeout: float = 3.0) -> ClientResult:
        """A TLS handshake and GET with Python's ssl module, in the client namespace."""
        script = (
            "import socket, ssl, sys\n"
            f"ctx = ssl.create_default_context(cafile={self.ca_path!r})\n"
            f"raw = socket.create_connection(({self.server_address(family)!r}, 443), timeout={timeout})\n"
            f"tls = ctx.wrap_socket(raw, server_hostname={name!r})\n"
            f"tls.sendall(b'GET / HTTP/1.1\\r\\nHost: {name}\\r\\nConnection: close\\r\\n\\r\\n')\n"
            "data = b''\n"
            "while chunk := tls.recv(4096):\n"
            "    data += chunk\n"
            "sys.stdout.write(data.decode())\n")
        started = time.monotonic()
        result = self.run_in(self.client_ns, ["/usr/bin/python3", "-c", script], timeout=timeout + 5)
        ok = result.returncode == 0 and result.stdout.startswith("HTTP/1.1 200")
        return ClientResult(name, "python", family, ok, result.returncode, 200 if ok else 0,
                            result.stdout, time.monotonic() - started, result.stderr.strip()[-500:])

    def openssl_tls(self, name: str, family: int = 4, timeout: float = 3.0) -> ClientResult:
        """`openssl s_client` with SNI and certificate verification, in the client namespace."""
        address = self.server_address(family)
        target = f"[{address}]:443" if family == 6 else f"{address}:443"
        argv = ["timeout", str(timeout), "openssl", "s_client", "-connect", target, "-servername", name,
                "-CAfile", self.ca_path, "-verify_return_error", "-verify_hostname", name, "-quiet"]
        started = time.monotonic()
        result = self.run_in(self.client_ns, argv, timeout=timeout + 5,
                             input=f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n")
        ok = "HTTP/1.1 200" in result.stdout
        return ClientResult(name, "openssl", family, ok, result.returncode, 200 if ok else 0,
                            result.stdout, time.monotonic() - started, result.stderr.strip()[-500:])
