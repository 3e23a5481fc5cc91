"""``moee topics``: BERTopic topic modelling of a user's corpus with MoEE embeddings.

The pipeline of ``examples/bertopic_20newsgroups.py`` -- MoEE embeddings, UMAP (cosine, 5-D),
HDBSCAN (eom), ``CountVectorizer(stop_words="english")``, ``ClassTfidfTransformer``,
``KeyBERTInspired`` -- with UMAP's neighbourhood and the minimum topic size adapted to small corpora.

Writes into OUTDIR: ``topics.csv`` (document, topic, probability; row i is input document i),
``topic_info.csv``, ``embeddings.npy`` (row i is input document i), ``embedder.json`` (the
embedder's config), ``topic_map.html`` and ``topic_barchart.html`` (always both: with fewer than 3 topics the
map shows the topics side by side by size, and says so), and with ``--save-model`` the
topic model in ``model/`` (load it with :func:`moee_plugins.bertopic.load_topic_model`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._common import CommandError, UsageError
from ._options import add_model_options, add_text_options, check_positive, load_embedder

logger = logging.getLogger("moee_plugins")

MIN_DOCUMENTS = 10
DEFAULT_MIN_TOPIC_SIZE = 15
UMAP_NEIGHBORS = 15
UMAP_COMPONENTS = 5
MAX_BARCHART_TOPICS = 30
MIN_MAP_TOPICS = 3  # BERTopic's 2-D projection of the topics fails on two



class NoTopicsError(CommandError):
    """Clustering found no topic at all (exit code 1)."""


def register(subparsers: Any) -> None:
    """Add the ``topics`` sub-command."""
    parser = subparsers.add_parser(
        "topics",
        help="find the topics of a corpus (BERTopic on MoEE embeddings)",
        description="Topic modelling of INPUT with MoEE embeddings and BERTopic (UMAP + HDBSCAN + KeyBERTInspired). "
        "Writes topics.csv, topic_info.csv, embeddings.npy and HTML visualisations into OUTDIR.",
    )
    parser.add_argument("-o", "--output", dest="outdir", type=Path, required=True, help="output directory")
    add_model_options(parser)
    parser.add_argument("--min-topic-size", type=int, default=None,
                        help=f"smallest topic (HDBSCAN min_cluster_size); default {DEFAULT_MIN_TOPIC_SIZE}, "
                        "lowered to max(2, documents // 10) for small corpora")
    parser.add_argument("--nr-topics", default=None,
                        help="reduce to this many topics after clustering, or 'auto' (default: keep all)")
    parser.add_argument("--top-n-words", type=int, default=10, help="words per topic (default: %(default)s)")
    add_text_options(parser, corpus_input=Path)
    parser.add_argument("--calibrate", choices=("builtin", "corpus"), default="builtin",
                        help="standardisation statistics: the built-in sentences, or this corpus (no extra pass)")
    parser.add_argument("--seed", type=int, default=42,
                        help="UMAP random state, for reproducible topics (default: %(default)s); -1: none, "
                        "UMAP then runs on all cores")
    parser.add_argument("--save-model", action="store_true", help="also save the topic model to OUTDIR/model")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier run in OUTDIR (default: refused if any exists)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def min_topic_size_for(n_documents: int, requested: int | None) -> int:
    """HDBSCAN's ``min_cluster_size``: the request if it can form two topics, else a clear error."""
    if requested is None:
        return min(DEFAULT_MIN_TOPIC_SIZE, max(2, n_documents // 10))
    if requested < 2:
        raise UsageError(f"--min-topic-size must be at least 2, got {requested}")
    if requested > n_documents // 2:
        raise UsageError(
            f"--min-topic-size {requested} leaves no room for two topics in {n_documents} documents; "
            f"use at most {n_documents // 2}"
        )
    return requested


def _parse_nr_topics(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"--nr-topics must be a positive integer or 'auto', got {value!r}") from None
    if number < 2:
        raise UsageError(f"--nr-topics must be at least 2, got {number}")
    return number


OUTPUT_FILES = ("topics.csv", "topic_info.csv", "embeddings.npy", "embedder.json", "topic_map.html",
                "topic_barchart.html")
MODEL_DIR = "model"


def _validate(args: argparse.Namespace) -> None:
    check_positive(args, "batch_size", "max_length", "top_n_words", "max_tokens_per_batch")
    if args.outdir.exists() and not args.outdir.is_dir():
        raise UsageError(f"output path {args.outdir} exists and is not a directory")


def _outputs(args: argparse.Namespace) -> list[Path]:
    """The paths this run writes in OUTDIR; any that exists is refused without --overwrite."""
    from ..io.ownership import refuse_overlap

    paths = [args.outdir / name for name in OUTPUT_FILES] + ([args.outdir / MODEL_DIR] if args.save_model else [])
    refuse_overlap(paths, [args.input])
    existing = [path.name for path in paths if path.exists() or path.is_symlink()]
    if existing and not args.overwrite:
        raise UsageError(f"{args.outdir} already holds {', '.join(existing)}: pass --overwrite to replace them, "
                         "or choose another --output")
    return paths


def _read(args: argparse.Namespace) -> list[str]:
    from ..io.corpus import CorpusError, read_corpus
    from ._common import corpus_problem

    try:
        docs = read_corpus(args.input, text_field=args.text_field, text_column=args.text_column)
    except CorpusError as exc:  # missing file, unknown format, missing field/column, a record that is not text
        raise UsageError(str(corpus_problem(exc, args.input.suffix.lower()))) from exc
    except OSError as exc:
        raise UsageError(str(exc)) from exc
    if len(docs) < MIN_DOCUMENTS:
        raise UsageError(
            f"{args.input} has {len(docs)} document(s); topic modelling needs at least {MIN_DOCUMENTS} "
            "(one document a line for .txt)"
        )
    if not any(doc.strip() for doc in docs):
        raise UsageError(f"every document in {args.input} is empty")
    from sklearn.feature_extraction.text import CountVectorizer

    try:
        words = len(CountVectorizer(stop_words="english").fit(docs).vocabulary_)
    except ValueError:  # "empty vocabulary"
        words = 0
    if words < 2:
        raise UsageError(
            f"{args.input} has {words} distinct word(s) besides English stop words; topics are described by words, "
            "so at least 2 are needed"
        )
    empty = sum(1 for doc in docs if not doc.strip())
    if empty:
        logger.warning("%d of %d documents are empty; they are kept (in order) and get a topic like any other",
                       empty, len(docs))
    return docs


def _embed(args: argparse.Namespace, docs: list[str]) -> tuple[Any, np.ndarray]:
    from ..core import Statistics

    embedder = load_embedder(args)
    show = not args.quiet
    if args.calibrate == "corpus":
        parts = embedder.encode_parts(docs, show_progress_bar=show)  # one pass: statistics and vectors
        embedder.set_statistics(Statistics.fit(parts.hidden, parts.routing, source=f"corpus {args.input.name}"))
        vectors = embedder.combine(parts)
    else:
        vectors = embedder.encode(docs, show_progress_bar=show)
    return embedder, np.asarray(vectors, dtype=np.float32)


def build_topic_model(embedder: Any, n_documents: int, *, min_topic_size: int, seed: int | None = 42,
                      top_n_words: int = 10, nr_topics: int | str | None = None, verbose: bool = False) -> Any:
    """The showcase BERTopic pipeline, with UMAP's neighbourhood and dimension fitted to small corpora."""
    from .._extras import require

    bertopic = require("bertopic", "bertopic")
    representation = require("bertopic.representation", "bertopic")
    vectorizers = require("bertopic.vectorizers", "bertopic")
    hdbscan = require("hdbscan", "bertopic")
    umap = require("umap", "bertopic")
    from sklearn.feature_extraction.text import CountVectorizer

    from ..bertopic import MoEEBackend

    umap_model = umap.UMAP(n_neighbors=min(UMAP_NEIGHBORS, n_documents - 1),
                           n_components=min(UMAP_COMPONENTS, n_documents - 2),
                           min_dist=0.0, metric="cosine", random_state=seed, n_jobs=1 if seed is not None else -1)
    hdbscan_model = hdbscan.HDBSCAN(min_cluster_size=min_topic_size, metric="euclidean",
                                    cluster_selection_method="eom", prediction_data=True)
    return bertopic.BERTopic(
        embedding_model=MoEEBackend(embedder),
        umap_model=umap_model,
        hdbscan_model=hdbscan_model,
        vectorizer_model=CountVectorizer(stop_words="english"),
        ctfidf_model=vectorizers.ClassTfidfTransformer(),
        representation_model=representation.KeyBERTInspired(),
        top_n_words=top_n_words,
        nr_topics=nr_topics,
        verbose=verbose,
    )


def _probabilities(probs: Any, n: int) -> np.ndarray:
    if probs is None:
        return np.full(n, np.nan)
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(axis=1) if probs.ndim == 2 else probs


def write_tables(model: Any, docs: list[str], topics: list[int], probs: Any, outdir: Path) -> None:
    """``topics.csv`` (row i = document i) and ``topic_info.csv`` (list columns as JSON)."""
    import pandas as pd

    pd.DataFrame({"document": docs, "topic": list(topics), "probability": _probabilities(probs, len(docs))}).to_csv(
        outdir / "topics.csv", index=False)
    info = model.get_topic_info()
    for column in info.columns:
        if info[column].map(lambda value: isinstance(value, (list, tuple))).any():
            # KeyBERTInspired pads short topics with "": drop the padding
            info[column] = info[column].map(
                lambda value: json.dumps([v for v in value if v != ""], ensure_ascii=False))
    info.to_csv(outdir / "topic_info.csv", index=False)


def _topic_rows(model: Any) -> list[tuple[int, int, str]]:
    """(topic, documents, top words) of every topic but the outliers, largest first."""
    freq = model.get_topic_freq()
    rows = []
    for topic, count in zip(freq.Topic, freq.Count, strict=True):
        if topic != -1:
            words = " | ".join(word for word, _ in (model.get_topic(topic) or [])[:5] if word)
            rows.append((int(topic), int(count), words))
    return rows


def fallback_topic_map(model: Any, note: str) -> Any:
    """The topic map drawn without BERTopic's 2-D projection: one bubble per topic (area ~ documents), side by side,
    with its top words, and ``note`` saying why. Always drawable, for any number of topics (even none)."""
    import plotly.graph_objects as go

    rows = _topic_rows(model)
    sizes = [count for _, count, _ in rows]
    largest = max(sizes, default=1)
    figure = go.Figure(go.Scatter(
        x=list(range(len(rows))), y=[0] * len(rows), mode="markers+text",
        text=[f"Topic {topic}" for topic, _, _ in rows], textposition="top center",
        customdata=[[topic, count, words] for topic, count, words in rows],
        hovertemplate="<b>Topic %{customdata[0]}</b><br>%{customdata[1]} documents<br>%{customdata[2]}<extra></extra>",
        marker={"size": [20 + 60 * (count / largest) ** 0.5 for count in sizes], "color": "#B0BEC5",
                "line": {"width": 2, "color": "DarkSlateGrey"}},
    ))
    figure.update_layout(title={"text": f"<b>Topics ({len(rows)})</b><br><sup>{note}</sup>"}, template="simple_white",
                         showlegend=False, width=650, height=450)
    figure.update_xaxes(visible=False, range=[-1, max(len(rows), 1)])
    figure.update_yaxes(visible=False)
    return figure


def write_visualisations(model: Any, outdir: Path) -> dict[str, str]:
    """Topic map and bar chart as self-contained HTML (plotly.js embedded: they open offline); both are always written.

    BERTopic's intertopic distance map projects the topics to 2-D with UMAP, which needs at least
    :data:`MIN_MAP_TOPICS` topics; with fewer (or if the projection fails) ``topic_map.html`` holds
    :func:`fallback_topic_map`, which says so. Returns ``{file: how it was drawn}`` ("" when drawn as asked).
    """
    n_topics = len(_topic_rows(model))
    figures = {
        "topic_map.html": lambda: model.visualize_topics(),
        "topic_barchart.html": lambda: model.visualize_barchart(top_n_topics=min(max(n_topics, 1), MAX_BARCHART_TOPICS)),
    }
    written: dict[str, str] = {}
    for name, make in figures.items():
        how = ""
        if name == "topic_map.html" and n_topics < MIN_MAP_TOPICS:
            how = f"{n_topics} topic(s): an intertopic distance map needs at least {MIN_MAP_TOPICS}, so topics are shown by size"
            figure = fallback_topic_map(model, how)
        else:
            try:
                with warnings.catch_warnings():  # BERTopic's own seeded UMAP for the topic map warns about n_jobs
                    warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
                    figure = make()
            except Exception as exc:  # a plot is a by-product: never lose the tables for it
                how = f"BERTopic could not draw it ({type(exc).__name__}: {exc}); topics are shown by size"
                logger.warning("%s with %d topics: %s", name, n_topics, how)
                figure = fallback_topic_map(model, how)
        figure.write_html(outdir / name, include_plotlyjs=True, full_html=True)
        written[name] = how
    return written


def run(args: argparse.Namespace) -> int:
    """Entry point of ``moee topics``: 0 on success, 2 on a bad input or option, 1 if no topic was found."""
    _validate(args)
    from ..io.ownership import OutputLock

    with OutputLock(args.outdir):  # one run per OUTDIR at a time (OUTDIR.lock beside it)
        _outputs(args)
        return _run_locked(args)


def _run_locked(args: argparse.Namespace) -> int:
    nr_topics = _parse_nr_topics(args.nr_topics)
    docs = _read(args)
    min_topic_size = min_topic_size_for(len(docs), args.min_topic_size)
    args.outdir.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    embedder, embeddings = _embed(args, docs)
    np.save(args.outdir / "embeddings.npy", embeddings)
    (args.outdir / "embedder.json").write_text(json.dumps(embedder.config, indent=2), encoding="utf-8")

    steps = ["fit topic model", "write tables", "write visualisations"] + (["save model"] if args.save_model else [])
    with tqdm(total=len(steps), desc="Topics", unit="step", disable=args.quiet) as progress:
        progress.set_postfix_str(steps[0])
        seed = args.seed if args.seed >= 0 else None
        model = build_topic_model(embedder, len(docs), min_topic_size=min_topic_size, seed=seed,
                                  top_n_words=args.top_n_words, nr_topics=nr_topics)
        no_topics = NoTopicsError(
            f"no topics found: HDBSCAN marked all {len(docs)} documents as outliers with --min-topic-size "
            f"{min_topic_size}; try a smaller --min-topic-size (the embeddings are in {args.outdir})"
        )
        try:
            topics, probs = model.fit_transform(docs, embeddings)
        except Exception as exc:  # BERTopic's representation step can fail on a single (outlier) topic
            labels = getattr(model.hdbscan_model, "labels_", None)
            if labels is not None and bool(np.all(np.asarray(labels) == -1)):
                raise no_topics from exc
            raise
        if all(topic == -1 for topic in topics):
            raise no_topics
        progress.update()
        progress.set_postfix_str(steps[1])
        write_tables(model, docs, topics, probs, args.outdir)
        progress.update()
        progress.set_postfix_str(steps[2])
        written = write_visualisations(model, args.outdir)
        progress.update()
        if args.save_model:
            from ..bertopic import save_topic_model

            progress.set_postfix_str(steps[3])
            save_topic_model(model, args.outdir / "model")
            progress.update()

    info = model.get_topic_info()
    n_topics = int((info.Topic != -1).sum())
    outliers = sum(1 for topic in topics if topic == -1)
    out = sys.stdout
    out.write(f"{len(docs)} documents, {n_topics} topics, {outliers} outliers (min topic size {min_topic_size})\n")
    for row in info.head(21).itertuples():
        out.write(f"{row.Topic:>5}  {row.Count:>7}  {row.Name}\n")
    files = ["topics.csv", "topic_info.csv", "embeddings.npy", "embedder.json", *written]
    for name, how in written.items():
        if how:
            out.write(f"note: {name}: {how}\n")
    files += ["model/"] if args.save_model else []
    out.write(f"wrote {', '.join(files)} to {args.outdir}\n")
    return 0
