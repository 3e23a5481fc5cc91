"""Fixtures for the sentence-transformers conformance suite: one hooked model on the tiny local OLMoE.

Every model shares the statistics of the session's ``tiny_embedder``, so no test recalibrates and every
vector can be compared with the core's own output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("sentence_transformers")

REPO_ROOT = Path(__file__).resolve().parents[2]

# varied lengths on purpose: sentence-transformers sorts by length before batching
TEXTS = [
    "The hockey team won the final in overtime.",
    "GPUs and printers.",
    "A recipe for bread needs flour, water, salt and a long, patient rise in a warm kitchen.",
    "Vaccines train the immune system.",
    "Rockets.",
    "The telescope saw a faint galaxy behind the moon while the astronauts slept in orbit.",
    "Compilers turn source code into machine code.",
    "The nurse checked every patient before the doctor arrived at the clinic.",
]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: the tiny model gains nothing from more, and on a busy 2-core machine OpenMP threads
    fighting for cores make each forward pass ~50x slower. Session-scoped so it also covers the shared session
    fixtures (``tiny_embedder``'s calibration); restored at the end of the session."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def st_hook():
    """The hook, installed for the suite (and removed afterwards only if this fixture installed it)."""
    from moee_plugins.sentence_transformers import install_hook, uninstall_hook

    installed = install_hook()
    yield
    if installed:
        uninstall_hook()


@pytest.fixture(scope="session")
def statistics(tiny_embedder):
    return tiny_embedder.statistics.to_dict()


@pytest.fixture(scope="session")
def st_model(st_hook, tiny_alias, statistics):
    """``SentenceTransformer("moee:tiny-olmoe")`` in sum mode; tests must not leave it changed."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_alias, device="cpu", model_kwargs={"statistics": statistics})


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return list(TEXTS)


def _run_python(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (offline, with this checkout importable); fail with its output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"  # as in the parent (see one_torch_thread): same kernels, same numbers
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                            timeout=timeout, cwd=str(REPO_ROOT))
    assert result.returncode == 0, f"subprocess failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="session")
def run_python():
    """``run_python(code)``: run a script in a fresh Python process and return the completed process."""
    return _run_python
