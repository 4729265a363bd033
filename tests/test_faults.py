"""Fault injection: bad input to every subcommand, and faults under a live controller.

Each bad input must end in exactly one line on stderr (no traceback), the
documented exit status (2 bad input, 1 a missing privilege or environment)
and nothing left behind: no pin root, no state file, no namespace. A live
controller in the lab must survive every refused reload and keep blocking;
a second controller on the same pin root is refused; a killed lab is
cleaned up by `sluice stop`.
"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port
from sluice import hooks
from sluice.lab import Lab
from sluice.service import PIN_ROOT, STATE_FILE
from test_deploy import unit_settings
from test_service import BLOCK_ONE, BLOCK_TWO, SLUICE, Controller, reloads

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, bpffs and XDP need root")

REPO = Path(__file__).resolve().parent.parent
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
TYPO_NETNS = f"sluice-typo-{os.getpid()}"
LINKTYPE_UNSUPPORTED = 147          # a "user" DLT: nothing replay can turn into Ethernet


def sluice(*argv, prefix=(), timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *SLUICE, *map(str, argv)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def netns_names() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def assert_refused(result: subprocess.CompletedProcess, status: int, *words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert result.returncode == status, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def assert_nothing_left() -> None:
    assert not PIN_ROOT.exists(), f"{PIN_ROOT} left behind"
    assert not STATE_FILE.exists(), f"{STATE_FILE} left behind"
    assert TYPO_NETNS not in netns_names(), "a namespace was created"


def pcap(linktype: int, frames=(b"\x00" * 60,)) -> bytes:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    return header + b"".join(struct.pack("<IIII", 0, 0, len(f), len(f)) + f for f in frames)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    files = {
        "good": BLOCK_ONE.encode(),
        "not_utf8": b"version: 1\nrules:\n  - {name: caf\xe9, action: block, domains: [blocked.example]}\n",
        "nul": b"version: 1\nrules:\x00\n",
        "binary": Path("/bin/true").read_bytes()[:4096],
        "domains_not_utf8": b"version: 1\nrules:\n  - {name: feed, action: block, domains_file: feed.txt}\n",
        "feed.txt": b"blocked.example\nbad\xff.example\n",
        "capture_147": pcap(LINKTYPE_UNSUPPORTED),
        "capture_ethernet": pcap(1),
        "not_a_capture": b"this is not a capture\n" * 4,
    }
    paths = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        paths[name] = d / name
    paths["missing"] = d / "missing.yaml"
    os.mkfifo(d / "fifo")
    paths["fifo"] = d / "fifo"
    paths["dev_zero"] = Path("/dev/zero")
    paths["directory"] = d
    return paths


# (bad policy, the words its one line must hold)
BAD_POLICIES = [
    ("not_utf8", ("not_utf8:3:", "not UTF-8")),
    ("nul", ("nul:2:", "NUL byte")),
    ("binary", ("binary:", "cannot read the policy")),
    ("missing", ("missing.yaml", "No such file")),
    ("domains_not_utf8", ("feed.txt:2:4", "not UTF-8")),
    ("dev_zero", ("/dev/zero", "not a regular file")),
    ("fifo", ("fifo", "not a regular file")),
    ("directory", ("cannot read the policy: a directory",)),
]


def policy_commands(policy: Path, inputs) -> list[list]:
    return [["validate", policy],
            ["explain", "--policy", policy, "--client", "192.0.2.2", "--name", "blocked.example"],
            ["replay", "--policy", policy, inputs["capture_ethernet"]],
            ["run", "--policy", policy, "--iface", "lo", "--metrics-port", free_port()],
            ["demo", "--policy", policy, "--metrics-port", free_port()]]


@pytest.mark.parametrize("name,words", BAD_POLICIES, ids=[name for name, _ in BAD_POLICIES])
def test_a_bad_policy_is_one_line_and_exit_2_in_every_subcommand(inputs, name, words):
    for argv in policy_commands(inputs[name], inputs):
        result = sluice(*argv)
        assert_refused(result, 2, *words)
        assert_nothing_left()


def test_input_files_are_size_bounded_and_the_bound_can_be_raised(inputs):
    assert_refused(sluice("--max-input-size", "16B", "validate", inputs["good"]), 2, "at most 16",
                   "--max-input-size")
    assert sluice("--max-input-size", "1KiB", "validate", inputs["good"]).returncode == 0
    env = {**os.environ, "SLUICE_MAX_INPUT_BYTES": "16"}
    assert_refused(sluice("validate", inputs["good"], env=env), 2, "at most 16")

def test_a_reader_that_goes_away_ends_the_output_quietly(inputs):
    """`sluice validate policy.yaml | head -0`: no traceback, no complaint."""
    process = subprocess.Popen([*SLUICE, "validate", str(inputs["good"])], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()          # before the child writes its first line
    stderr = process.communicate(timeout=120)[1]
    assert stderr == "", stderr



@pytest.mark.parametrize("argv,words", [
    (["--client", "fe80::1%eth0", "--name", "blocked.example"], ("no zone",)),
    (["--client", "192.0.2.300", "--name", "blocked.example"], ("192.0.2.300",)),
    (["--client", "192.0.2.2", "--name", "blocked.example", "--port", "70000"], ("70000", "out of range")),
    (["--client", "192.0.2.2", "--name", "blocked.example", "--port", "-5"], ("-5", "out of range")),
    (["--client", "192.0.2.2", "--name", ""], ("empty domain name",)),
    (["--client", "192.0.2.2", "--name", "bad..example"], ("empty label",)),
    (["--client", "192.0.2.2", "--name", "*.example"], ("wildcard",)),
    (["--client", "192.0.2.2", "--server", "198.51.100.300"], ("198.51.100.300",)),
    (["--client", "192.0.2.2", "--protocol", "http", "--ech"], ("ClientHello",)),
    (["--client", "192.0.2.2", "--protocol", "other", "--name", "ssh.example"], ("no name", "other")),
], ids=["zone", "bad-address", "port-70000", "port-negative", "empty-name", "empty-label", "wildcard", "bad-server",
        "ech-over-http", "name-of-other"])
def test_explain_checks_its_arguments_as_policies_do(inputs, argv, words):
    assert_refused(sluice("explain", "--policy", inputs["good"], *argv), 2, *words)


@pytest.mark.parametrize("capture,words", [
    ("capture_147", ("link type 147",)),
    ("not_a_capture", ("not a pcap",)),
    ("missing", ("No such file",)),
], ids=["linktype-147", "not-a-capture", "missing"])
def test_replay_refuses_what_it_cannot_read(inputs, capture, words):
    assert_refused(sluice("replay", inputs[capture]), 2, *words)


def test_run_refuses_bad_arguments_before_touching_anything(inputs):
    good = inputs["good"]
    cases = [
        (["--netns", TYPO_NETNS, "--iface", "eth0"], 2, ("no network namespace", TYPO_NETNS)),
        (["--iface", "nosuch0"], 2, ("no interface named 'nosuch0'",)),
        (["--iface", "lo", "--iface", "lo"], 2, ("lo given more than once",)),
        # With tcx, a link holds the classifier at tc ingress, and --fail-open with it.
        *([] if hooks.tcx_available() else
          [(["--iface", "lo", "--hook", "tc", "--fail-open"], 2, ("--fail-open cannot hold at --hook tc",))]),
        (["--iface", "lo", "--metrics-port", "70000"], 2, ("70000", "out of range")),
        (["--iface", "lo", "--metrics-address", "192.0.2.99", "--metrics-port", free_port()], 1,
         ("cannot serve metrics", "192.0.2.99")),
    ]
    for argv, status, words in cases:
        assert_refused(sluice("run", "--policy", good, *argv), status, *words)
        assert_nothing_left()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_refused(sluice("run", "--policy", good, "--iface", "lo", "--metrics-port", port), 1,
                       "cannot serve metrics", str(port))
    assert_nothing_left()


@pytest.mark.parametrize("argv", [["stop"], ["run", "--policy", "{good}", "--iface", "lo"],
                                  ["replay", "{capture_ethernet}"], ["demo"]],
                         ids=["stop", "run", "replay", "demo"])
def test_an_unprivileged_user_gets_one_line_naming_what_is_missing(inputs, argv):
    # The user must be able to run this checkout's sluice at all: a clone in a
    # 0700 directory (mktemp -d) is not even readable by nobody.
    runnable = subprocess.run([*NOBODY, *SLUICE, "--help"], capture_output=True, text=True, timeout=60)
    if runnable.returncode != 0:
        pytest.skip(f"nobody cannot run this checkout: {runnable.stderr.strip().splitlines()[-1:]}")
    argv = [str(arg).format(**{k: str(v) for k, v in inputs.items()}) for arg in argv]
    result = sluice(*argv, prefix=NOBODY)
    assert_refused(result, 1)
    assert "CAP_" in result.stderr or "root" in result.stderr
    assert_nothing_left()


def test_a_pin_root_owned_by_another_user_is_refused(inputs):
    PIN_ROOT.mkdir(mode=0o700)
    try:
        os.chown(PIN_ROOT, 65534, 65534)
        result = sluice("run", "--policy", inputs["good"], "--iface", "lo", "--metrics-port", free_port())
        assert_refused(result, 1, str(PIN_ROOT), "uid 65534")
        assert list(PIN_ROOT.iterdir()) == [], "nothing was pinned in it"
    finally:
        PIN_ROOT.rmdir()


def test_without_bpffs_the_confined_controller_says_how_to_mount_it(inputs):
    """/sys/fs/bpf covered (a private mount namespace, tmpfs on top) and no
    CAP_SYS_ADMIN to mount bpffs, as under the unit: one line, exit 1."""
    names = unit_settings()["CapabilityBoundingSet"].split()
    caps = ",".join(["-all"] + ["+" + name.removeprefix("CAP_").lower() for name in names])
    command = " ".join([*SLUICE, "run", "--policy", str(inputs["good"]), "--iface", "lo",
                        "--metrics-port", str(free_port())])
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs /sys/fs/bpf && exec setpriv --bounding-set {caps} --inh-caps -all -- {command}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_refused(result, 1, "mount -t bpf bpf /sys/fs/bpf", "sys-fs-bpf.mount")
    assert_nothing_left()


# --- a live controller --------------------------------------------------------

@pytest.fixture(scope="module")
def lab():
    with Lab() as built:
        yield built
    sluice("stop", timeout=60)


def stop(controller) -> str:
    """SIGTERM the controller; its stderr."""
    controller.process.send_signal(signal.SIGTERM)
    assert controller.process.wait(timeout=30) == 0
    return controller.process.stderr.read()


def blocks(lab) -> bool:
    return not lab.curl("blocked.example", timeout=1).ok


def test_no_reload_fault_kills_the_controller(lab, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_ONE)
    controller = Controller(lab, policy)
    assert controller.metric("sluice_datapath_healthy") == 1.0
    policy.write_bytes(BLOCK_ONE.replace("blocker", "bl\xf6cker").encode("latin-1"))
    controller.wait_for('sluice_policy_reloads_total{result="failure"}', 1.0)
    assert controller.process.poll() is None and blocks(lab)
    status = json.loads(sluice("status", "--json").stdout)
    assert "not UTF-8" in status["reloads"][-1]["detail"]

    policy.write_text(BLOCK_TWO)
    controller.wait_for('sluice_policy_reloads_total{result="success"}', 1.0)
    assert not lab.curl("exact.example", timeout=1).ok

    policy.unlink()
    time.sleep(3)                        # the watcher sees it gone, more than once
    controller.process.send_signal(signal.SIGHUP)
    controller.wait_for('sluice_policy_reloads_total{result="failure"}', 2.0)
    assert controller.process.poll() is None and blocks(lab)
    assert not lab.curl("exact.example", timeout=1).ok, "the running policy stays in force"

    policy.write_text(BLOCK_TWO)         # back, as it was: nothing to reload
    time.sleep(3)
    os.utime(policy)                     # a touch changes no content
    time.sleep(3)
    assert reloads(controller, "success") == 1.0
    stderr = stop(controller)
    assert stderr.count("is gone") == 1, "a missing file is reported once, not every second"
    assert "Traceback" not in stderr


def atomic_write(directory: Path, name: str, text: str, version: int) -> None:
    """What the kubelet's atomic writer does to a ConfigMap volume: the file is
    a symlink through ..data, itself a symlink swapped by rename to a new
    timestamped directory; the old directory is then removed."""
    new = directory / f"..2026_12_01_00_00_0{version}"
    new.mkdir()
    (new / name).write_text(text)
    (directory / "..data_tmp").symlink_to(new.name)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.rename(directory / "..data_tmp", directory / "..data")
    if not (directory / name).is_symlink():
        (directory / name).symlink_to(f"..data/{name}")
    if old:
        for leftover in (directory / old).iterdir():
            leftover.unlink()
        (directory / old).rmdir()


def test_a_configmap_swap_reloads_exactly_once(lab, tmp_path):
    atomic_write(tmp_path, "policy.yaml", BLOCK_ONE, 1)
    controller = Controller(lab, tmp_path / "policy.yaml")
    atomic_write(tmp_path, "policy.yaml", BLOCK_TWO, 2)
    controller.wait_for('sluice_policy_reloads_total{result="success"}', 1.0)
    assert not lab.curl("exact.example", timeout=1).ok
    atomic_write(tmp_path, "policy.yaml", BLOCK_TWO, 3)     # new directory, same content
    time.sleep(4)
    assert reloads(controller, "success") == 1.0
    assert reloads(controller, "failure") == 0.0
    stop(controller)


def test_the_controller_repairs_removed_pins_and_exits_on_a_detached_link(lab, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_ONE)
    controller = Controller(lab, policy)
    # auto's hook on the lab's veths: tc ingress with its own program array (kernels with tcx), or generic XDP.
    at_tc = hooks.choose("cli0", lab.edge_ns, "auto").hook == "tc"
    stages, link = PIN_ROOT / ("tc_stages" if at_tc else "stages"), PIN_ROOT / "links" / f"{lab.edge_ns}-cli0"
    stages.unlink()
    link.unlink()
    deadline = time.monotonic() + 15
    while not (stages.exists() and link.exists()):
        assert time.monotonic() < deadline, "the removed pins were not pinned again"
        time.sleep(0.3)
    assert controller.metric("sluice_datapath_healthy") == 1.0
    assert blocks(lab)

    link_id = json.loads(subprocess.run(["bpftool", "-j", "link", "show", "pinned", str(link)],
                                        capture_output=True, text=True, check=True).stdout)["id"]
    subprocess.run(["bpftool", "link", "detach", "id", str(link_id)], check=True, capture_output=True)
    assert controller.process.wait(timeout=15) == 1, "a detached link ends the controller loudly"
    assert "hook on cli0 was detached" in controller.process.stderr.read()
    assert_nothing_left()


def test_one_controller_per_pin_root(lab, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_ONE)
    first = Controller(lab, policy)
    second = sluice("run", "--policy", policy, "--netns", lab.edge_ns, "--iface", "cli0", "--iface", "srv0",
                    "--metrics-port", free_port())
    assert_refused(second, 1, f"pid {first.process.pid}")
    assert first.process.poll() is None and blocks(lab)
    assert PIN_ROOT.stat().st_mode & 0o777 == 0o700 and PIN_ROOT.stat().st_uid == 0
    assert first.metric("sluice_datapath_healthy") == 1.0

    stopped = sluice("stop", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert first.process.wait(timeout=5) == 0, "stop signals the lock's holder and waits for it"
    assert not blocks(lab)
    assert_nothing_left()


def xdp_attached(lab, ifname) -> bool:
    return " xdp" in lab.run_in(lab.edge_ns, ["ip", "-o", "link", "show", ifname]).stdout


def test_a_start_that_fails_half_way_undoes_what_it_did(lab, tmp_path):
    """cli0 attaches and pins, then srv0 is refused (another program runs there):
    the start detaches cli0 and removes every pin before it exits. At XDP,
    which refuses an interface with another's program (tc ingress takes
    several in turn)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_ONE)
    other_env = {**os.environ, "SLUICE_PIN_ROOT": f"{PIN_ROOT}-other",
                 "SLUICE_STATE_FILE": str(tmp_path / "other.json")}
    other = subprocess.Popen([*SLUICE, "run", "--policy", str(policy), "--netns", lab.edge_ns, "--iface", "srv0",
                              "--hook", "generic", "--fail-open", "--metrics-port", str(free_port())],
                             cwd=REPO, env=other_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not xdp_attached(lab, "srv0"):
            assert other.poll() is None and time.monotonic() < deadline, "the other program never attached"
            time.sleep(0.3)
        result = sluice("run", "--policy", policy, "--netns", lab.edge_ns, "--iface", "cli0", "--iface", "srv0",
                        "--hook", "generic", "--metrics-port", free_port())
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "srv0 already has an XDP program" in result.stderr.strip().splitlines()[-1]
        assert not xdp_attached(lab, "cli0"), "cli0 was left attached"
        assert_nothing_left()
    finally:
        other.send_signal(signal.SIGTERM)
        other.wait(timeout=30)


def test_two_controllers_started_at_once_one_wins(lab, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_ONE)
    ports = [free_port(), free_port()]
    both = [subprocess.Popen([*SLUICE, "run", "--policy", str(policy), "--netns", lab.edge_ns, "--iface", "cli0",
                              "--iface", "srv0", "--metrics-port", str(port)],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for port in ports]
    try:
        deadline = time.monotonic() + 90
        while all(process.poll() is None for process in both):
            assert time.monotonic() < deadline, "neither controller was refused"
            time.sleep(0.2)
        loser = next(process for process in both if process.poll() is not None)
        winner = next(process for process in both if process is not loser)
        assert loser.returncode == 1
        assert f"pid {winner.pid}" in loser.stderr.read()
        deadline = time.monotonic() + 90
        while not blocks(lab):
            assert winner.poll() is None, winner.stderr.read()
            assert time.monotonic() < deadline, "the winner never blocked"
            time.sleep(0.2)
        port = ports[both.index(winner)]
        winner_metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
        assert b"sluice_datapath_healthy 1.0" in winner_metrics
        winner.send_signal(signal.SIGTERM)
        assert winner.wait(timeout=30) == 0
    finally:
        for process in both:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert_nothing_left()


def test_stop_after_a_killed_controllers_namespace_is_gone_removes_its_pins(lab, tmp_path):
    """A controller killed (its pins keep enforcing) on the interfaces of a
    namespace deleted since: the interfaces and their hooks went with it,
    and `sluice stop` removes what is left, without an error."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_ONE)
    with Lab() as gone:
        controller = Controller(gone, policy)
        controller.process.kill()
        controller.process.wait(timeout=10)
        assert PIN_ROOT.exists()
    stopped = sluice("stop", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert_nothing_left()


def test_stop_cleans_up_a_killed_lab_and_only_a_dead_ones(lab):
    port = free_port()
    process = subprocess.Popen([*SLUICE, "run", "--metrics-port", str(port)], cwd=REPO,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in process.stdout:
            if "lab running" in line:
                break
        else:
            raise AssertionError("the lab never came up")
        namespaces = {name for name in netns_names() if f"-{process.pid}-" in name}
        workdirs = list(Path("/tmp").glob(f"sluice-lab-{process.pid}-*"))
        assert len(namespaces) == 4 and len(workdirs) == 1
        assert workdirs[0].stat().st_mode & 0o777 == 0o700, "the lab CA's key is for root only"
        assert (workdirs[0] / "ca.key").exists()
    finally:
        process.kill()
    # Not waited for: its zombie, as a controller is right after a kill, runs
    # no lab, and `sluice stop` then cleans up.
    try:
        assert sluice("stop", timeout=60).returncode == 0
    finally:
        process.wait()
    assert not {name for name in netns_names() if f"-{process.pid}-" in name}
    assert not list(Path("/tmp").glob(f"sluice-lab-{process.pid}-*"))
    assert subprocess.run(["pgrep", "-f", str(workdirs[0])], capture_output=True).returncode == 1, \
        "its nginx is gone"
    # The live lab of this module (its creator, this process, runs) is untouched.
    assert lab.edge_ns in netns_names() and lab.workdir.exists()
