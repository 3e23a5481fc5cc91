"""Every data file the package reads at run time ships in the wheel: it matches a ``package-data`` pattern of
pyproject.toml (a file that is missing there works from a clone and fails from a built wheel)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moee_plugins"


def package_data_patterns() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[tool.setuptools.package-data]", 1)[1]
    match = re.search(r"^moee_plugins = (\[.*?\])", section, re.MULTILINE | re.DOTALL)
    assert match, "pyproject.toml has no package-data for moee_plugins"
    return ast.literal_eval(match.group(1))


def test_every_data_file_is_package_data():
    patterns = package_data_patterns()
    data = [path for path in PACKAGE.rglob("*") if path.is_file() and path.suffix not in {".py", ".pyc"}
            and "__pycache__" not in path.parts]
    assert any(path.name == "sample_corpus.jsonl" for path in data)
    missing = [str(path.relative_to(PACKAGE)) for path in data
               if not any(path.relative_to(PACKAGE).match(pattern) for pattern in patterns)]
    assert not missing, f"not in pyproject.toml's package-data, so not in the wheel: {missing}"


def test_every_data_directory_is_a_package():
    """setuptools ships package data only inside packages."""
    for pattern in package_data_patterns():
        folder = (PACKAGE / pattern).parent
        assert folder == PACKAGE or (folder / "__init__.py").is_file(), folder
