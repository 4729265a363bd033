"""`sluice run` as a long-lived service: live reload, refused reloads, crashes, stop.

The controller runs as a real process (python -m sluice run) on the
lab's edge interfaces; these tests signal it, edit its policy file, and kill
it, and check what real clients see.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpers import free_port
from sluice import hooks
from sluice.lab import Lab
from sluice.service import PIN_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and XDP need root")]

SLUICE = [sys.executable, "-m", "sluice"]
METRICS_PORT = free_port()
BLOCK_ONE = "version: 1\nrules:\n  - {name: blocker, action: block, domains: [blocked.example]}\n"
BLOCK_TWO = BLOCK_ONE + "  - {name: second, action: block, domains: [exact.example]}\n"
SLOW = ("version: 1\nrules:\n  - {name: slow, action: throttle, rate: 1mbit, burst: 64KiB, "
        "domains: [slow.example]}\n  - {name: blocker, action: block, domains: [blocked.example]}\n")


@pytest.fixture
def lab():
    with Lab() as built:
        yield built
    subprocess.run([*SLUICE, "stop"], capture_output=True, timeout=60)


class Controller:
    def __init__(self, lab, policy_path, *extra):
        self.process = subprocess.Popen(
            [*SLUICE, "run", "--policy", str(policy_path), "--netns", lab.edge_ns, "--iface", "cli0",
             "--iface", "srv0", "--metrics-port", str(METRICS_PORT), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.wait_for_metrics()

    # A start compiles the data plane (for each hook it uses) and loads it: under
    # the suite's load on two CPUs that has taken over a minute.
    def wait_for_metrics(self, timeout=180.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read()
            try:
                return self.metrics()
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the controller never served metrics")

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read().decode()

    def metric(self, line_prefix: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(line_prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_for(self, line_prefix, value, timeout=90.0):
        deadline = time.monotonic() + timeout
        while self.metric(line_prefix) != value:
            assert time.monotonic() < deadline, f"{line_prefix} never reached {value}"
            time.sleep(0.2)


def start_download(lab, seconds):
    """A download of slow.example for at most `seconds`, in the background;
    communicate() gives the bytes it got."""
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.client_ns, "curl", "-s", "--max-time", str(seconds), "--cacert", lab.ca_path,
         *lab.resolve("slow.example", "https", 4), "-o", "/dev/null", "-w", "%{size_download}",
         "https://slow.example/download"], stdout=subprocess.PIPE, text=True)


def reloads(controller, result):
    return controller.metric(f'sluice_policy_reloads_total{{result="{result}"}}')


def test_editing_the_policy_reloads_it_live(lab, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_ONE)
    controller = Controller(lab, policy)
    assert not lab.curl("blocked.example", timeout=1).ok
    assert lab.curl("exact.example", timeout=2).ok
    policy.write_text(BLOCK_TWO)
    controller.wait_for('sluice_policy_reloads_total{result="success"}', 1.0)
    assert not lab.curl("exact.example", timeout=1).ok
    assert not lab.curl("blocked.example", timeout=1).ok
    # SIGHUP reloads too, even when the file did not change.
    controller.process.send_signal(signal.SIGHUP)
    controller.wait_for('sluice_policy_reloads_total{result="success"}', 2.0)
    controller.process.send_signal(signal.SIGTERM)
    assert controller.process.wait(timeout=30) == 0
    assert lab.curl("blocked.example", timeout=2).ok, "stopping detaches"
    assert not PIN_ROOT.exists(), "stopping unpins"


def test_a_refused_policy_leaves_the_running_one_in_force(lab, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_ONE)
    controller = Controller(lab, policy)
    policy.write_text(BLOCK_ONE + "  - {name: broken, action: explode, domains: [exact.example]}\n")
    controller.wait_for('sluice_policy_reloads_total{result="failure"}', 1.0)
    assert not lab.curl("blocked.example", timeout=1).ok
    assert lab.curl("exact.example", timeout=2).ok
    status = json.loads(subprocess.run([*SLUICE, "status", "--json"], capture_output=True, text=True,
                                       check=True).stdout)
    assert status["reloads"][-1]["ok"] is False
    assert "unknown action 'explode'" in status["reloads"][-1]["detail"]
    controller.process.send_signal(signal.SIGTERM)
    controller.process.wait(timeout=30)
    assert "policy reload refused" in controller.process.stderr.read()


def test_unrelated_traffic_loses_nothing_while_the_policy_reloads(lab, tmp_path):
    """A steady UDP stream crosses the edge while the policy reloads RELOADS times: every datagram arrives."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_ONE)
    controller = Controller(lab, policy)
    stop_file = tmp_path / "stop-sending"
    receiver = subprocess.Popen(["ip", "netns", "exec", lab.server_ns, "/usr/bin/python3", "-c", UDP_RECEIVER],
                                stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    sender = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, "/usr/bin/python3", "-c", UDP_SENDER,
                               str(stop_file)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    for _ in range(RELOADS):
        before = reloads(controller, "success")
        controller.process.send_signal(signal.SIGHUP)
        controller.wait_for('sluice_policy_reloads_total{result="success"}', before + 1)
    stop_file.touch()
    sent = int(sender.communicate(timeout=60)[0])
    received = int(receiver.communicate(timeout=60)[0])
    assert sent > RELOADS * 100, "the stream ran through the reloads"
    assert received == sent
    assert reloads(controller, "success") == RELOADS


# Each reload compiles the data plane (10-20 s here now), so 20 swaps under a
# 500-datagram/s stream: 100 took 17 minutes of the suite and proved no more.
RELOADS = 20
UDP_SENDER = """
import os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
while not os.path.exists(sys.argv[1]):
    s.sendto(sent.to_bytes(4, 'big'), ('198.51.100.2', 5001))
    sent += 1
    time.sleep(0.002)
time.sleep(0.5)
s.sendto(b'end', ('198.51.100.2', 5001))
print(sent)
"""
UDP_RECEIVER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(('0.0.0.0', 5001))
s.settimeout(10)   # the end marker is a datagram too; never wait forever for it
seen = set()
while True:
    try:
        data = s.recv(64)
    except socket.timeout:
        break
    if data == b'end':
        break
    seen.add(data)
print(len(seen))
"""


@pytest.mark.parametrize("hook", ["generic", "tc"])
def test_after_a_crash_the_data_plane_keeps_enforcing_and_a_restart_keeps_the_flows(lab, tmp_path, hook):
    """The pinned links stay (at tc without tcx, the filter stays by itself),
    and the stages by their pin (tc_stages at tc); the restart takes the
    links over and swaps its program in."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(SLOW)
    controller = Controller(lab, policy, "--hook", hook)
    download = start_download(lab, 8)
    time.sleep(2)
    controller.process.kill()
    controller.process.wait()
    assert not lab.curl("blocked.example", timeout=1).ok, "fail-static: still enforcing"
    time.sleep(1)
    restarted = Controller(lab, policy, "--hook", hook)
    assert restarted.metric("sluice_flow_table_entries") >= 1
    downloaded = int(download.communicate(timeout=30)[0])
    # Had the restart forgotten the flow, its rest would have run unthrottled (a Gbit/s here).
    assert downloaded * 8 <= 1_000_000 * 8 + 64 * 1024 * 8
    assert downloaded * 8 >= 1_000_000 * 8 / 3
    restarted.process.send_signal(signal.SIGTERM)
    restarted.process.wait(timeout=30)
    if hook == "generic" or hooks.tcx_available():
        link = "tcx" if hook == "tc" else "XDP"
        assert f"took over the pinned {link} link on cli0" in restarted.process.stderr.read()


@pytest.mark.parametrize("hook", ["generic", "auto"])
def test_fail_open_detaches_when_the_controller_dies(lab, tmp_path, hook):
    """auto puts the lab's veths at tc ingress where the kernel has tcx links,
    which go with the controller as XDP links do; at generic XDP without."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_ONE)
    controller = Controller(lab, policy, "--fail-open", "--hook", hook)
    assert not lab.curl("blocked.example", timeout=1).ok
    controller.process.kill()
    controller.process.wait()
    time.sleep(0.5)
    assert lab.curl("blocked.example", timeout=2).ok
    log = controller.process.stderr.read()
    if hook == "generic":
        assert "attached to cli0 (netns {}) in generic XDP mode (asked for (--hook))".format(lab.edge_ns) in log
    elif hooks.tcx_available():
        assert "attached to cli0 (netns {}) at tc ingress, by tcx link (auto: a veth, ".format(lab.edge_ns) in log
        assert "tc ingress forwards faster than generic XDP there" in log
    else:
        assert "in generic XDP mode (auto: a veth, " in log and "no tcx link" in log


@pytest.mark.parametrize("hook", ["generic", "tc"])
def test_stop_detaches_a_crashed_controllers_data_plane(lab, tmp_path, hook):
    """Pinned XDP and tcx links, or at --hook tc without tcx the filters the state file lists."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_ONE)
    controller = Controller(lab, policy, "--hook", hook)
    controller.process.kill()
    controller.process.wait()
    assert not lab.curl("blocked.example", timeout=1).ok
    subprocess.run([*SLUICE, "stop"], check=True, capture_output=True, timeout=60)
    assert lab.curl("blocked.example", timeout=2).ok
    assert not PIN_ROOT.exists()


def download_during_reload(lab, controller, policy, new_text, seconds=6):
    """A download of slow.example for `seconds` while the policy changes under
    it: the bytes it got, and the seconds from its start until the new policy
    was in force. A reload compiles a whole data plane (10-40 s on a busy
    2-core machine), so the tests judge the bytes against when it landed."""
    download = start_download(lab, seconds)
    started = time.monotonic()
    time.sleep(1.5)
    before = reloads(controller, "success")
    policy.write_text(new_text)
    controller.wait_for('sluice_policy_reloads_total{result="success"}', before + 1)
    reloaded_after = time.monotonic() - started
    return int(download.communicate(timeout=seconds + 30)[0]), reloaded_after


UNTHROTTLED = "version: 1\nrules:\n  - {name: blocker, action: block, domains: [blocked.example]}\n"


def test_existing_flows_keep_their_verdict_across_a_reload(lab, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(SLOW)
    controller = Controller(lab, policy)
    downloaded, _ = download_during_reload(lab, controller, policy, UNTHROTTLED)
    assert downloaded * 8 <= 1_000_000 * 6 + 64 * 1024 * 8, "still throttled after the rule went away"
    assert lab.download_rate("slow.example", seconds=1.0) > 20_000_000, "new flows follow the new policy"


def test_reclassify_true_judges_existing_flows_by_the_new_policy(lab, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(SLOW)
    controller = Controller(lab, policy)
    # Long enough for the reload to land well within the download, and for
    # TCP to recover from the policer's drops after the swap.
    seconds = 50
    downloaded, reloaded_after = download_during_reload(lab, controller, policy,
                                                        "reclassify: true\n" + UNTHROTTLED, seconds=seconds)
    assert reloaded_after < seconds - 10, f"the reload took {reloaded_after:.0f} s: nothing left to measure"
    throttled_all_along = 1_000_000 * seconds + 64 * 1024 * 8
    assert downloaded * 8 > 3 * throttled_all_along, "released from the throttle"


ECHO_PORT = 4443
# Echoes what each connection sends (sluice reads a ClientHello on any port).
ECHO_SERVER = f"""
import socket, threading
listener = socket.create_server(("0.0.0.0", {ECHO_PORT}), reuse_port=True)
print("ready", flush=True)

def echo(connection):
    with connection:
        while data := connection.recv(65536):
            connection.sendall(data)

while True:
    threading.Thread(target=echo, args=(listener.accept()[0],), daemon=True).start()
"""
# Opens a connection with a built ClientHello (name, "ech" or not, ALPN ids), then for each
# line on stdin sends it and prints how many bytes came back within 2 s (0: none).
HELLO_THEN_ECHO = f"""
import itertools, socket, sys
sys.path.insert(0, sys.argv[1])
from packets import EXT_ECH, alpn_extension, client_hello, extension
name, ech, alpn = sys.argv[2].encode(), sys.argv[3] == "ech", [a.encode() for a in sys.argv[4:]]
after = ((alpn_extension(*alpn),) if alpn else ()) + ((extension(EXT_ECH, bytes(200)),) if ech else ())
connection = socket.create_connection(("198.51.100.2", {ECHO_PORT}), timeout=2)
for line in itertools.chain([client_hello(name, extensions_after=after)], (l.encode() for l in sys.stdin)):
    connection.sendall(line)
    got = 0
    try:
        while got < len(line):
            got += len(connection.recv(65536))
    except TimeoutError:
        pass
    print(got, flush=True)
"""


def test_reclassify_judges_existing_flows_by_their_hellos_ech_and_alpn(lab, tmp_path):
    """Flows open before a reload are judged again by what their ClientHello offered (ECH, ALPN),
    not as offering nothing."""
    server = subprocess.Popen(["ip", "netns", "exec", lab.server_ns, sys.executable, "-c", ECHO_SERVER],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    policy = tmp_path / "policy.yaml"
    policy.write_text("reclassify: true\n" + UNTHROTTLED)
    controller = Controller(lab, policy)
    tests = str(Path(__file__).resolve().parent)
    hellos = {"ech": ("cloudflare-ech.com", "ech"), "alpn": ("alpn.example", "plain", "h2"),
              "neither": ("cloudflare-ech.com", "plain", "http/1.1")}
    clients = {what: subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c",
                                       HELLO_THEN_ECHO, tests, *argv], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
               for what, argv in hellos.items()}
    for what, client in clients.items():
        assert int(client.stdout.readline()) > 0, f"{what}: the hello passes the first policy"
    before = reloads(controller, "success")
    policy.write_text("reclassify: true\n" + UNTHROTTLED +
                      "  - {name: ech-freeze, action: freeze, exact: [cloudflare-ech.com], tls: {ech: present}}\n"
                      "  - {name: h2-freeze, action: freeze, domains: [alpn.example], tls: {alpn: [h2]}}\n")
    controller.wait_for('sluice_policy_reloads_total{result="success"}', before + 1)
    echoed = {}
    for what, client in clients.items():
        client.stdin.write("ping\n")
        client.stdin.flush()
        echoed[what] = int(client.stdout.readline())
        client.kill()
    server.kill()
    assert echoed == {"ech": 0, "alpn": 0, "neither": 5}, echoed


def test_a_rule_whose_action_changes_takes_its_flows_with_it(lab, tmp_path):
    """The rule keeps its name but goes from throttle to block: the download
    already running stops, rather than keep "throttle" with a rule that has
    no rate any more, which would let it run free."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(SLOW)
    controller = Controller(lab, policy)
    seconds = 50
    downloaded, reloaded_after = download_during_reload(lab, controller, policy, SLOW.replace(
        "action: throttle, rate: 1mbit, burst: 64KiB", "action: block"), seconds=seconds)
    assert reloaded_after < seconds - 10, f"the reload took {reloaded_after:.0f} s: nothing left to measure"
    # Throttled until the reload landed, then blocked: at most the rate for
    # that long (and a burst). Kept throttled it would get 50 Mbit; let
    # free, hundreds.
    assert downloaded * 8 < 1_000_000 * (reloaded_after + 2) + 64 * 1024 * 8, (downloaded, reloaded_after)
    assert not lab.curl("slow.example", timeout=3.0).ok, "new connections are blocked"
    controller.process.send_signal(signal.SIGTERM)
    assert "reload: rule slow is now block; its flows follow" in controller.process.communicate(timeout=60)[1]


def test_a_schedule_step_switches_live_and_takes_existing_flows_with_it(lab, tmp_path):
    """Throttle now, block from a few seconds later: the controller switches
    without a restart, logs the switch, and the download already running is
    blocked from then on, as new connections are."""
    # Far enough ahead that the controller has compiled and attached (10-40 s
    # on a busy machine) and been seen throttling before the switch.
    switch_at = datetime.now(timezone.utc) + timedelta(seconds=45)
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - {name: slow, action: throttle, rate: 1mbit, burst: 64KiB, "
                      f"domains: [slow.example], escalate: [{{at: '{switch_at.isoformat()}', action: block}}]}}\n")
    controller = Controller(lab, policy)
    assert lab.curl("slow.example", timeout=3.0).ok, "throttled, not blocked, before the switch"
    time.sleep(max(0.0, (switch_at - datetime.now(timezone.utc)).total_seconds() - 8))
    seconds = 60
    download = start_download(lab, seconds)
    started = time.monotonic()
    while not controller.metric('sluice_rule_flows_total{action="block",mode="enforce",rule="slow"}'):
        assert time.monotonic() < started + seconds, "the rule never switched to block"
        time.sleep(0.2)
    switched_after = time.monotonic() - started
    # The running download stalls at the switch (compiled when it falls due):
    # throttled until then, at most the rate for that long and a burst;
    # throttled all along it would reach 60 Mbit.
    size = int(download.communicate(timeout=seconds + 30)[0])
    assert 1_000_000 * 2 < size * 8 < 1_000_000 * (switched_after + 2) + 64 * 1024 * 8, (size, switched_after)
    assert not lab.curl("slow.example", timeout=3.0).ok, "new connections are blocked"
    controller.process.send_signal(signal.SIGTERM)
    log = controller.process.communicate(timeout=60)[1]
    assert "schedule: rule slow is now block" in log
