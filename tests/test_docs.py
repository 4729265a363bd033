"""Every relative link in the project's Markdown leads somewhere that exists."""

import importlib.metadata
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def documents() -> list[Path]:
    return sorted(path for path in REPO.glob("**/*.md")
                  if not {".venv", ".git", "node_modules", ".pytest_cache"} & set(path.relative_to(REPO).parts))


def test_every_relative_link_resolves():
    broken = []
    for document in documents():
        text = re.sub(r"```.*?```", "", document.read_text(), flags=re.DOTALL)   # code is not a link
        for target in LINK.findall(text):
            if re.match(r"^(https?:|mailto:|#)", target):
                continue
            if not (document.parent / target.split("#")[0]).exists():
                broken.append(f"{document.relative_to(REPO)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_opens_with_the_two_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    commands = re.search(r"```sh\n(.*?)```", readme, re.DOTALL).group(1)
    assert "./setup.sh && .venv/bin/sluice demo" in commands
    assert "./setup.sh && .venv/bin/python -m pytest" in commands
    assert (REPO / ".ci/run").read_text().strip().endswith("./setup.sh && .venv/bin/python -m pytest")


def schema_keys(node) -> set[str]:
    """Every property name a policy may use, at any depth of the published schema."""
    keys = set()
    if isinstance(node, dict):
        keys |= set(node.get("properties", {}))
        for value in node.values():
            keys |= schema_keys(value)
    elif isinstance(node, list):
        for value in node:
            keys |= schema_keys(value)
    return keys


def test_the_policy_reference_documents_every_key_of_the_schema():
    """docs/policy.md and controller/policy.schema.json cannot drift apart: each key is named in the reference."""
    schema = json.loads((REPO / "controller" / "policy.schema.json").read_text())
    reference = (REPO / "docs" / "policy.md").read_text()
    missing = sorted(key for key in schema_keys(schema) if f"`{key}" not in reference and f"{key}:" not in reference)
    assert not missing, f"keys of the schema that docs/policy.md never names: {missing}"


def test_the_licence_is_the_gpl_2_that_the_package_carries_and_every_source_says_so():
    assert "GNU GENERAL PUBLIC LICENSE\n                       Version 2, June 1991" in (REPO / "LICENSE").read_text()
    # pyproject names no licence (see its comment): the installed package's metadata carries the file.
    assert importlib.metadata.metadata("sluice").get_all("License-File") == ["LICENSE"]
    sources = [*(REPO / "bpf").glob("*.[ch]"), *(REPO / "bpf").glob("*.py"), *(REPO / "controller").rglob("*.py"),
               *(REPO / "policies").glob("*.py")]
    unmarked = [str(path.relative_to(REPO)) for path in sources
                if "SPDX-License-Identifier: GPL-2.0-only" not in (path.read_text().splitlines() or [""])[0]]
    assert not unmarked, "no SPDX line first: " + ", ".join(unmarked)
