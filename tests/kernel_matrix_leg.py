"""The Debian 6.1 leg of the kernel matrix, started in the background.

The leg boots Debian's 6.1 under qemu (TCG here: see vm/README.md) and runs a
selection of the suite there: about 20 minutes, mostly one emulated CPU's
work. Run after the rest of the suite, it made the whole run 55 minutes (CI,
2026-12-01); started when collection ends (conftest.py), it runs beside the
host's tests, and tests/test_kernel_matrix.py, ordered last, only waits for it
and judges its report. Beside them, `ip netns exec` and curl's start in the
guest took over 5 s once, so the lab bounds a hung transfer generously
(controller/lab.py) and judges rates by curl's own clock.
"""

import os
import shlex
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "vm" / "results"
JUNIT = RESULTS / "6.1.xml"
OUTPUT = RESULTS / "6.1-run-matrix.out"
# Each data plane is compiled in the guest, 3-12 minutes under TCG since the
# tunnel, receiver-model and playbook code (bcc's compile took 1.7x longer on
# the host too), so few compiles: shape and delay (fq is what 6.1 has and this
# kernel lacks; one compile each, and they load every stage through 6.1's
# verifier), the parsing tests, which run every XDP stage on 85 kinds of frame
# with BPF_PROG_TEST_RUN, and the ABI test against 6.1's BTF. The decoy
# tests reuse the parsing tests' XDP compile (program.compiled) and load one
# data plane more: they are where helpers that differ by kernel judge the
# client's segments (bpf_csum_diff's sum, which 6.1 returns unfolded, let
# bad-checksum decoys through there and not here). The reassembly and pacer
# modules ran here too until a leg took over 40 minutes; they run on this
# kernel in every suite.
SELECTION = ["tests/test_e2e_shape.py", "tests/test_bpf_parsing.py", "tests/test_abi.py",
             "tests/test_bpf_evasion.py::test_a_decoy_the_server_drops_does_not_name_the_flow",
             "tests/test_bpf_evasion.py::test_a_decoy_in_the_syn_is_read_again_from_the_resend"]
LEG_TIMEOUT = 3000      # run-matrix kills the VM after this (it runs beside the host's tests)
INSTALL_TIMEOUT = 900   # first run: qemu, virtme-ng and the 6.1 image


def debian_release() -> str:
    os_release = Path("/etc/os-release")
    fields = dict(line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line)
    return fields.get("VERSION_CODENAME", "").strip('"')


def why_not() -> str | None:
    """Why the leg cannot run here, or None."""
    if "SLUICE_MATRIX_LEG" in os.environ:
        return "already inside a kernel-matrix leg"     # vm/run-matrix sets it: a leg must not start another
    if os.geteuid() != 0:
        return "vm/run-matrix installs packages and needs root"
    if debian_release() != "bookworm":
        return "vm/run-matrix boots Debian bookworm's kernels"
    return None


def start() -> subprocess.Popen:
    """Start vm/run-matrix for the 6.1 leg; its output goes to OUTPUT."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    JUNIT.unlink(missing_ok=True)   # never judge an earlier run's report
    command = ["vm/run-matrix", "--kernels", "6.1", "--timeout", str(LEG_TIMEOUT),
               "--pytest-args", shlex.join(SELECTION)]
    with OUTPUT.open("w") as output:
        # Its own session: stop() ends qemu and every helper with it.
        return subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait(leg: subprocess.Popen) -> int:
    """The leg's exit status; it is stopped if it outlives its own timeouts."""
    try:
        return leg.wait(timeout=LEG_TIMEOUT + INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(leg)
        raise


def stop(leg: subprocess.Popen) -> None:
    if leg.poll() is None:
        os.killpg(leg.pid, signal.SIGTERM)
        try:
            leg.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(leg.pid, signal.SIGKILL)
            leg.wait()


def output_tail(lines: int = 40) -> str:
    return "\n".join(OUTPUT.read_text(errors="replace").splitlines()[-lines:]) if OUTPUT.exists() else ""
