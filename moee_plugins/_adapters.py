"""What the LangChain and LlamaIndex adapters share: the core's builder with their field names, and the core's
vectors as the plain ``list[list[float]]`` both frameworks expect. Policies (input checks, prompt rule,
per-call mode/alpha, compact sizes) are the core's."""

from __future__ import annotations

from typing import Any

import numpy as np

from .core import MoEEmbedder, check_texts
from .core.build import build_embedder

_ADAPTER_FIELDS = ("mode", "alpha", "dimensions")  # adapter fields that would be given twice inside model_kwargs
FIELDS: dict[str, dict[str, Any]] = {  # the pydantic Field(...) arguments both adapters declare
    "mode": {"default": None, "description": "hs / rw / concat / sum; None: the embedder's ('sum' by default)."},
    "alpha": {"default": None, "ge": 0, "le": 1e6, "allow_inf_nan": False,
              "description": "Weight of cos(RW) in sum mode; None: the embedder's."},
    "dimensions": {"default": None, "gt": 0,
                   "description": "Compact vectors of this size (a reduction fitted on the embedder, see "
                                  "MoEEmbedder.fit_reduction); None: full vectors."},
    "query_prompt": {"default": None, "description": "Prompt or instruction for queries; None: the embedder's."},
    "document_prompt": {"default": None, "description": "Prompt or instruction for documents; None: the embedder's."},
    "model_kwargs": {"default_factory": dict, "description": "Extra MoEEmbedder options (device, dtype, ...)."},
}


def attach_embedder(adapter: Any, owner: str, model: str | None, embedder: MoEEmbedder | None) -> MoEEmbedder:
    """Build or reuse the core embedder (the core's one builder: the wrapped ``embedder`` as is, so one loaded model
    can serve several adapters, or a new one on ``model`` with ``model_kwargs``), check the adapter's prompts with
    the core's rule, and fill the adapter's ``mode``/``alpha`` from it when unset. Returns the embedder to keep."""
    core = build_embedder(model, embedder=embedder, owner=owner, options_name="model_kwargs",
                          reserved=_ADAPTER_FIELDS, **dict(adapter.model_kwargs or {}))
    for field in ("query_prompt", "document_prompt"):
        try:
            core.prompt_for(getattr(adapter, field))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{owner}.{field}: {exc}") from exc
    adapter.mode = core.mode if adapter.mode is None else adapter.mode
    adapter.alpha = core.alpha if adapter.alpha is None else float(adapter.alpha)
    try:
        core.check_dimensions(adapter.dimensions, adapter.mode, adapter.alpha)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{owner}.dimensions: {exc}") from exc
    return core


def text_batch(texts: Any, one_text_method: str = "the query method") -> list[str]:
    """A batch of texts by the core's input rule; a bare string is refused (both frameworks would iterate it)."""
    items, single = check_texts(texts)
    if single:
        raise TypeError(f"expected a list of strings, got a single str; embed one text with {one_text_method}")
    return items


def embed_texts(embedder: MoEEmbedder, texts: Any, *, mode: str, alpha: float, prompt: str | None,
                batch_size: int | None, show_progress: bool, dimensions: int | None = None) -> list[list[float]]:
    """Vectors of ``texts`` (a sequence of strings, checked by the core) in input order, as Python floats."""
    items = text_batch(texts)
    if not items:
        return []
    vectors = embedder.encode(items, mode=mode, alpha=alpha, prompt=prompt, batch_size=batch_size,
                              show_progress_bar=show_progress, dimensions=dimensions)
    return np.asarray(vectors, dtype=np.float32).tolist()


def embed_one(embedder: MoEEmbedder, text: Any, **options: Any) -> list[float]:
    """One text -> one vector; rejects non-strings with a message naming the problem."""
    if not isinstance(text, str):
        raise TypeError(f"expected a single string, got {type(text).__name__}: {text!r:.80}")
    return embed_texts(embedder, [text], **options)[0]
