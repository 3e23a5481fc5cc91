"""The package's import contracts (pyproject.toml ``[tool.importlinter]``, drawn in docs/development.md) hold, and
they can fail: a copy of the package with one forbidden import, lazy or not, breaks the contract that forbids it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = dict(re.findall(r'^id = "([\w-]+)"\nname = "([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"),
                            re.MULTILINE))
# (contract broken, {file of the package: code appended to it, or its whole text if it is new}): new probe modules
# where possible, so the cases do not depend on what the package's own modules import
VIOLATIONS = {
    "core imports the package root": ("core-alone", {"core/_probe.py": "def package():\n    import moee_plugins\n"}),
    "commands import the cli, lazily": ("layers", {"commands/_probe.py": "def cli():\n    from ..cli import main\n"}),
    "io imports an adapter": ("layers", {"io/_probe.py": "from ..ray import embed_dataset\n"}),
    "an adapter imports a sibling": ("layers", {"langchain.py": "\nfrom .llama_index import MoEEmbedding  # noqa: E402\n"}),
    "a circle inside one layer": ("no-circles", {"core/_probe_a.py": "from . import _probe_b\n",
                                                 "core/_probe_b.py": "def a():\n    from . import _probe_a\n"}),
}


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package found first from ``root`` (a fresh process, so it reads that copy)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", command, "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def status(output: str, contract: str) -> str:
    match = re.search(re.escape(CONTRACTS[contract]) + r"\s+(KEPT|BROKEN)", output)
    assert match, output
    return match.group(1)


def test_the_package_keeps_every_contract():
    assert set(CONTRACTS) == {"layers", "core-alone", "no-circles"}
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(status(result.stdout, contract) == "KEPT" for contract in CONTRACTS)


@pytest.mark.parametrize("case", VIOLATIONS)
def test_a_forbidden_import_breaks_its_contract(tmp_path, case):
    contract, additions = VIOLATIONS[case]
    shutil.copytree(ROOT / "moee_plugins", tmp_path / "moee_plugins", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for module, code in additions.items():
        with open(tmp_path / "moee_plugins" / module, "a", encoding="utf-8") as file:
            file.write(code)
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and status(result.stdout, contract) == "BROKEN", result.stdout
