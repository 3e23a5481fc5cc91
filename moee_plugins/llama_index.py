"""LlamaIndex adapter: a MoE LLM as a ``BaseEmbedding`` for ``VectorStoreIndex`` and retrievers.

Needs ``pip install "moee-plugins[llama-index]"``.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any, Literal

from ._adapters import FIELDS, attach_embedder, embed_one, embed_texts, text_batch
from ._extras import require
from .core import MoEEmbedder

BaseEmbedding = require("llama_index.core.base.embeddings.base", "llama-index").BaseEmbedding
_pydantic = require("llama_index.core.bridge.pydantic", "llama-index")
Field, PrivateAttr = _pydantic.Field, _pydantic.PrivateAttr

__all__ = ["MoEEmbedding"]


class MoEEmbedding(BaseEmbedding):
    """MoEE embeddings (hidden state + routing weights of a Mixture-of-Experts LLM) for LlamaIndex.

    Example:
        >>> from llama_index.core import Document, Settings, VectorStoreIndex
        >>> from moee_plugins.llama_index import MoEEmbedding
        >>> Settings.embed_model = MoEEmbedding(model="moee:olmoe", model_kwargs={"device": "cuda"})  # doctest: +SKIP
        >>> index = VectorStoreIndex.from_documents([Document(text="The hockey team won.")])  # doctest: +SKIP
        >>> index.as_retriever(similarity_top_k=1).retrieve("ice hockey")                    # doctest: +SKIP

    ``MoEEmbedding(embedder=existing_moee_embedder)`` wraps an already loaded core embedder, so one
    model serves several adapters. ``query_prompt`` / ``document_prompt`` (a preset such as
    ``"prompteol"`` or a template with ``{text}``) apply to queries / texts; both default to the
    embedder's own prompt. Texts are embedded ``embed_batch_size`` at a time, each batch in one core call.
    ``model_kwargs`` go to :class:`moee_plugins.MoEEmbedder` when a model is loaded.
    """

    mode: Literal["hs", "rw", "concat", "sum"] | None = Field(**FIELDS["mode"])
    alpha: float | None = Field(**FIELDS["alpha"])
    dimensions: int | None = Field(**FIELDS["dimensions"])
    query_prompt: str | None = Field(**FIELDS["query_prompt"])
    document_prompt: str | None = Field(**FIELDS["document_prompt"])
    model_kwargs: dict[str, Any] = Field(**FIELDS["model_kwargs"])

    _embedder: MoEEmbedder = PrivateAttr()

    def __init__(self, model: str | None = None, *, embedder: MoEEmbedder | None = None,
                 model_name: str | None = None, **kwargs: Any) -> None:
        if model_name is not None:
            warnings.warn("MoEEmbedding(model_name=...) is deprecated: use model=... as in every moee-plugins adapter",
                          DeprecationWarning, stacklevel=2)
            if model is not None and model != model_name:
                raise ValueError(f"model={model!r} and model_name={model_name!r} disagree; pass only model=")
            model = model_name
        super().__init__(model_name=model if model is not None else "unknown", **kwargs)
        self._embedder = attach_embedder(self, "MoEEmbedding", model, embedder)
        self.model_name = self._embedder.config["model"]

    @classmethod
    def class_name(cls) -> str:
        return "MoEEmbedding"

    @property
    def embedder(self) -> MoEEmbedder:
        """The core embedder, to share the loaded model with other adapters."""
        return self._embedder

    def _options(self, prompt: str | None) -> dict[str, Any]:
        return {"mode": self.mode, "alpha": self.alpha, "dimensions": self.dimensions, "prompt": prompt,
                "batch_size": self.embed_batch_size, "show_progress": False}

    def _get_query_embedding(self, query: str) -> list[float]:
        return embed_one(self._embedder, query, **self._options(self.query_prompt))

    def _get_text_embedding(self, text: str) -> list[float]:
        return embed_one(self._embedder, text, **self._options(self.document_prompt))

    def get_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list[list[float]]:
        """LlamaIndex's batching, after the core's input check (a str, dict or set is refused, not iterated)."""
        return super().get_text_embedding_batch(self._checked(texts), show_progress=show_progress, **kwargs)

    async def aget_text_embedding_batch(self, texts: list[str], show_progress: bool = False,
                                        **kwargs: Any) -> list[list[float]]:
        return await super().aget_text_embedding_batch(self._checked(texts), show_progress=show_progress, **kwargs)

    @staticmethod
    def _checked(texts: Any) -> list[str]:
        return text_batch(texts, "get_text_embedding(text)")

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        """One core call for the whole list (LlamaIndex hands over ``embed_batch_size`` texts at a time)."""
        return embed_texts(self._embedder, texts, **self._options(self.document_prompt))

    # The forward runs in a worker thread so the event loop keeps running; the core's lock makes
    # concurrent calls safe.
    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
