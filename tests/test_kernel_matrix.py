"""The Debian 6.1 leg of the kernel matrix, on every run of the suite.

This machine's kernel may lack sch_fq, so shape and delay would only ever be
skipped here; vm/run-matrix boots Debian's 6.1, which has it, under qemu and
runs a lean selection there (vm/README.md). Under TCG on two cores it takes
about 15 minutes (26 on a busy machine): deselect it with -m "not vm".
"""

import os
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
JUNIT = REPO / "vm" / "results" / "6.1.xml"
# Each module compiles its own data plane, about a minute under TCG, so few
# modules: shape and delay (one compile each); the parsing tests, which run
# every XDP stage (TLS, HTTP, match) on 85 kinds of frame with
# BPF_PROG_TEST_RUN; and the ABI test, which checks the structs against this
# kernel's BTF; the reassembly tests, which run the stream stage (its
# bpf_probe_read_kernel copies) on split ClientHellos; and the pacer's tests,
# which run the tc program by BPF_PROG_TEST_RUN. Not test_bpf_throttle.py:
# one of its tests takes 7 minutes.
SELECTION = ["tests/test_e2e_shape.py", "tests/test_bpf_parsing.py", "tests/test_bpf_reassembly.py",
             "tests/test_abi.py", "tests/test_bpf_shape.py"]
MUST_PASS = {"test_shaped_download_keeps_to_the_rate_by_delaying_not_dropping",
             "test_delay_adds_its_latency_to_each_exchange"}
LEG_TIMEOUT = 2400      # run-matrix kills the VM after this (a loaded run took 26 min)
INSTALL_TIMEOUT = 900   # first run: qemu, virtme-ng and the 6.1 image


def debian_release() -> str:
    os_release = Path("/etc/os-release")
    fields = dict(line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line)
    return fields.get("VERSION_CODENAME", "").strip('"')


pytestmark = [
    pytest.mark.vm,
    # vm/run-matrix sets it in every leg: a leg must not start another.
    pytest.mark.skipif("SLUICE_MATRIX_LEG" in os.environ, reason="already inside a kernel-matrix leg"),
    pytest.mark.skipif(os.geteuid() != 0, reason="vm/run-matrix installs packages and needs root"),
    pytest.mark.skipif(debian_release() != "bookworm", reason="vm/run-matrix boots Debian bookworm's kernels"),
]


def outcomes(junit: Path) -> dict[str, str]:
    """Each test case's name (with its parameters) and passed, failed or skipped."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        status = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        result[case.get("name")] = status
    return result


def test_debian_6_1_leg_shapes_and_delays_with_fq():
    command = ["vm/run-matrix", "--kernels", "6.1", "--timeout", str(LEG_TIMEOUT),
               "--pytest-args", shlex.join(SELECTION)]
    JUNIT.unlink(missing_ok=True)   # never judge an earlier run's report
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                         timeout=LEG_TIMEOUT + INSTALL_TIMEOUT)
    tail = "\n".join((run.stdout + run.stderr).splitlines()[-40:])
    assert JUNIT.exists(), f"no JUnit report from the 6.1 leg:\n{tail}"
    results = outcomes(JUNIT)
    failed = sorted(name for name, status in results.items() if status == "failed")
    assert not failed, f"failed on 6.1: {failed} (vm/results/6.1.log)\n{tail}"
    not_passed = {name: results.get(name, "not run") for name in MUST_PASS if results.get(name) != "passed"}
    assert not not_passed, f"shaping was not tested on 6.1: {not_passed}"
    assert run.returncode == 0, tail
