"""The systemd unit is one systemd accepts, and grants only the capabilities sluice needs."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "sluice.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies(tmp_path):
    sluice = Path(sys.executable).parent / "sluice"
    unit = tmp_path / "sluice.service"
    unit.write_text(UNIT.read_text().replace("/opt/sluice/.venv/bin/sluice", str(sluice)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_unit_grants_only_the_needed_capabilities():
    lines = dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                 if line and not line.startswith("#") and "=" in line)
    needed = {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE"}
    assert set(lines["CapabilityBoundingSet"].split()) == needed
    assert set(lines["AmbientCapabilities"].split()) == needed
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
