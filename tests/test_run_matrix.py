"""vm/run-matrix's own safeguards: the accelerator probe and the watchdog of a stuck leg.

A /dev/kvm that opens but never boots a guest made a leg wait out its whole
timeout once (30 minutes for "0 passed, 0 failed"); these run in seconds."""

import importlib.machinery
import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN_MATRIX = Path(__file__).resolve().parent.parent / "vm" / "run-matrix"


@pytest.fixture
def run_matrix():
    loader = importlib.machinery.SourceFileLoader("run_matrix", str(RUN_MATRIX))
    spec = importlib.util.spec_from_loader("run_matrix", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_a_leg_that_never_prints_is_stopped_as_never_booted(run_matrix, tmp_path, monkeypatch):
    monkeypatch.setattr(run_matrix, "FIRST_OUTPUT_TIMEOUT", 2)
    started = time.monotonic()
    problem = run_matrix.run_logged(["sleep", "600"], tmp_path / "leg.log", timeout=600, watch_silence=True)
    assert problem == "no output within 2 s of the start: the guest never booted"
    assert time.monotonic() - started < 30
    assert "stopped: no output within 2 s" in (tmp_path / "leg.log").read_text()


def test_a_leg_that_falls_silent_is_stopped_as_stuck(run_matrix, tmp_path, monkeypatch):
    monkeypatch.setattr(run_matrix, "SILENCE_TIMEOUT", 2)
    problem = run_matrix.run_logged(["sh", "-c", "echo booted; sleep 600"], tmp_path / "leg.log",
                                    timeout=600, watch_silence=True)
    assert problem == "no output for 2 s: the guest or its tests are stuck"
    assert (tmp_path / "leg.log").read_text().startswith("booted\n")


def test_a_leg_that_keeps_printing_runs_to_its_end(run_matrix, tmp_path, monkeypatch):
    monkeypatch.setattr(run_matrix, "FIRST_OUTPUT_TIMEOUT", 2)
    monkeypatch.setattr(run_matrix, "SILENCE_TIMEOUT", 2)
    problem = run_matrix.run_logged(["sh", "-c", "for i in 1 2 3 4; do echo .; sleep 1; done"],
                                    tmp_path / "leg.log", timeout=60, watch_silence=True)
    assert problem is None


def test_a_stopped_run_takes_its_guest_with_it(tmp_path):
    """The suite stops a leg it no longer waits for (tests/kernel_matrix_leg.py)
    with SIGTERM; the guest runs in a session of its own and must end too."""
    guest = f"sleep {600 + time.monotonic_ns() % 1000}.25"   # a command line no one else runs
    script = (f"import importlib.machinery, importlib.util\n"
              f"loader = importlib.machinery.SourceFileLoader('run_matrix', {str(RUN_MATRIX)!r})\n"
              f"module = importlib.util.module_from_spec(importlib.util.spec_from_loader('run_matrix', loader))\n"
              f"loader.exec_module(module)\n"
              f"module.exit_on_sigterm()\n"
              f"module.run_logged(['sh', '-c', 'echo booted; exec {guest}'], "
              f"module.Path({str(tmp_path / 'leg.log')!r}), timeout=600)\n")
    runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert runner.stdout.readline() == b"booted\n"
    assert subprocess.run(["pgrep", "-f", guest], capture_output=True).returncode == 0
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=30)
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", guest], capture_output=True).returncode == 1, "the guest outlived its run"


def test_kvm_is_chosen_only_if_a_kernel_really_boots_with_it(run_matrix, tmp_path):
    """Not a kernel: whatever /dev/kvm says, nothing boots, so the choice is TCG, with the reason.
    qemu is installed as run-matrix installs it: on a fresh machine this
    runs before the kernel matrix leg has put it there."""
    run_matrix.ensure_tools(run_matrix.Apt())
    not_a_kernel = tmp_path / "vmlinuz-none"
    not_a_kernel.write_bytes(b"\0" * 4096)
    choice = run_matrix.choose_accelerator(not_a_kernel, "auto")
    assert choice.name == "TCG"
    assert choice.vng_flags == ["--disable-kvm"]
    assert choice.reason.startswith("KVM unusable: "), choice.reason
    with pytest.raises(run_matrix.LegFailed):
        run_matrix.choose_accelerator(not_a_kernel, "kvm")
    assert run_matrix.choose_accelerator(not_a_kernel, "tcg").name == "TCG"
