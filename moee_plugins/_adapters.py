"""What the LangChain and LlamaIndex adapters share: building or reusing one core embedder, and turning its
vectors into the plain ``list[list[float]]`` both frameworks expect. No extraction logic lives here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .core import MoEEmbedder
from .core.prompts import resolve_prompt

# Adapter fields that would be given twice if they also appeared in ``model_kwargs``.
_ADAPTER_FIELDS = ("mode", "alpha")


def check_prompt(prompt: str | None, field: str) -> str | None:
    """Fail at construction, not at the first query, on a template without ``{text}``."""
    if prompt is None:
        return None
    if not isinstance(prompt, str):
        raise TypeError(f"{field} must be None, a preset name or a template string with '{{text}}', "
                        f"got {type(prompt).__name__}")
    try:
        resolve_prompt(prompt)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from exc
    return prompt


def build_embedder(
    owner: str,
    model: str | None,
    embedder: MoEEmbedder | None,
    *,
    mode: str | None,
    alpha: float | None,
    model_kwargs: Mapping[str, Any] | None,
) -> MoEEmbedder:
    """The wrapped ``embedder`` as is (one loaded model can serve several adapters), or a new one on ``model``."""
    if embedder is not None:
        if not isinstance(embedder, MoEEmbedder):
            raise TypeError(f"{owner}: embedder must be a moee_plugins.MoEEmbedder, got {type(embedder).__name__}")
        if model_kwargs:
            raise ValueError(f"{owner}: model_kwargs only apply when loading a model; "
                             f"they cannot change the wrapped embedder (got {sorted(model_kwargs)})")
        wrapped = embedder.config["model"]
        if model is not None and model != wrapped:
            raise ValueError(f"{owner}: model={model!r} disagrees with the wrapped embedder's model {wrapped!r}; "
                             "pass only one of them")
        return embedder
    if model is None:
        raise ValueError(f"{owner} needs a model ('moee:<alias>', a hub id or a local directory) "
                         "or an existing embedder=MoEEmbedder(...)")
    if not isinstance(model, str):
        raise TypeError(f"{owner}: model must be a string ('moee:<alias>', a hub id or a local directory), "
                        f"got {type(model).__name__}; wrap a loaded model with embedder=MoEEmbedder(model, tokenizer)")
    kwargs = dict(model_kwargs or {})
    clash = sorted(set(kwargs) & set(_ADAPTER_FIELDS))
    if clash:
        raise ValueError(f"{owner}: set {clash} as the adapter's own fields, not inside model_kwargs")
    return MoEEmbedder(model, mode=mode or "sum", alpha=1.0 if alpha is None else alpha, **kwargs)


def embed_texts(
    embedder: MoEEmbedder,
    texts: Sequence[str],
    *,
    mode: str,
    alpha: float,
    prompt: str | None,
    batch_size: int | None,
    show_progress: bool,
) -> list[list[float]]:
    """Vectors of ``texts`` in input order, as plain Python floats.

    When the adapter's mode/alpha differ from the wrapped embedder's, the same single forward pass is
    combined into the adapter's mode (so a shared embedder never has to be mutated).
    """
    if isinstance(texts, (str, bytes)) or texts is None:
        raise TypeError(f"expected a list of strings, got {type(texts).__name__}; embed one text with the query method")
    items = list(texts)
    if not items:
        return []
    options = {"batch_size": batch_size, "show_progress_bar": show_progress, "prompt": prompt}
    if mode == embedder.mode and alpha == embedder.alpha:
        vectors = embedder.encode(items, **options)
    else:
        vectors = embedder.combine(embedder.encode_parts(items, **options), mode, alpha=alpha)
    return np.asarray(vectors, dtype=np.float32).tolist()


def embed_one(embedder: MoEEmbedder, text: str, **options: Any) -> list[float]:
    """One text -> one vector; rejects non-strings with a message naming the problem."""
    if not isinstance(text, str):
        raise TypeError(f"expected a single string, got {type(text).__name__}: {text!r:.80}")
    return embed_texts(embedder, [text], **options)[0]


def attach_embedder(adapter: Any, owner: str, model: str | None, embedder: MoEEmbedder | None,
                    model_field: str) -> MoEEmbedder:
    """Validate the adapter's prompts, build or reuse the core embedder, and fill the adapter's ``mode``/``alpha``
    (and its model field when an embedder was wrapped) from it. Returns the embedder to keep."""
    check_prompt(adapter.query_prompt, "query_prompt")
    check_prompt(adapter.document_prompt, "document_prompt")
    core = build_embedder(owner, model, embedder, mode=adapter.mode, alpha=adapter.alpha,
                          model_kwargs=adapter.model_kwargs)
    if embedder is not None:
        setattr(adapter, model_field, embedder.config["model"])
    adapter.mode = adapter.mode or core.mode
    adapter.alpha = core.alpha if adapter.alpha is None else float(adapter.alpha)
    return core
