"""Shared fixtures for tests/ and integrations/: tiny local MoE models, never a download."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One OpenMP/BLAS thread for this process and every process it starts (fresh interpreters, Ray actors,
# multi-process pools), set before torch is imported: the tiny models gain nothing from more, and on a busy
# 2-core machine a second thread waiting at every op's barrier makes a forward pass ~20x slower.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

FIXTURES = Path(__file__).parent / "tests" / "fixtures"
PARITY_DIR = FIXTURES / "olmoe-parity"
TINY_ALIAS = "tiny-olmoe"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_session():
    """The whole session runs torch on one intra-op thread (see OMP_NUM_THREADS above), whatever imported torch
    first; restored at the end."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: the tiny model gains nothing from two, and on a shared, busy machine a
    second thread waiting at every op's barrier makes the forward pass tens of times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The reference fixture: a tiny OLMoE checkpoint plus the paper code's outputs on it."""
    return PARITY_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the tiny OLMoE checkpoint (3 layers x 8 experts, hidden 64) with its tokenizer."""
    target = tmp_path_factory.mktemp("tiny-olmoe") / "model"
    shutil.copytree(PARITY_DIR / "model", target)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


@pytest.fixture(scope="session")
def tiny_alias(tiny_model_dir: Path):
    """``moee:tiny-olmoe``, an alias pointing at the tiny local model (as ``moee:olmoe`` points at the hub)."""
    from moee_plugins import register_alias, unregister_alias

    register_alias(TINY_ALIAS, str(tiny_model_dir), description="tiny local OLMoE for tests", overwrite=True)
    yield f"moee:{TINY_ALIAS}"
    unregister_alias(TINY_ALIAS)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_dir: Path):
    """A ``sum``-mode embedder on the tiny model, calibrated on the built-in sentences."""
    from moee_plugins import MoEEmbedder

    embedder = MoEEmbedder(str(tiny_model_dir), mode="sum", device="cpu")
    embedder.ensure_statistics()  # the one-time calibration on the built-in sentences
    return embedder


@pytest.fixture(scope="session")
def tiny_statistics(tiny_embedder):
    """The session's built-in calibration of the tiny model (sum/concat, all layers, logits), to hand to any other
    embedder of that model with ``statistics=`` / ``set_statistics`` instead of recalibrating."""
    return tiny_embedder.statistics


@pytest.fixture
def fast(monkeypatch, tiny_statistics):
    """``moee embed`` runs skip their (deterministic, tested in test_embed_cli) calibration: every embedder the
    command builds gets the session's statistics."""
    from moee_plugins.commands import embed as embed_command

    original = embed_command.build_embedder

    def build(args):
        embedder = original(args)
        embedder.set_statistics(tiny_statistics)
        return embedder

    monkeypatch.setattr(embed_command, "build_embedder", build)


@pytest.fixture
def hostile_model(tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(folder, marker) for the security tests: a copy of the tiny model whose ``config.json`` names its own code
    (``auto_map``); importing that code writes ``marker``. Loading the folder must never create ``marker`` unless
    the caller passed ``trust_remote_code=True`` (the control test shows it does then, so the refusals can fail)."""
    marker = tmp_path / "MARKER"
    return hostile_model_dir(tiny_model_dir, tmp_path / "hostile", marker), marker


def hostile_model_dir(source: str | Path, target: str | Path, marker: str | Path) -> Path:
    """A copy of the checkpoint ``source`` whose ``config.json`` names its own code (``auto_map``): importing that
    code writes ``marker``. Loading it must never create ``marker`` unless the caller passed trust_remote_code=True."""
    import json
    import shutil

    target = Path(target)
    shutil.copytree(source, target)
    for path in target.iterdir():
        path.chmod(0o644)
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "hostile.HostileConfig", "AutoModel": "hostile.HostileModel"}
    (target / "config.json").write_text(json.dumps(config))
    (target / "hostile.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('the folder ran its own code')\n"
        "from transformers import OlmoeConfig, OlmoeModel\n\n\n"
        "class HostileConfig(OlmoeConfig):\n    pass\n\n\n"
        "class HostileModel(OlmoeModel):\n    config_class = HostileConfig\n"
    )
    return target


SMALL_CALIBRATION_SIZE = 24


def use_small_builtin_calibration(monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """Make the core's built-in calibration use only the first :data:`SMALL_CALIBRATION_SIZE` built-in sentences."""
    import moee_plugins.core.embedder  # noqa: F401 - the module that calibrates by default
    from moee_plugins.core.standardize import calibration_sentences

    sentences = calibration_sentences()[:SMALL_CALIBRATION_SIZE]
    # wherever the core calls it (not moee_plugins.testing, whose tokenizers are trained on the full set)
    for name, module in list(sys.modules.items()):
        if name.startswith("moee_plugins.core.") and name != "moee_plugins.core.standardize" \
                and getattr(module, "calibration_sentences", None) is calibration_sentences:
            monkeypatch.setattr(module, "calibration_sentences", lambda: sentences)
    return sentences


@pytest.fixture
def small_builtin_calibration(monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """Calibrate "on the built-in sentences" with only the first few of them, for tests that need a built-in
    calibration of a non-default layout (another routing, a layer subset, a freshly built model) just to compare a
    few vectors: every embedder in the test uses the same short set, so their results still agree to the bit."""
    return use_small_builtin_calibration(monkeypatch)


@pytest.fixture(scope="module")
def small_builtin_calibration_for_module() -> Iterator[tuple[str, ...]]:
    """:func:`small_builtin_calibration` for a whole module (for module-scoped fixtures that calibrate)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield use_small_builtin_calibration(monkeypatch)


_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI every extra is installed, so a skipped test means a feature went untested: fail the run."""
    if os.environ.get("CI") and _SKIPPED and exitstatus == 0:
        session.exitstatus = 1
        sys.stderr.write(f"\nCI: {len(_SKIPPED)} test(s) skipped, which CI does not allow: {_SKIPPED[:5]}\n")
