"""The controller's modules import one way, abi -> policy -> datapath ->
egress/service -> demo -> cli: no cycle among them, each imports alone, and
`sluice validate` never loads bcc."""

import ast
import subprocess
import sys
import tomllib
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Each layer may import the ones before it, never one after it.
LAYERS = ["sluice.abi", "sluice.policy", "sluice.datapath", "sluice.service",
          "sluice.demo", "sluice.cli"]


def controller_modules() -> dict[str, Path]:
    """Every module of the installed packages (pyproject's list: bpf/ and
    policies/ install as sluice.bpf and sluice.policies), by name."""
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    modules = {}
    for package in packages:
        spec = find_spec(package)
        modules[package] = Path(spec.origin)
        for location in spec.submodule_search_locations:
            for path in Path(location).glob("*.py"):
                if path.name not in ("__init__.py", "__main__.py"):   # __main__ runs the CLI
                    modules[f"{package}.{path.stem}"] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The controller modules `name` imports anywhere in its file, functions
    included (a cycle through a lazy import is still a cycle), and the packages
    that importing them runs the __init__ of."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):    # the packages on the way run first
                ancestor = ".".join(parts[:depth])
                if ancestor in modules and not name.startswith(ancestor + ".") and ancestor != name:
                    found.add(ancestor)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = controller_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def reachable(graph, start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for target in graph[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_no_module_imports_itself_through_others(graph):
    cycles = sorted(f"{name} -> {target} -> ... -> {name}" for name in graph
                    for target in graph[name] if name in reachable(graph, target))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_layers_import_only_the_layers_below(graph):
    upward = [f"{lower} reaches {higher}" for i, lower in enumerate(LAYERS)
              for higher in LAYERS[i + 1:] if higher in reachable(graph, lower)]
    assert not upward, "\n".join(upward)


# Imported once before the forks below, so that each child pays only for
# controller's own modules (third-party import order is not what is tested).
THIRD_PARTY = ["bcc", "cryptography", "numpy", "prometheus_client", "pyroute2", "scapy.all", "yaml"]
IMPORT_EACH_IN_A_FORK = """
import importlib, os, sys, traceback
for library in sys.argv[2:]:
    importlib.import_module(library)
for name in sys.argv[1].split(","):
    child = os.fork()
    if child == 0:
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    print(name, os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), flush=True)
"""


def test_each_module_imports_alone():
    """`import sluice.X` works as the first import of a process, for every X."""
    names = sorted(controller_modules())
    result = subprocess.run([sys.executable, "-c", IMPORT_EACH_IN_A_FORK, ",".join(names), *THIRD_PARTY],
                            capture_output=True, text=True, timeout=300)
    statuses = dict(line.split() for line in result.stdout.splitlines())
    assert statuses == {name: "0" for name in names}, result.stdout + result.stderr


def test_validate_runs_without_bcc():
    """validate checks a policy on any machine: the handlers that load bcc import it lazily."""
    script = ("import sys\n"
              "from sluice.cli import main\n"
              "from sluice.policies import lab_policy_path\n"
              "status = main(['validate', lab_policy_path()])\n"
              "print(status, sorted(m for m in sys.modules if m.split('.')[0] == 'bcc'))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == "0 []", result.stdout + result.stderr
