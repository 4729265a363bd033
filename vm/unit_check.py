"""deploy/sluice.service under a real systemd, in a VM guest booted by vm/run-unit-check.

The unit is installed as the README says (the unit file, plus a drop-in
for ExecStart, as `systemctl edit` makes), here with the lab's edge
namespace as the service's network. Then systemd starts, reloads, kills
and stops it while real clients cross the edge. Writes a JSON report,
unit-check.json, into the directory given.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from controller.lab import Lab  # noqa: E402
from controller.metrics import DEFAULT_PORT  # noqa: E402
from controller.service import PIN_ROOT  # noqa: E402

UNITS = Path("/run/systemd/system")          # runtime units: the guest's /etc is read-only
POLICY = "version: 1\nrules:\n  - {name: blocker, action: block, domains: [blocked.example]}\n"
CAPABILITY_BITS = {"CAP_NET_ADMIN": 12, "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39}


class Report:
    def __init__(self):
        self.checks: list[dict] = []

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": what, "ok": bool(ok), "detail": detail})
        print(f"{'ok  ' if ok else 'FAIL'} {what} {detail}", flush=True)
        return ok


def systemctl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=300)


def main_pid() -> int:
    return int(systemctl("show", "-p", "MainPID", "--value", "sluice").stdout.strip() or 0)


def metric(lab, line_prefix: str) -> float | None:
    text = lab.run_in(lab.edge_ns, ["curl", "-s", "--max-time", "2",
                                    f"http://127.0.0.1:{DEFAULT_PORT}/metrics"]).stdout
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def unit_capabilities() -> int:
    unit = (REPO / "deploy" / "sluice.service").read_text()
    names = next(line.split("=", 1)[1].split() for line in unit.splitlines()
                 if line.startswith("CapabilityBoundingSet="))
    bounding = next(int(line.split()[1], 16) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("CapBnd:"))
    return sum(1 << CAPABILITY_BITS[name] for name in names) & bounding


def effective_capabilities(pid: int) -> int:
    return next(int(line.split()[1], 16) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("CapEff:"))


def run_checks(lab, report: Report) -> None:
    policy = Path("/run/sluice-check/policy.yaml")
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(POLICY)
    UNITS.mkdir(parents=True, exist_ok=True)
    (UNITS / "sluice.service").write_text((REPO / "deploy" / "sluice.service").read_text())
    dropin = UNITS / "sluice.service.d"
    dropin.mkdir(exist_ok=True)
    (dropin / "lab.conf").write_text(
        "[Service]\nExecStart=\n"
        f"ExecStart={REPO}/.venv/bin/sluice run --policy {policy} "
        f"--iface {lab.edge_client_iface} --iface {lab.edge_server_iface}\n"
        # The service's network is the lab's edge; on a real box it is the host's.
        f"NetworkNamespacePath=/run/netns/{lab.edge_ns}\n"
        # ProtectHome would hide a checkout under /root or /home; a real
        # install lives in /opt/sluice.
        + ("ProtectHome=read-only\n" if str(REPO).startswith(("/root", "/home")) else ""))
    systemctl("daemon-reload")
    started = systemctl("start", "sluice")
    report.check("systemctl start sluice", started.returncode == 0, started.stderr.strip())
    serving = wait_for(lambda: metric(lab, "sluice_policy_loaded_timestamp_seconds") is not None, 240)
    report.check("the service serves metrics", serving,
                 systemctl("status", "--no-pager", "-l", "sluice").stdout[-2000:] if not serving else "")
    if not serving:
        return
    pid = main_pid()
    report.check("it runs with exactly the unit's capabilities",
                 effective_capabilities(pid) == unit_capabilities(),
                 f"CapEff {effective_capabilities(pid):#x}, unit {unit_capabilities():#x}")
    report.check("a named flow is blocked", not lab.curl("blocked.example", timeout=1).ok)
    report.check("an unnamed flow passes", lab.curl("open.example", timeout=3).ok)

    reloaded = systemctl("reload", "sluice")
    report.check("systemctl reload re-reads the policy",
                 reloaded.returncode == 0 and wait_for(
                     lambda: metric(lab, 'sluice_policy_reloads_total{result="success"}') == 1.0, 60),
                 reloaded.stderr.strip())

    journal = subprocess.run(["journalctl", "-u", "sluice", "-o", "cat", "--no-pager"],
                             capture_output=True, text=True).stdout
    report.check("journald keeps its key=value log lines",
                 any(line.startswith("ts=") and "level=INFO" in line and "enforcing" in line
                     for line in journal.splitlines()), journal[-1000:])

    subprocess.run(["kill", "-KILL", str(pid)])
    report.check("after SIGKILL the pinned data plane keeps enforcing",
                 not lab.curl("blocked.example", timeout=1).ok)
    restarted = wait_for(lambda: main_pid() not in (0, pid), 30)
    report.check("systemd restarts it (Restart=on-failure)", restarted)
    report.check("the restarted controller takes over the pinned state",
                 wait_for(lambda: metric(lab, "sluice_policy_loaded_timestamp_seconds") is not None, 240)
                 and not lab.curl("blocked.example", timeout=1).ok)

    stopped = systemctl("stop", "sluice")
    report.check("systemctl stop detaches and unpins",
                 stopped.returncode == 0 and not PIN_ROOT.exists() and lab.curl("blocked.example", timeout=3).ok,
                 stopped.stderr.strip())
    result = systemctl("show", "-p", "Result", "--value", "sluice").stdout.strip()
    report.check("the stop was clean", result == "success", f"Result={result}")


def main() -> int:
    out = Path(sys.argv[1])
    report = Report()
    uname = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    systemd = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    try:
        with Lab() as lab:
            run_checks(lab, report)
    finally:
        systemctl("stop", "sluice")
        (out / "unit-check.json").write_text(json.dumps(
            {"kernel": uname, "systemd": systemd, "checks": report.checks}, indent=1))
    return 0 if report.checks and all(c["ok"] for c in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
