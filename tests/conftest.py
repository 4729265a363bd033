"""Fixtures (a loaded data plane per policy, the lab) and pytest's hooks;
what modules import by name is in helpers.py."""

import os

# Controllers the tests start pin their state here, never where a deployed
# sluice on this machine keeps its own (set before sluice.service loads).
os.environ.setdefault("SLUICE_PIN_ROOT", f"/sys/fs/bpf/sluice-test-{os.getpid()}")
os.environ.setdefault("SLUICE_STATE_FILE", f"/run/sluice-test-{os.getpid()}/state.json")

import pytest
from hypothesis import settings

import kernel_matrix_leg
from sluice.datapath import Datapath
from sluice.lab import Lab
from sluice.policy import load_policy
from sluice.service import ensure_bpffs


@pytest.fixture(scope="session", autouse=True)
def bpffs():
    """bpffs at /sys/fs/bpf, mounted as `sluice run` mounts it: a fresh boot
    has none, and tests pin links and maps there themselves."""
    ensure_bpffs()


# No per-example deadline: this machine is shared and noisy, and time is a
# benchmark's business (bench/), never a test's. A slow example is not a wrong one.
settings.register_profile("sluice", deadline=None)
settings.load_profile("sluice")


KERNEL_MATRIX_TESTS = "tests/test_kernel_matrix.py"


@pytest.fixture(scope="module")
def make_datapath(tmp_path_factory):
    """make_datapath(policy_yaml) -> a loaded Datapath, closed when the module ends."""
    loaded = []

    def make(policy_yaml: str, **options) -> Datapath:
        path = tmp_path_factory.mktemp("policy") / "policy.yaml"
        path.write_text(policy_yaml)
        datapath = Datapath(load_policy(path), **options)
        loaded.append(datapath)
        return datapath
    yield make
    for datapath in loaded:
        datapath.close()


@pytest.fixture(scope="module")
def lab():
    """The lab's namespaces (controller/lab.py), shared by a module's tests;
    a module whose lab needs more servers defines its own."""
    with Lab() as built:
        yield built


def pytest_collection_modifyitems(config, items):
    """SLUICE_TEST_ORDER=reverse runs the modules last to first (tests/fresh_machine.sh
    does), so a module that leans on what an earlier one left behind shows up.
    The kernel-matrix test runs last in either order: it waits for its leg."""
    if os.environ.get("SLUICE_TEST_ORDER") == "reverse":
        modules: dict[str, list] = {}
        for item in items:
            modules.setdefault(item.nodeid.split("::")[0], []).append(item)
        items[:] = [item for module in reversed(modules) for item in modules[module]]
    items.sort(key=lambda item: item.nodeid.startswith(KERNEL_MATRIX_TESTS))


def pytest_collection_finish(session):
    """Start the kernel-matrix leg now, if its test is selected and can run, so
    that it runs beside the host's tests rather than after them."""
    selected = any(item.nodeid.startswith(KERNEL_MATRIX_TESTS) for item in session.items)
    if selected and not session.config.option.collectonly and kernel_matrix_leg.why_not() is None:
        session.config.kernel_matrix_leg = kernel_matrix_leg.start()


def pytest_unconfigure(config):
    """A run that ends early (-x, Ctrl-C) takes the leg's VM with it."""
    leg = getattr(config, "kernel_matrix_leg", None)
    if leg is not None:
        kernel_matrix_leg.stop(leg)
