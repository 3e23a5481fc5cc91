"""Fixtures for the BERTopic integration: a synthetic corpus, one backend, one fitted model.

The corpus has five clearly distinct vocabularies. With the tiny random model, topics are not
semantically meaningful, so tests assert structure and exact agreement with the backend, not labels.
Most tests use PCA + KMeans as BERTopic's reduction/clustering (fast, deterministic); the CLI test
runs the real UMAP + HDBSCAN pipeline once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

_VOCABULARIES = {
    "sports": "hockey goalie puck skate rink playoff season coach team score league player",
    "space": "orbit rocket launch nasa satellite moon planet astronaut shuttle mission telescope galaxy",
    "cooking": "recipe oven flour butter sugar bake dough garlic onion simmer sauce pasta",
    "computers": "keyboard monitor printer driver motherboard memory disk windows software compiler cpu graphics",
    "medicine": "doctor patient disease vaccine symptom clinic therapy nurse hospital diagnosis dose infection",
}
VOCABULARIES: dict[str, list[str]] = {name: words.split(" ") for name, words in _VOCABULARIES.items()}
N_TOPICS = len(VOCABULARIES)
# on CPU, transformers' default grouped_mm experts kernel is ~3x slower than the eager loop for the tiny model
FAST_CPU = {"experts_implementation": "eager"}


def make_corpus(n: int, seed: int = 0, words: int = 6) -> tuple[list[str], list[str]]:
    """``n`` short documents (and their vocabulary labels), cycling through the vocabularies."""
    rng = random.Random(seed)
    names = list(VOCABULARIES)
    docs, labels = [], []
    for i in range(n):
        name = names[i % len(names)]
        docs.append(" ".join(rng.sample(VOCABULARIES[name], words)))
        labels.append(name)
    return docs, labels


@pytest.fixture(autouse=True)
def no_default_model_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if BERTopic's select_backend falls back to building a default model by name (a ``moee:`` name is
    ours: BERTopic.load of a folder saved with ``save_embedding_model="moee:<folder>"``)."""
    from bertopic.backend import _sentencetransformers

    real = _sentencetransformers.SentenceTransformerBackend

    class Guard(real):  # type: ignore[misc, valid-type]
        def __init__(self, embedding_model: Any, *args: Any, **kwargs: Any) -> None:
            if isinstance(embedding_model, str) and not embedding_model.startswith("moee:"):
                raise AssertionError(f"BERTopic tried to load a default embedding model {embedding_model!r}")
            super().__init__(embedding_model, *args, **kwargs)

    monkeypatch.setattr(_sentencetransformers, "SentenceTransformerBackend", Guard)


@pytest.fixture(scope="session")
def all_words() -> set[str]:
    return {word for words in VOCABULARIES.values() for word in words}


@pytest.fixture(scope="session")
def fast_cpu() -> dict[str, str]:
    return dict(FAST_CPU)


@pytest.fixture(scope="session")
def n_topics() -> int:
    return N_TOPICS


@pytest.fixture(scope="session")
def corpus_factory() -> Callable[..., tuple[list[str], list[str]]]:
    return make_corpus


@pytest.fixture(scope="session")
def corpus() -> tuple[list[str], list[str]]:
    return make_corpus(200, seed=0)


@pytest.fixture(scope="session")
def docs(corpus: tuple[list[str], list[str]]) -> list[str]:
    return corpus[0]


@pytest.fixture(scope="session")
def new_docs() -> list[str]:
    return make_corpus(10, seed=1)[0]


@pytest.fixture(scope="session")
def calibrated(tiny_model_dir, docs: list[str]) -> tuple[Any, np.ndarray]:
    """A sum-mode embedder standardised on the corpus itself, and the corpus's embeddings: one forward pass."""
    from moee_plugins import MoEEmbedder, Statistics

    embedder = MoEEmbedder(str(tiny_model_dir), mode="sum", device="cpu", model_kwargs=FAST_CPU)
    parts = embedder.encode_parts(docs, show_progress_bar=False)
    embedder.set_statistics(Statistics.fit(parts.hidden, parts.routing, source="synthetic corpus"))
    return embedder, embedder.combine(parts)


@pytest.fixture(scope="session")
def embedder(calibrated) -> Any:
    """Shared by the suite: do not mutate."""
    return calibrated[0]


@pytest.fixture(scope="session")
def embeddings(calibrated) -> np.ndarray:
    return calibrated[1]


@pytest.fixture(scope="session")
def backend(embedder):
    from moee_plugins.bertopic import MoEEBackend

    return MoEEBackend(embedder)


@pytest.fixture(scope="session")
def make_model(backend, docs: list[str], embeddings: np.ndarray) -> Callable[..., Any]:
    """Fit a fresh BERTopic (PCA + KMeans) on the corpus; each call returns a new model to mutate."""
    from bertopic import BERTopic
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    def fit(*, use_embeddings: bool = True, n: int | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("umap_model", PCA(n_components=8, random_state=0))
        kwargs.setdefault("hdbscan_model", KMeans(n_clusters=N_TOPICS, n_init=10, random_state=0))
        model = BERTopic(embedding_model=kwargs.pop("embedding_model", backend), **kwargs)
        n = len(docs) if n is None else n
        model.fit(docs[:n], embeddings[:n].copy() if use_embeddings else None)  # guided fits edit it in place
        return model

    return fit


@pytest.fixture(scope="session")
def fitted(make_model) -> Any:
    """One KeyBERTInspired model shared by the read-only tests."""
    from bertopic.representation import KeyBERTInspired

    return make_model(representation_model=KeyBERTInspired(top_n_words=5, nr_repr_docs=3, nr_candidate_words=30))
