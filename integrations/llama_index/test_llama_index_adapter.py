"""MoEEmbedding in LlamaIndex: VectorStoreIndex retrieval (sync and async), batching, prompts, sharing one
loaded model, clear errors. Offline, on the tiny local MoE model."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.schema import TextNode

import moee_plugins.core.loading as core_loading
from moee_plugins import MoEEmbedder
from moee_plugins.llama_index import MoEEmbedding

DOCS = [
    "The hockey team won the championship after a dramatic overtime goal.",
    "Our printer driver crashes whenever the GPU runs out of memory.",
    "Bake the bread at two hundred degrees for forty minutes.",
    "The senate passed the budget bill late on Thursday night.",
    "Astronomers observed a new comet near the orbit of Jupiter.",
    "She planted tomatoes, basil and peppers in the spring garden.",
    "The stock market fell sharply after the interest rate decision.",
]


@pytest.fixture(scope="module")
def embedder(tiny_model_dir, tiny_embedder) -> MoEEmbedder:
    """A private core embedder (same model and calibration as ``tiny_embedder``) that tests may spy on."""
    return MoEEmbedder(str(tiny_model_dir), device="cpu", statistics=tiny_embedder.statistics)


@pytest.fixture()
def embed_model(embedder: MoEEmbedder) -> MoEEmbedding:
    return MoEEmbedding(embedder=embedder)


@pytest.fixture()
def offline_settings(embed_model: MoEEmbedding, monkeypatch: pytest.MonkeyPatch):
    """``Settings.embed_model`` set to ours for one test (restored after), with network connections refused."""
    real_connect = socket.socket.connect

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(f"network access attempted during an offline test: {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    previous = Settings._embed_model
    Settings.embed_model = embed_model
    yield embed_model
    Settings._embed_model = previous


def _documents() -> list[Document]:
    return [Document(text=text, metadata={"row": i}, excluded_embed_metadata_keys=["row"]) for i, text in
            enumerate(DOCS)]


def test_vector_store_index_retrieves_the_exact_duplicate_first(offline_settings: MoEEmbedding) -> None:
    assert Settings.embed_model is offline_settings
    index = VectorStoreIndex.from_documents(_documents())
    retriever = index.as_retriever(similarity_top_k=3)
    for i, text in enumerate(DOCS):
        hits = retriever.retrieve(text)
        assert len(hits) == 3
        assert hits[0].node.get_content() == text and hits[0].node.metadata["row"] == i
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[1].score < hits[0].score - 1e-4


async def test_async_retrieval(offline_settings: MoEEmbedding) -> None:
    index = VectorStoreIndex.from_documents(_documents(), use_async=True)
    retriever = index.as_retriever(similarity_top_k=2)
    results = await asyncio.gather(*(retriever.aretrieve(text) for text in DOCS[:4]))
    assert [hits[0].node.get_content() for hits in results] == DOCS[:4]


def test_shares_an_embedder_without_loading(tiny_embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded a second time")

    monkeypatch.setattr(core_loading, "load_model", no_loading)  # where the one builder loads
    first = MoEEmbedding(embedder=tiny_embedder)
    second = MoEEmbedding(embedder=first.embedder, mode="rw", embed_batch_size=4)
    assert first.embedder is tiny_embedder and second.embedder is tiny_embedder
    assert first.model_name == tiny_embedder.config["model"]
    assert MoEEmbedding.class_name() == "MoEEmbedding" == first.to_dict()["class_name"]
    assert len(second.get_query_embedding("x")) == tiny_embedder.routing_dim
    assert tiny_embedder.mode == "sum"


def test_loading_by_alias_matches_the_core(tiny_alias: str, tiny_embedder) -> None:
    loaded = MoEEmbedding(tiny_alias, model_kwargs={"device": "cpu", "statistics": tiny_embedder.statistics})
    assert loaded.model_name == tiny_alias and loaded.embedder is not tiny_embedder
    np.testing.assert_allclose(np.array(loaded.get_text_embedding_batch(DOCS[:3])), tiny_embedder.encode(DOCS[:3]),
                               rtol=0, atol=1e-6)


def test_batch_and_single_embeddings_are_identical(embed_model: MoEEmbedding) -> None:
    batch = embed_model.get_text_embedding_batch(DOCS)
    single = [embed_model.get_text_embedding(text) for text in DOCS]
    assert all(type(x) is float for row in batch for x in row)
    np.testing.assert_allclose(np.array(batch), np.array(single), rtol=0, atol=1e-5)
    abatch = asyncio.run(embed_model.aget_text_embedding_batch(DOCS))
    np.testing.assert_allclose(np.array(abatch), np.array(batch), rtol=0, atol=1e-6)


def test_texts_are_batched_through_the_core_at_embed_batch_size(embedder: MoEEmbedder,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int | None]] = []
    real_encode = embedder.encode

    def spy(texts, **kwargs):
        calls.append((len(texts), kwargs.get("batch_size")))
        return real_encode(texts, **kwargs)

    monkeypatch.setattr(embedder, "encode", spy)
    model = MoEEmbedding(embedder=embedder, embed_batch_size=3)
    vectors = model.get_text_embedding_batch(DOCS)
    assert calls == [(3, 3), (3, 3), (1, 3)]  # one core call per LlamaIndex batch, not one per text
    np.testing.assert_allclose(np.array(vectors), real_encode(DOCS), rtol=0, atol=1e-5)


def test_query_and_document_prompts_go_to_their_side(embedder: MoEEmbedder) -> None:
    model = MoEEmbedding(embedder=embedder, query_prompt="query: {text}", document_prompt="passage: {text}")
    text = DOCS[0]
    as_query = np.array(model.get_query_embedding(text))
    as_text = np.array(model.get_text_embedding(text))
    np.testing.assert_allclose(as_query, embedder.encode(text, prompt="query: {text}"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(as_text, embedder.encode(text, prompt="passage: {text}"), rtol=0, atol=1e-6)
    assert not np.allclose(as_query, as_text, atol=1e-3)
    nodes = model([TextNode(text=DOCS[1]), TextNode(text=DOCS[2])])  # what an ingestion pipeline calls
    np.testing.assert_allclose(np.array([n.embedding for n in nodes]),
                               embedder.encode(DOCS[1:3], prompt="passage: {text}"), rtol=0, atol=1e-6)
    aquery = asyncio.run(model.aget_query_embedding(text))
    np.testing.assert_allclose(aquery, as_query, rtol=0, atol=1e-6)
    default = MoEEmbedding(embedder=embedder)
    np.testing.assert_allclose(default.get_query_embedding(text), default.get_text_embedding(text), rtol=0, atol=1e-6)


async def test_concurrent_async_queries_equal_sequential_ones(embed_model: MoEEmbedding) -> None:
    queries = [f"query {i} about {DOCS[i % len(DOCS)]}" for i in range(8)]
    sequential = [embed_model.get_query_embedding(q) for q in queries]
    concurrent = await asyncio.gather(*(embed_model.aget_query_embedding(q) for q in queries))
    np.testing.assert_allclose(np.array(concurrent), np.array(sequential), rtol=0, atol=1e-6)


def test_bad_input_is_named(embed_model: MoEEmbedding, embedder: MoEEmbedder) -> None:
    with pytest.raises(TypeError, match="single string"):
        embed_model.get_query_embedding(["a"])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        embed_model.get_text_embedding_batch(["ok", None])
    with pytest.raises(ValueError, match="needs a model"):
        MoEEmbedding()
    with pytest.raises(ValueError, match="document_prompt"):
        MoEEmbedding(embedder=embedder, document_prompt="{text} and {text}")
    with pytest.raises(ValueError, match="mode"):
        MoEEmbedding(embedder=embedder, mode="max")
    with pytest.raises(ValueError, match="embed_batch_size"):
        MoEEmbedding(embedder=embedder, embed_batch_size=0)
    with pytest.raises(ValueError, match="model_kwargs only apply"):
        MoEEmbedding(embedder=embedder, model_kwargs={"dtype": "float32"})


def test_missing_llama_index_names_the_extra() -> None:
    code = (
        "import sys\n"
        "import moee_plugins\n"
        "assert 'llama_index' not in sys.modules, 'importing moee_plugins imported llama_index'\n"
        "sys.modules['llama_index'] = None\n"
        "try:\n"
        "    import moee_plugins.llama_index\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'pip install "moee-plugins[llama-index]"' in result.stdout


@pytest.mark.parametrize(("texts", "match"), [({"a": 1}, "got dict"), ("hello", "single str"),
                                               ({"b", "a"}, "ordered sequence")])
def test_batches_refuse_what_is_not_a_list_of_texts(embed_model: MoEEmbedding, texts: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        embed_model.get_text_embedding_batch(texts)
    with pytest.raises(TypeError, match=match):
        asyncio.run(embed_model.aget_text_embedding_batch(texts))


def test_model_is_the_argument_name_and_model_name_is_deprecated(tiny_alias: str, tiny_embedder) -> None:
    options = {"model_kwargs": {"device": "cpu", "statistics": tiny_embedder.statistics}}
    assert MoEEmbedding(model=tiny_alias, **options).model_name == tiny_alias
    with pytest.warns(DeprecationWarning, match="model_name"):
        old = MoEEmbedding(model_name=tiny_alias, **options)
    assert old.embedder.config["model"] == tiny_alias


def test_compact_vectors_are_the_core_ones_and_retrieve_the_right_node(embedder: MoEEmbedder) -> None:
    from moee_plugins.core.standardize import calibration_sentences

    core = MoEEmbedder.from_config(embedder.config, model=embedder.model, tokenizer=embedder.tokenizer)
    core.fit_reduction(list(calibration_sentences()[:120]), [8, 16])
    compact = MoEEmbedding(embedder=core, dimensions=16)
    np.testing.assert_allclose(compact.get_text_embedding_batch(DOCS), core.encode(DOCS, dimensions=16), atol=1e-6,
                               rtol=0)
    np.testing.assert_allclose(compact.get_query_embedding(DOCS[0]), core.encode(DOCS[0], dimensions=16), atol=1e-6,
                               rtol=0)
    index = VectorStoreIndex([TextNode(text=doc, id_=str(i)) for i, doc in enumerate(DOCS)], embed_model=compact)
    hits = index.as_retriever(similarity_top_k=1).retrieve(DOCS[4])
    assert hits[0].node.get_content() == DOCS[4]
    with pytest.raises(ValueError, match=r"MoEEmbedding.dimensions: dimensions=4 is not fitted"):
        MoEEmbedding(embedder=core, dimensions=4)
