"""Unit-length sum vectors make LangChain's relevance scores and score thresholds behave (issue 17, item 1).

Sum vectors' dot product is (cos(HS) + alpha cos(RW)) / (1 + alpha): self-similarity 1, every score in [-1, 1],
so cosine and L2 stores turn them into relevance scores in [0, 1] and thresholds keep the right documents.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from langchain_core.vectorstores import InMemoryVectorStore

from moee_plugins.langchain import MoEEmbeddings

DOCS = [
    "The hockey team won the championship after a dramatic overtime goal.",
    "Our printer driver crashes whenever the GPU runs out of memory.",
    "Bake the bread at two hundred degrees for forty minutes.",
    "The senate passed the budget bill late on Thursday night.",
    "Astronomers observed a new comet near the orbit of Jupiter.",
    "She planted tomatoes, basil and peppers in the spring garden.",
]


@pytest.fixture(scope="module", params=[1.0, 4.0], ids=["alpha1", "alpha4"])
def embeddings(request, tiny_embedder) -> MoEEmbeddings:
    return MoEEmbeddings(embedder=tiny_embedder, alpha=request.param)


def _faiss_store(embeddings: MoEEmbeddings, **kwargs):
    pytest.importorskip("faiss", reason="pip install faiss-cpu (in the dev extra)")
    community = pytest.importorskip("langchain_community.vectorstores", reason="pip install langchain-community")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return community.FAISS.from_texts(DOCS, embeddings, **kwargs)


def unit_relevance(squared_distance: float) -> float:
    """(1 + cosine) / 2 from FAISS's squared L2 distance of unit vectors (cosine = 1 - D / 2): in [0, 1] always."""
    return 1.0 - squared_distance / 4.0


@pytest.fixture(scope="module")
def faiss_store(embeddings: MoEEmbeddings):
    return _faiss_store(embeddings)


def test_in_memory_scores_are_the_moee_score_with_the_duplicate_at_one(embeddings, tiny_embedder) -> None:
    store = InMemoryVectorStore.from_texts(DOCS, embeddings)
    results = store.similarity_search_with_score(DOCS[3], k=len(DOCS))
    assert results[0][0].page_content == DOCS[3] and results[0][1] == pytest.approx(1.0, abs=1e-4)
    vectors = np.array(embeddings.embed_documents(DOCS))
    fused = tiny_embedder.similarity(vectors, vectors)[3]  # (cos HS + alpha cos RW) / (1 + alpha)
    for document, score in results:
        assert score == pytest.approx(float(fused[DOCS.index(document.page_content)]), abs=1e-4)


def test_faiss_default_relevance_puts_the_duplicate_at_one_and_follows_the_moee_score(faiss_store, embeddings,
                                                                                      tiny_embedder) -> None:
    """FAISS's default relevance, 1 - D / sqrt(2) of the squared L2 distance D, is 1 - sqrt(2) (1 - score) for unit
    vectors: 1 for the duplicate, monotone in the MoEE score, at or above 0 from a score of 0.29 up."""
    vector = np.array(embeddings.embed_query(DOCS[3]))
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unrelated documents fall below 0 and are warned of
        results = faiss_store.similarity_search_with_relevance_scores(DOCS[3], k=len(DOCS))
    assert results[0][0].page_content == DOCS[3] and results[0][1] == pytest.approx(1.0, abs=1e-4)
    vectors = np.array(embeddings.embed_documents(DOCS))
    fused = tiny_embedder.similarity(vectors, vectors)[3]
    for document, relevance in results:
        score = float(fused[DOCS.index(document.page_content)])
        assert relevance == pytest.approx(1.0 - np.sqrt(2.0) * (1.0 - score), abs=1e-3)


def test_faiss_with_a_unit_vector_relevance_never_leaves_zero_to_one(embeddings) -> None:
    store = _faiss_store(embeddings, relevance_score_fn=unit_relevance)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # LangChain warns "Relevance scores must be between 0 and 1"
        results = store.similarity_search_with_relevance_scores(DOCS[3], k=len(DOCS))
    scores = [score for _, score in results]
    assert results[0][0].page_content == DOCS[3] and scores[0] == pytest.approx(1.0, abs=1e-4)
    assert all(0.0 <= s <= 1.0 + 1e-6 for s in scores) and scores == sorted(scores, reverse=True)
    assert scores[-1] < 0.999  # other documents really score lower, so a threshold can fail


def test_faiss_score_threshold_retriever_returns_the_right_documents(faiss_store) -> None:
    strict = faiss_store.as_retriever(search_type="similarity_score_threshold",
                                      search_kwargs={"score_threshold": 0.999, "k": len(DOCS)})
    assert [d.page_content for d in strict.invoke(DOCS[1])] == [DOCS[1]]
    loose = faiss_store.as_retriever(search_type="similarity_score_threshold",
                                     search_kwargs={"score_threshold": 0.1, "k": 3})
    found = [d.page_content for d in loose.invoke(DOCS[4])]
    assert found and found[0] == DOCS[4]
