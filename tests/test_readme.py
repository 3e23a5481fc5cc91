"""The README's code blocks run as written: the Python quick start runs (``moee:olmoe`` mapped to the tiny local
model, as the Hub cannot be reached here), and every shell line is a command this checkout provides -- each
``moee ...`` line parses with the real CLI, each ``make`` target, script, extra and file it names exists.
docs/development.md is held to the same rules. Every page installs the way that works before the package is on
PyPI (from a clone), and the README and the home page list every extra of pyproject.toml."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import moee_plugins
from moee_plugins.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/development.md")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_OPTIONAL = (ROOT / "pyproject.toml").read_text(encoding="utf-8").split("[project.optional-dependencies]")[1]
EXTRAS = set(re.findall(r"^([\w-]+) = \[", _OPTIONAL.split("\n[")[0], re.MULTILINE))  # (tomllib is 3.11+)
# commands a reader runs that need no checking beyond their arguments' files (below)
PLAIN = {"cd", ".", "source", "git", "mkdocs", "lint-imports"}


def blocks(document: str, language: str) -> list[str]:
    text = (ROOT / document).read_text(encoding="utf-8")
    return [code for lang, code in FENCE.findall(text) if lang == language]


def shell_commands(document: str) -> list[list[str]]:
    """Every command of every bash block, comments dropped, ``a && b`` split in two."""
    commands = []
    for code in blocks(document, "bash"):
        for line in code.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1:]
    return commands


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE))


def torch_version() -> str:
    match = re.search(r'TORCH_VERSION="\$\{TORCH_VERSION:-([\d.]+)\}"', (ROOT / "scripts/_env.sh").read_text("utf-8"))
    assert match, "scripts/_env.sh no longer names the torch version"
    return match.group(1)


def check_pip(args: list[str]) -> None:
    assert args[0] in {"install", "wheel"}, args
    for arg in args[1:]:
        if arg.startswith("torch=="):
            assert arg == f"torch=={torch_version()}", "the README and scripts/_env.sh install different torch versions"
        elif "[" in arg:  # ".[all,dev]", "dist/x.whl[all]", "moee-plugins[all]"
            target, extras = arg[:-1].split("[", 1)
            assert set(extras.split(",")) <= EXTRAS, f"unknown extra in {arg!r}; known: {sorted(EXTRAS)}"
            if target.endswith(".whl"):
                assert Path(target).name == f"moee_plugins-{moee_plugins.__version__}-py3-none-any.whl", target
            elif target not in {".", "moee-plugins"}:
                raise AssertionError(f"pip installs an unexpected target {arg!r}")
    if "-c" in args:
        assert (ROOT / args[args.index("-c") + 1]).is_file()


def check(command: list[str]) -> None:
    name, args = command[0], command[1:]
    if name == "moee":
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:  # argparse's exit on an unknown sub-command or flag
            raise AssertionError(f"`moee {' '.join(args)}` does not parse with this CLI") from exc
    elif name == "make":
        assert set(args) <= make_targets(), f"no make target {args} in the Makefile"
    elif name == "bash":
        assert (ROOT / args[0]).is_file(), args[0]
    elif name == "python":
        if args[:2] == ["-m", "venv"] or args[:2] == ["-m", "pytest"]:
            return
        assert (ROOT / args[0]).is_file(), args[0]
    elif name == "pip":
        check_pip(args)
    elif name == "git" and args[0] == "clone":
        repo_url = re.search(r"^repo_url: (\S+)", (ROOT / "mkdocs.yml").read_text("utf-8"), re.MULTILINE).group(1)
        assert args[1] == repo_url + ".git"
    elif name not in PLAIN:
        raise AssertionError(f"this test does not know the command {command}: teach it, or leave it out of the docs")


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_shell_command_exists_as_written(document):
    commands = shell_commands(document)
    assert commands
    for command in commands:
        check(command)


def test_the_readme_shows_the_two_set_up_commands_and_the_real_demo():
    commands = shell_commands("README.md")
    assert ["make", "demo"] in commands and ["make", "test"] in commands
    assert any(c[0] in {"moee", "bash"} and "demo" in " ".join(c) and "moee:olmoe" in c for c in commands)
    assert any(c[:2] == ["git", "clone"] for c in commands)  # installing from a clone, as it is not on PyPI
    assert all(c[:2] != ["pip", "install"] or "moee-plugins[all]" not in c for c in commands), \
        "the published install belongs in prose until the package is on PyPI"


def test_the_checker_catches_a_wrong_command():
    for wrong in (["moee", "embed", "in.txt", "-o", "x.npy", "--no-such-flag"], ["moee", "frobnicate"],
                  ["make", "deploy"], ["pip", "install", ".[no-such-extra]"], ["curl", "x"]):
        with pytest.raises(AssertionError):
            check(wrong)


def test_the_python_quick_start_runs(tiny_model_dir, small_builtin_calibration, capsys):
    """With ``moee:olmoe`` pointing at the tiny local model (the real one needs the Hub)."""
    from moee_plugins import get_alias, register_alias

    code = "\n\n".join(blocks("README.md", "python"))
    assert 'MoEEmbedder("moee:olmoe")' in code
    real = get_alias("olmoe")
    register_alias("olmoe", str(tiny_model_dir), description=real.description, defaults=real.defaults, overwrite=True)
    try:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        register_alias(real.name, real.model_id, description=real.description, defaults=real.defaults,
                       requires_remote_code=real.requires_remote_code, overwrite=True)
    assert get_alias("olmoe").model_id == real.model_id
    X, parts = namespace["X"], namespace["parts"]
    assert X.shape == (2, namespace["emb"].dim) and parts.hidden.shape[0] == 1


PAGES = ["README.md", *sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md"))]
UNPUBLISHED = re.compile(r"pip install \"?moee[-_]plugins\b")


@pytest.mark.parametrize("document", PAGES)
def test_install_lines_work_while_the_package_is_not_on_pypi(document):
    """``pip install "moee-plugins[...]"`` fails until the package is published: a page installs from a clone
    (``pip install ".[extra]"``) and names the published form only as what it will read once published."""
    installs = [shlex.split(line, comments=True) for code in blocks(document, "bash") for line in code.splitlines()
                if line.startswith("pip install")]
    for command in installs:
        assert not any(arg.startswith(("moee-plugins", "moee_plugins")) for arg in command[2:]), (document, command)
    text = (ROOT / document).read_text(encoding="utf-8")
    wrong = [line for line in text.splitlines() if UNPUBLISHED.search(line) and "published" not in line]
    assert not wrong, f"{document} installs from PyPI, where the package is not yet: {wrong}"


def test_the_readme_and_the_home_page_list_every_extra():
    expected = EXTRAS - {"dev"}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = readme.split("\nExtras: ", 1)[1].split("(", 1)[0]
    assert set(re.findall(r"`([\w-]+)`", listed)) == expected, "README.md's list of extras"
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    table = index.split("| extra | adds |", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"^\| `([\w-]+)` \|", table, re.MULTILINE)) == expected, "docs/index.md's table of extras"
