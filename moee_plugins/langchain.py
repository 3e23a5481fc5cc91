"""LangChain adapter: a MoE LLM as a ``langchain_core.embeddings.Embeddings`` for vector stores and retrievers.

Needs ``pip install "moee-plugins[langchain]"``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from ._adapters import FIELDS, attach_embedder, embed_one, embed_texts
from ._extras import require
from .core import MoEEmbedder

Embeddings = require("langchain_core.embeddings", "langchain").Embeddings
_pydantic = require("pydantic", "langchain")
BaseModel, ConfigDict, Field, PrivateAttr = (
    _pydantic.BaseModel, _pydantic.ConfigDict, _pydantic.Field, _pydantic.PrivateAttr,
)

__all__ = ["MoEEmbeddings"]


class MoEEmbeddings(BaseModel, Embeddings):
    """MoEE embeddings (hidden state + routing weights of a Mixture-of-Experts LLM) for LangChain.

    Example:
        >>> from langchain_core.vectorstores import InMemoryVectorStore
        >>> from moee_plugins.langchain import MoEEmbeddings
        >>> embeddings = MoEEmbeddings(model="moee:olmoe", model_kwargs={"device": "cuda"})  # doctest: +SKIP
        >>> store = InMemoryVectorStore.from_texts(["GPUs and printers", "The hockey team won."],
        ...                                        embedding=embeddings)                     # doctest: +SKIP
        >>> store.similarity_search("ice hockey", k=1)                                       # doctest: +SKIP

    One loaded model can serve several adapters: ``MoEEmbeddings(embedder=existing_moee_embedder)``
    wraps it without loading anything (``MoEEmbeddings(...).embedder`` hands it on).

    ``query_prompt`` / ``document_prompt`` follow the core's one prompt rule
    (:meth:`moee_plugins.MoEEmbedder.prompt_for`): an instruction such as ``"query: "`` goes in front of the
    embedder's template, a preset or a ``{text}`` template replaces it; both default to the embedder's own
    prompt, so queries and documents are embedded the same way unless you ask for an asymmetric setup.
    The object pickles (the model travels with it).
    ``model_kwargs`` go to :class:`moee_plugins.MoEEmbedder` when a model is loaded (``device``,
    ``dtype``, ``quantization``, ``prompt``, ``max_length``, ``statistics``, ...).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    model: str | None = Field(default=None, description="'moee:<alias>', a hub id or a local directory.")
    mode: Literal["hs", "rw", "concat", "sum"] | None = Field(**FIELDS["mode"])
    alpha: float | None = Field(**FIELDS["alpha"])
    dimensions: int | None = Field(**FIELDS["dimensions"])
    query_prompt: str | None = Field(**FIELDS["query_prompt"])
    document_prompt: str | None = Field(**FIELDS["document_prompt"])
    batch_size: int | None = Field(default=None, gt=0, description="Texts per forward pass; None: the embedder's.")
    model_kwargs: dict[str, Any] = Field(**FIELDS["model_kwargs"])
    show_progress: bool = Field(default=False, description="Show a progress bar while embedding documents.")

    _embedder: MoEEmbedder = PrivateAttr()

    def __init__(self, *, embedder: MoEEmbedder | None = None, **data: Any) -> None:
        super().__init__(**data)
        self._embedder = attach_embedder(self, "MoEEmbeddings", self.model, embedder)
        self.model = self._embedder.config["model"]

    @property
    def embedder(self) -> MoEEmbedder:
        """The core embedder, to share the loaded model with other adapters."""
        return self._embedder

    def _options(self, prompt: str | None, show_progress: bool) -> dict[str, Any]:
        return {"mode": self.mode, "alpha": self.alpha, "dimensions": self.dimensions, "prompt": prompt,
                "batch_size": self.batch_size, "show_progress": show_progress}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (with ``document_prompt``), batched through one core call; row i is text i."""
        return embed_texts(self._embedder, texts, **self._options(self.document_prompt, self.show_progress))

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (with ``query_prompt``)."""
        return embed_one(self._embedder, text, **self._options(self.query_prompt, False))

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Like :meth:`embed_documents`, with the forward pass in a worker thread so the event loop keeps running.

        The core serialises forward passes with a lock, so concurrent calls are safe.
        """
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Like :meth:`embed_query`, in a worker thread (see :meth:`aembed_documents`)."""
        return await asyncio.to_thread(self.embed_query, text)
