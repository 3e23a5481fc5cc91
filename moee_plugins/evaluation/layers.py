"""``moee eval --hidden-layers -1,-4,-8``: MTEB for several hidden layers from ONE forward pass per text.

Each layer gets its own embedder view (same loaded model, ``hidden_layer`` set, its own statistics) and its own
parts store (the cache fingerprint includes ``hidden_layer``). The stores are linked: when any of them meets a
text none has, one pass (:func:`moee_plugins.core.layers.encode_layers`) fills every layer's store, so the
other layers find the text cached. Each layer's MTEB results and summary go to ``<output>/layer<k>/``; the
side-by-side table with the paper's figures goes to ``<output>/summary.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.embedder import MoEEmbedder
from ..core.layers import encode_layers, resolve_hidden_layer
from ..core.prompts import PromptTemplate, resolve_prompt
from .cache import PartsStore, text_key
from .summary import CATEGORIES, MODE_LABELS, PAPER, EvalReport, _fmt

logger = logging.getLogger(__name__)


def parse_hidden_layers(value: str | Sequence[int]) -> list[int]:
    """``"-1,-4,-8"`` or a sequence -> distinct layer indices in the given order."""
    try:
        items = [int(x) for x in value.split(",") if x.strip()] if isinstance(value, str) else [int(x) for x in value]
    except (TypeError, ValueError):
        raise ValueError(f"hidden layers must be comma-separated integers (e.g. -1,-4,-8), got {value!r}") from None
    if not items or len(set(items)) != len(items):
        raise ValueError(f"hidden layers must be distinct integers (e.g. -1,-4,-8), got {value!r}")
    return items


class _LinkedStore(PartsStore):
    """A layer's parts store whose misses are encoded for every linked layer at once."""

    group: LinkedStores

    def encode(self, embedder: MoEEmbedder, texts: Sequence[str], *, prompt: str | PromptTemplate | None = None,
               show_progress_bar: bool = False) -> Any:
        template = embedder.prompt if prompt is None else resolve_prompt(prompt)
        keys = [text_key(template, text) for text in texts]
        first: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        missing = [i for key, i in first.items() if key not in self]
        self.reused += len(keys) - len(missing)
        missing.sort(key=lambda i: -len(texts[i]))
        for start in range(0, len(missing), self.shard_size):
            chunk = missing[start : start + self.shard_size]
            self.group.fill([texts[i] for i in chunk], [keys[i] for i in chunk], template)
            self.forwarded += len(chunk)
        return self.get(keys)


@dataclass
class LinkedStores:
    """One parts store per hidden layer; a text missing from one is encoded once for all of them."""

    base: MoEEmbedder
    stores: dict[int, _LinkedStore] = field(default_factory=dict)
    passes: int = 0
    texts: int = 0  # texts sent through the model (calibration sentences included)

    def fill(self, texts: list[str], keys: list[bytes], template: PromptTemplate) -> None:
        by_layer, passes = encode_layers(self.base, texts, list(self.stores), prompt=template)
        self.passes += passes
        self.texts += len(texts)
        for layer, store in self.stores.items():
            rows = [i for i, key in enumerate(keys) if key not in store]
            if rows:
                store.add([keys[i] for i in rows], by_layer[layer][rows])


def layer_views(embedder: MoEEmbedder, hidden_layers: Sequence[int]) -> dict[int, MoEEmbedder]:
    """An embedder per layer sharing ``embedder``'s model (statistics fitted per layer; the given embedder's
    own only for its own layer)."""
    seen: dict[int | None, int] = {}
    for layer in hidden_layers:
        index = resolve_hidden_layer(embedder.model, layer)
        if index in seen:
            raise ValueError(f"hidden layers {seen[index]} and {layer} are the same decoder layer")
        seen[index] = layer
    views = {}
    for layer in hidden_layers:
        same = resolve_hidden_layer(embedder.model, layer) == resolve_hidden_layer(embedder.model, embedder.hidden_layer)
        views[layer] = embedder if same else MoEEmbedder.from_config(
            embedder.config, model=embedder.model, tokenizer=embedder.tokenizer, hidden_layer=layer, statistics=None,
            reduction=None)
    return views


def run_layers(model: str | MoEEmbedder, *, hidden_layers: str | Sequence[int], output_dir: str | Path = "results",
               cache_dir: str | Path | None = None, shard_size: int = 512, prompt: str | PromptTemplate | None = None,
               embedder_kwargs: dict[str, Any] | None = None, **run_options: Any) -> LayersReport:
    """:func:`~moee_plugins.evaluation.run` for each of ``hidden_layers`` (``-1`` the last, negative from the end),
    every text through the model once for all of them. Returns the reports side by side (also written to
    ``output_dir/summary.md`` and ``summary.json``)."""
    from .runner import counting_passes, run

    layers = parse_hidden_layers(hidden_layers)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if isinstance(model, MoEEmbedder):
        if embedder_kwargs:
            raise TypeError("embedder_kwargs apply only when model is not a MoEEmbedder")
        embedder = model
    else:
        embedder = MoEEmbedder(model, prompt=prompt if prompt is not None else "prompteol", **(embedder_kwargs or {}))
    views = layer_views(embedder, layers)
    base = embedder if resolve_hidden_layer(embedder.model, embedder.hidden_layer) is None else \
        MoEEmbedder.from_config(embedder.config, model=embedder.model, tokenizer=embedder.tokenizer, hidden_layer=-1)
    group = LinkedStores(base)
    cache = Path(cache_dir) if cache_dir is not None else output / "parts-cache"
    for layer, view in views.items():
        store = _LinkedStore.for_embedder(view, cache, shard_size=shard_size)
        store.group = group
        group.stores[layer] = store
    reports: dict[int, EvalReport] = {}
    with counting_passes(embedder.model) as passes:
        for layer in layers:
            logger.info("hidden layer %d", layer)
            reports[layer] = run(views[layer], output_dir=output / f"layer{layer}", store=group.stores[layer],
                                 prompt=prompt, **run_options)
    report = LayersReport(reports, forward_passes=passes[0], texts_forwarded=group.texts)
    logger.info("%d hidden layers: %d texts through the model in %d forward passes", len(layers),
                report.texts_forwarded, report.forward_passes)
    report.summary_path = str(output / "summary.md")
    Path(report.summary_path).write_text(report.to_markdown(), "utf-8")
    (output / "summary.json").write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str), "utf-8")
    return report


@dataclass
class LayersReport:
    """The per-layer reports of :func:`run_layers`, and the passes they shared."""

    layers: dict[int, EvalReport]
    forward_passes: int = 0
    texts_forwarded: int = 0
    summary_path: str = ""

    @property
    def tasks(self) -> list[Any]:
        return [task for report in self.layers.values() for task in report.tasks]

    def to_dict(self) -> dict[str, Any]:
        return {"forward_passes": self.forward_passes, "texts_forwarded": self.texts_forwarded,
                "layers": {str(layer): report.to_dict() for layer, report in self.layers.items()}}

    def to_markdown(self) -> str:
        first = next(iter(self.layers.values()))
        labels = [label for _, label in CATEGORIES] + ["Avg"]
        lines = [f"# MoEE on MTEB by hidden layer: `{first.name}`", "",
                 f"Layers {', '.join(str(k) for k in self.layers)} (-1: the last, after the final norm; others: that "
                 "decoder layer's raw output). HS changes with the layer; RW is the same routers' in every row.", "",
                 f"Forward passes: {self.forward_passes} for {self.texts_forwarded} texts (calibration included), shared "
                 "by all layers: every text through the model once.", "",
                 "## Scores (x100, the paper's layout)", "",
                 "| Source | Layer | Mode | " + " | ".join(labels) + " |", "|---|---|---|" + "---:|" * len(labels)]
        published = first.published()
        for mode in first.modes:
            for layer, report in self.layers.items():
                row = report.category_scores()[mode]
                lines.append(f"| this run | {layer} | {MODE_LABELS[mode]} | " + " | ".join(_fmt(row[c]) for c in labels)
                             + " |")
            paper = (published or {}).get("scores", {}).get(mode)
            if paper:
                lines.append(f"| paper ({published['label']}) | last | {MODE_LABELS[mode]} | "
                             + " | ".join(_fmt(paper.get(c)) for c in labels) + " |")
        if published:
            lines += ["", f"Published figures: {PAPER} ({published['label']}, last layer), from "
                      "`moee_plugins/evaluation/paper_results.json`."]
        lines += ["", "Per-task scores, MTEB result files and alphas: `layer<k>/summary.md` in this folder.", ""]
        return "\n".join(lines)
