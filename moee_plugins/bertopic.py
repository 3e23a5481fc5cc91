"""BERTopic backend: MoEE embeddings for topic modelling.

``MoEEBackend`` is a ``bertopic.backend.BaseEmbedder``, so BERTopic's ``select_backend`` hands it
through untouched (it never reaches the branch that replaces unknown objects with a downloaded
default model). Every later call BERTopic makes to its embedding model -- ``transform``,
``KeyBERTInspired``, ``MaximalMarginalRelevance``, ``find_topics``, zero-shot and guided topics,
``merge_topics``/``reduce_topics`` -- goes through :meth:`MoEEBackend.embed`.

Prompts for words: BERTopic compares words and search terms with documents and with topic vectors
(means of document vectors) by cosine similarity, and ``KeyBERTInspired`` embeds its candidate words
through ``embed_documents``, so words cannot be told apart from documents there. Words therefore get
the embedder's own template (PromptEOL by default) unless ``word_prompt`` says otherwise: a MoEE
vector depends strongly on the template around the text, and only one template keeps words,
queries and documents in one space.

Saving: use :func:`save_topic_model` / :func:`load_topic_model`. BERTopic's own ``topic_model.save(dir,
serialization="safetensors")`` records only a sentence-transformers model name: with
``save_embedding_model="moee:<a saved MoEE folder>"`` (``SentenceTransformer(...).save(dir)`` of an MoEE model)
``BERTopic.load`` rebuilds the model from that folder (``import moee_plugins`` first); without it the folder has no
embedding model (the backend has no ``_hf_model``, as BERTopic's save probes for, so nothing is recorded).
``serialization="pickle"`` keeps the backend (its config, statistics included).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._extras import require
from .core import MoEEmbedder, PromptTemplate, build_embedder
from .core.prompts import prompt_to_config

_backend = require("bertopic.backend", "bertopic")

logger = logging.getLogger("moee_plugins")

DEFAULT_MODEL = "moee:olmoe"
BACKEND_CONFIG = "moee_backend.json"


class MoEEBackend(_backend.BaseEmbedder):
    """A BERTopic embedding backend that computes MoEE embeddings with a Mixture-of-Experts LLM.

    Example:
        >>> from bertopic import BERTopic
        >>> from moee_plugins.bertopic import MoEEBackend
        >>> topic_model = BERTopic(embedding_model=MoEEBackend("moee:olmoe", mode="sum"))  # doctest: +SKIP
        >>> topics, probs = topic_model.fit_transform(docs)                                # doctest: +SKIP
        >>> topic_model.find_topics("space exploration")                                  # doctest: +SKIP

    Args:
        model: ``"moee:<alias>"``, a hub id, a local directory, or an existing
            :class:`~moee_plugins.MoEEmbedder` (then shared, not copied; pass no other options).
        word_prompt: template for ``embed_words`` (BERTopic's words, search terms, MMR keywords);
            ``None`` (default) uses the embedder's prompt so words and documents share one space.
        dimensions: compact vectors of this size for documents and words alike (a reduction fitted on the
            embedder, :meth:`~moee_plugins.MoEEmbedder.fit_reduction`); ``None`` (default): full vectors.
        **embedder_kwargs: options of :class:`~moee_plugins.MoEEmbedder` (``mode``, ``device``,
            ``batch_size``, ``prompt``, ...).
    """

    def __init__(
        self,
        model: str | MoEEmbedder = DEFAULT_MODEL,
        *,
        word_prompt: str | PromptTemplate | None = None,
        dimensions: int | None = None,
        **embedder_kwargs: Any,
    ) -> None:
        embedder = build_embedder(model, owner="MoEEBackend", **embedder_kwargs)
        try:
            embedder.check_dimensions(dimensions)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"MoEEBackend.dimensions: {exc}") from exc
        self.dimensions = dimensions
        super().__init__(embedding_model=embedder)
        self.embedder: MoEEmbedder = embedder
        self.word_prompt: PromptTemplate | None = None if word_prompt is None else embedder.prompt_for(word_prompt)
        # kept as given: an instruction ("word: ") is relative to the embedder's template
        self._word_prompt_config = word_prompt if isinstance(word_prompt, str) or word_prompt is None else (
            prompt_to_config(word_prompt))

    # ------------------------------------------------------------------ BaseEmbedder
    def embed(self, documents: Sequence[str], verbose: bool = False) -> np.ndarray:
        """float32 embeddings (N, dim) of ``documents`` in input order, with the embedder's prompt."""
        return self._encode(documents, verbose, None)

    def embed_documents(self, document: Sequence[str], verbose: bool = False) -> np.ndarray:
        return self._encode(document, verbose, None)

    def encode(self, documents: str | Sequence[str], *, show_progress_bar: bool = False) -> np.ndarray:
        """``embed`` under the name BERTopic's recipes call (``embedding_model.encode(docs)``, as on a
        sentence-transformers model); one string gives one vector."""
        if isinstance(documents, str):
            return self.embed([documents], verbose=show_progress_bar)[0]
        return self._encode(documents, show_progress_bar, None)

    def embed_words(self, words: Sequence[str], verbose: bool = False) -> np.ndarray:
        """Words and search terms: the ``word_prompt`` template if set, else the documents' template."""
        return self._encode(words, verbose, self.word_prompt)

    def _encode(self, texts: Sequence[str], verbose: bool, prompt: PromptTemplate | None) -> np.ndarray:
        if isinstance(texts, np.ndarray):
            texts = texts.tolist()
        vectors = self.embedder.encode(texts, show_progress_bar=bool(verbose), prompt=prompt,  # the core checks texts
                                       dimensions=self.dimensions)
        return np.asarray(vectors, dtype=np.float32)

    # ------------------------------------------------------------------ configuration
    @property
    def dim(self) -> int:
        return self.embedder.dim if self.dimensions is None else self.dimensions

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description: the embedder's config (its reduction included) plus the word prompt and
        the compact size."""
        word_prompt = self._word_prompt_config
        return {"embedder": self.embedder.config, "word_prompt": word_prompt, "dimensions": self.dimensions}

    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any) -> MoEEBackend:
        """Rebuild a backend from :attr:`config`; ``overrides`` go to :meth:`MoEEmbedder.from_config`
        (e.g. ``device="cuda"``, or ``model=``/``tokenizer=`` to reuse loaded objects). A saved config never
        switches remote code on: only ``trust_remote_code=True`` passed here does."""
        if not isinstance(config, dict) or "embedder" not in config:
            raise ValueError("not a MoEEBackend config: expected a dict with an 'embedder' entry")
        embedder = MoEEmbedder.from_config(config["embedder"], **overrides)
        return cls(embedder, word_prompt=config.get("word_prompt"), dimensions=config.get("dimensions"))

    # The embedder holds a loaded model and a lock: copies share it (it is never mutated by the
    # backend; BERTopic deep-copies the whole topic model in delete_topics), and pickles store
    # only the config, so ``topic_model.save(path, serialization="pickle")`` stays small and loads.
    def __copy__(self) -> MoEEBackend:
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> MoEEBackend:
        clone = self.__copy__()
        memo[id(self)] = clone
        return clone

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return (_backend_from_config, (self.config,))

    def __repr__(self) -> str:
        return f"MoEEBackend({self.embedder!r})"


def _backend_from_config(config: dict[str, Any]) -> MoEEBackend:
    return MoEEBackend.from_config(config)


def save_topic_model(
    topic_model: Any,
    path: str | Path,
    *,
    serialization: str = "safetensors",
    save_ctfidf: bool = True,
) -> Path:
    """Save a fitted BERTopic model to the directory ``path`` with its MoEE backend's config.

    BERTopic's safetensors format keeps topics, not the embedding model; this adds
    ``moee_backend.json`` so :func:`load_topic_model` re-attaches the same backend (model,
    mode, prompt, statistics) and ``transform``/``find_topics`` work after loading.
    """
    backend = topic_model.embedding_model
    if not isinstance(backend, MoEEBackend):
        raise TypeError(
            f"save_topic_model needs a topic model whose embedding_model is a MoEEBackend, got {type(backend).__name__}"
        )
    if serialization not in ("safetensors", "pytorch"):
        raise ValueError(f"serialization must be 'safetensors' or 'pytorch' (a directory), got {serialization!r}")
    path = Path(path)
    # no embedding_model entry is written, so loading never tries to fetch a sentence-transformers model by name
    topic_model.save(path, serialization=serialization, save_embedding_model=True, save_ctfidf=save_ctfidf)
    (path / BACKEND_CONFIG).write_text(json.dumps(backend.config, indent=2), encoding="utf-8")
    return path


def load_topic_model(path: str | Path, embedding_model: Any = None, **overrides: Any) -> Any:
    """Load a BERTopic model saved by :func:`save_topic_model`, with its MoEE backend re-attached: the way to
    reload (plain ``BERTopic.load(path)`` has no backend, so ``transform``/``find_topics`` cannot embed).

    ``embedding_model`` (a :class:`MoEEBackend`, :class:`MoEEmbedder` or model name) replaces the
    saved backend; otherwise it is rebuilt from ``moee_backend.json`` and ``overrides`` go to
    :meth:`MoEEmbedder.from_config` (e.g. ``device="cuda"``, ``model=`` a loaded model). The folder's
    ``"trust_remote_code"`` is never honoured; pass ``trust_remote_code=True`` yourself if you trust its model.
    """
    bertopic = require("bertopic", "bertopic")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no saved topic model directory at {path}")
    if embedding_model is None:
        config_path = path / BACKEND_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{config_path} is missing: save with moee_plugins.bertopic.save_topic_model, "
                "or pass embedding_model=MoEEBackend(...)"
            )
        backend = MoEEBackend.from_config(json.loads(config_path.read_text(encoding="utf-8")), **overrides)
    elif isinstance(embedding_model, MoEEBackend):
        if overrides:
            raise TypeError(f"options {sorted(overrides)} cannot apply to an existing MoEEBackend")
        backend = embedding_model
    else:
        backend = MoEEBackend(embedding_model, **overrides)
    return bertopic.BERTopic.load(str(path), embedding_model=backend)


def topics_over_time(topic_model: Any, docs: list[str], timestamps: list[Any], *, datetime_format: str | None = None,
                     **kwargs: Any) -> Any:
    """``topic_model.topics_over_time(docs, timestamps, **kwargs)`` that also takes string timestamps under
    pandas 3: BERTopic 0.17 parses strings with ``infer_datetime_format``, an argument pandas 3 removed, so
    strings are parsed here first (``datetime_format`` as in BERTopic, else inferred by pandas).

    Example:
        >>> from moee_plugins.bertopic import topics_over_time                         # doctest: +SKIP
        >>> topics_over_time(topic_model, docs, ["2024-01-05", "2024-02-11", ...])     # doctest: +SKIP
    """
    if len(timestamps) and isinstance(timestamps[0], str):
        import pandas as pd

        timestamps = list(pd.to_datetime(pd.Series(list(timestamps)), format=datetime_format))
    elif datetime_format is not None:
        kwargs["datetime_format"] = datetime_format
    return topic_model.topics_over_time(docs, timestamps, **kwargs)


__all__ = ["BACKEND_CONFIG", "DEFAULT_MODEL", "MoEEBackend", "load_topic_model", "save_topic_model", "topics_over_time"]
