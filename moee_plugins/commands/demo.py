"""``moee demo``: the whole main job, offline, in seconds -- on a tiny *random* model.

No real MoE checkpoint ships with the package, so by default the demo builds a tiny random OLMoE-style model
(:func:`moee_plugins.testing.build_tiny_moe`) and runs the path a user cares about on a small sample corpus
bundled with the package (``moee_plugins/data/sample_corpus.jsonl``, 40 short documents on four subjects):

1. ``moee embed`` the corpus to ``vectors.npy`` (with a progress bar),
2. a retrieval query against those vectors (``search.txt``),
3. ``moee topics`` to ``topics/`` (tables and an HTML topic map).

The weights are random, so the vectors, search results and topics are meaningless: the demo shows the
mechanics and the outputs, not quality. ``--model moee:olmoe`` runs the same steps on the real OLMoE-1B-7B
(downloaded from the Hugging Face Hub on first use; a GPU is recommended).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ._common import UsageError

SAMPLE_CORPUS = "sample_corpus.jsonl"
DEFAULT_QUERY = "How do spacecraft get into orbit?"
TOP_K = 5
TINY_MODEL_DIR = "tiny-random-moe"
REAL_MODEL = "moee:olmoe"

RANDOM_WARNING = (
    "This demo runs on a tiny RANDOM model built on the spot: its weights are random, so the vectors, the search\n"
    "results and the topics it produces are MEANINGLESS. It shows what each step does and writes, not how well MoEE\n"
    f"works. To run the real thing, add --model {REAL_MODEL} (OLMoE-1B-7B, downloaded from the Hugging Face Hub\n"
    "on first use; a GPU is recommended)."
)


def register(subparsers: Any) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo",
        help="offline demo: embed, search and topic-model a bundled sample corpus (tiny random model)",
        description="Run the main job end to end on a bundled sample corpus: `moee embed` to vectors, a retrieval "
        "query, and `moee topics` to an HTML report. By default on a tiny random model built on the spot (offline, "
        f"seconds; its results are meaningless); --model {REAL_MODEL} runs the real model (needs the Hub).",
    )
    parser.add_argument("-o", "--output", dest="outdir", type=Path, default=Path("moee-demo"),
                        help="output directory (default: %(default)s)")
    parser.add_argument("--model", default=None,
                        help=f"model to run instead of the tiny random one, e.g. {REAL_MODEL} (default: a tiny random "
                        "model)")
    parser.add_argument("--query", default=DEFAULT_QUERY, help="retrieval query (default: %(default)r)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def sample_corpus_path() -> Path:
    """The bundled sample corpus (jsonl: ``id``, ``topic``, ``text``)."""
    return Path(str(resources.files("moee_plugins.data").joinpath(SAMPLE_CORPUS)))


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _step(argv: list[str]) -> None:
    """Run one ``moee`` sub-command from the command line a user would type, through that command's own parser
    and function (not the ``moee`` entry point: commands never import the CLI above them); an error stops the
    demo and ``moee demo`` reports it as its own."""
    from . import embed, topics

    _say("$ moee " + " ".join(argv))
    parser = argparse.ArgumentParser(prog="moee")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in (embed, topics):
        command.register(subparsers)
    args = parser.parse_args(argv)
    code = int(args.func(args))
    if code != 0:
        raise UsageError(f"`moee {' '.join(argv)}` failed with exit code {code}")


def _readme(model: str, tiny: bool, query: str) -> str:
    lines = ["moee demo output", "================", ""]
    if tiny:
        lines += [RANDOM_WARNING, ""]
    else:
        lines += [f"Model: {model}.", ""]
    lines += [
        "Files:",
        "  corpus.jsonl       the bundled sample corpus (40 short documents on space, cooking, football, computing)",
        "  vectors.npy        `moee embed` output: one float32 row per document, row i = document i",
        f"  search.txt         the {TOP_K} documents nearest to the query {query!r}",
        "  topics/            `moee topics` output: topics.csv, topic_info.csv, topic_map.html, topic_barchart.html",
    ]
    if tiny:
        lines.append(f"  {TINY_MODEL_DIR + '/':<18} the tiny random model the demo built (weights random, ~1 MB)")
    return "\n".join(lines) + "\n"


def _search(model: str, device: str | None, query: str, corpus: list[dict[str, Any]],
            vectors: np.ndarray) -> list[tuple[float, dict[str, Any]]]:
    """The ``TOP_K`` documents whose vectors score highest against the query's, by the mode's own similarity."""
    from ..core.build import build_embedder

    embedder = build_embedder(model, owner="moee demo", device=device)
    if len(vectors) != len(corpus) or vectors.shape[1] != embedder.dim:
        raise UsageError(f"vectors.npy has shape {vectors.shape}, expected ({len(corpus)}, {embedder.dim})")
    scores = embedder.similarity(embedder.encode([query], show_progress_bar=False), vectors)[0]
    order = np.argsort(-scores, kind="stable")[:TOP_K]
    return [(float(scores[i]), corpus[i]) for i in order]


def run(args: argparse.Namespace) -> int:
    """Entry point of ``moee demo``: 0 on success, else the exit code of the step that failed."""
    outdir: Path = args.outdir
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"output path {outdir} exists and is not a directory")
    outdir.mkdir(parents=True, exist_ok=True)
    tiny = args.model is None
    quiet = ["-q"] if args.quiet else []
    device = ["--device", args.device] if args.device else []

    if tiny:
        _say(RANDOM_WARNING)
        _say()
        import torch

        from ..testing import build_tiny_moe

        torch.set_num_threads(1)  # a tiny model gains nothing from more threads, and loses a lot on a busy machine
        model_dir = outdir / TINY_MODEL_DIR
        with contextlib.redirect_stderr(io.StringIO()):  # the save's own progress bar is noise here
            build_tiny_moe(model_dir)
        model = str(model_dir)
        _say(f"built a tiny random OLMoE-style model in {model_dir} (3 layers x 8 experts, hidden size 64)")
    else:
        model = args.model
    (outdir / "README.txt").write_text(_readme(model, tiny, args.query), encoding="utf-8")

    corpus_path = outdir / "corpus.jsonl"
    shutil.copyfile(sample_corpus_path(), corpus_path)
    corpus = [json.loads(line) for line in corpus_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    _say(f"sample corpus: {len(corpus)} documents in {corpus_path}\n")

    # 1. embed
    vectors_path = outdir / "vectors.npy"
    _step(["embed", str(corpus_path), "-o", str(vectors_path), "--model", model, "--overwrite", *device, *quiet])
    vectors = np.load(vectors_path)
    _say(f"vectors: {vectors.shape[0]} x {vectors.shape[1]} in {vectors_path}\n")

    # 2. search
    hits = _search(model, args.device, args.query, corpus, vectors)
    lines = [f"query: {args.query}"] + [f"{rank}. {score:+.3f}  [{doc['topic']}] {doc['text']}"
                                        for rank, (score, doc) in enumerate(hits, 1)]
    if tiny:
        lines.append("(random weights: this ranking is meaningless)")
    (outdir / "search.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _say("\n".join(lines) + "\n")

    # 3. topics
    _step(["topics", str(corpus_path), "-o", str(outdir / "topics"), "--model", model, "--overwrite", *device, *quiet])
    _say()
    _say(f"done: see {outdir / 'README.txt'}, and open {outdir / 'topics' / 'topic_map.html'} in a browser.")
    if tiny:
        _say(f"Reminder: random weights, meaningless results. The real thing: moee demo --model {REAL_MODEL}")
    return 0
