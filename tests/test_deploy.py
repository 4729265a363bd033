"""The systemd unit is one systemd accepts, and grants only the capabilities sluice needs."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port
from sluice.lab import Lab
from sluice.service import PIN_ROOT

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "sluice.service"


def unit_settings() -> dict[str, str]:
    return dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                if line and not line.startswith("#") and "=" in line)


def run_exec_start_pre() -> None:
    """Do what systemd does before ExecStart: the unit's ExecStartPre, as root ("+")."""
    command = unit_settings()["ExecStartPre"]
    assert command.startswith("+"), "bpffs must be mounted with full privileges, not the unit's"
    subprocess.run(shlex.split(command.removeprefix("+")), check=True, timeout=30)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies(tmp_path):
    sluice = Path(sys.executable).parent / "sluice"
    unit = tmp_path / "sluice.service"
    unit.write_text(UNIT.read_text().replace("/opt/sluice/.venv/bin/sluice", str(sluice)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_unit_grants_only_the_needed_capabilities():
    lines = unit_settings()
    needed = {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE"}
    assert set(lines["CapabilityBoundingSet"].split()) == needed
    assert set(lines["AmbientCapabilities"].split()) == needed
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"


CAPABILITY_BITS = {"CAP_NET_ADMIN": 12, "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39}


def capability_mask(line_prefix: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(line_prefix):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {line_prefix} in /proc/{pid}/status")


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and XDP need root")
def test_the_controller_does_its_job_with_only_the_units_capabilities(tmp_path):
    """`sluice run` confined as the unit confines it: the bounding set it names and nothing else.

    systemd is not PID 1 on the test machine, so setpriv applies the unit's
    CapabilityBoundingSet; the controller then loads, attaches, blocks,
    reloads on SIGHUP and unpins on SIGTERM with it."""
    names = unit_settings()["CapabilityBoundingSet"].split()
    setpriv_caps = ",".join(["-all"] + ["+" + name.removeprefix("CAP_").lower() for name in names])
    # Whatever this machine withholds from root (a sandbox may keep back
    # CAP_SYS_RESOURCE) cannot be granted to the child either.
    expected = sum(1 << CAPABILITY_BITS[name] for name in names) & capability_mask("CapBnd:")
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - {name: blocker, action: block, domains: [blocked.example]}\n")
    port = free_port()
    run_exec_start_pre()
    with Lab() as lab:
        controller = subprocess.Popen(
            # nsenter changes only the network namespace, as the unit's
            # NetworkNamespacePath= would; `ip netns exec` would also
            # remount /sys, and bpffs with it, which takes CAP_SYS_ADMIN.
            ["nsenter", f"--net=/run/netns/{lab.edge_ns}",
             "setpriv", "--bounding-set", setpriv_caps, "--inh-caps", "-all", "--",
             str(Path(sys.executable).parent / "sluice"), "run", "--policy", str(policy),
             "--iface", lab.edge_client_iface, "--iface", lab.edge_server_iface, "--metrics-port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def metrics() -> str:
                return lab.run_in(lab.edge_ns, ["curl", "-s", f"http://127.0.0.1:{port}/metrics"]).stdout

            deadline = time.monotonic() + 60
            while "sluice_policy_loaded_timestamp_seconds" not in metrics():
                assert controller.poll() is None, controller.stderr.read()
                assert time.monotonic() < deadline, "the confined controller never served metrics"
                time.sleep(0.3)
            assert capability_mask("CapEff:", controller.pid) == expected
            assert not lab.curl("blocked.example", timeout=1).ok
            assert lab.curl("open.example", timeout=2).ok
            controller.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 120       # a reload compiles the data plane: 30 s at load 10
            while 'sluice_policy_reloads_total{result="success"} 1.0' not in metrics():
                assert time.monotonic() < deadline, "the confined controller did not reload"
                time.sleep(0.3)
            controller.send_signal(signal.SIGTERM)
            assert controller.wait(timeout=30) == 0, controller.stderr.read()
            assert lab.curl("blocked.example", timeout=2).ok, "stopping detaches"
            assert not PIN_ROOT.exists(), "stopping unpins"
        finally:
            if controller.poll() is None:
                controller.kill()
                controller.wait()
                subprocess.run([sys.executable, "-m", "sluice", "stop"], capture_output=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")
def test_the_units_start_step_mounts_bpffs_where_nothing_did():
    """On a host whose init mounts no bpffs, ExecStartPre mounts it before the controller starts."""
    command = unit_settings()["ExecStartPre"].removeprefix("+")
    script = f"while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf; done; {command}; " \
             "stat -f -c %T /sys/fs/bpf"
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "bpf_fs"
