"""MoEEmbeddings beyond the standard suites: parity with the core, shared models, prompts, a retrieval flow,
async concurrency and clear errors. Offline, on the tiny local MoE model."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

import moee_plugins.core.loading as core_loading
from moee_plugins.langchain import MoEEmbeddings

DOCS = [
    "The hockey team won the championship after a dramatic overtime goal.",
    "Our printer driver crashes whenever the GPU runs out of memory.",
    "Bake the bread at two hundred degrees for forty minutes.",
    "The senate passed the budget bill late on Thursday night.",
    "Astronomers observed a new comet near the orbit of Jupiter.",
    "She planted tomatoes, basil and peppers in the spring garden.",
]
QUERIES = [f"question number {i}: what about {word}?" for i, word in
           enumerate(["hockey", "printers", "bread", "budget", "comets", "gardens", "memory", "overtime"])]


@pytest.fixture(scope="module")
def embeddings(tiny_embedder) -> MoEEmbeddings:
    return MoEEmbeddings(embedder=tiny_embedder)


def test_wraps_an_existing_embedder_without_loading(tiny_embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded a second time")

    monkeypatch.setattr(core_loading, "load_model", no_loading)  # where the one builder loads
    first = MoEEmbeddings(embedder=tiny_embedder)
    second = MoEEmbeddings(embedder=first.embedder, mode="hs", query_prompt="query: {text}")
    assert first.embedder is tiny_embedder
    assert second.embedder is tiny_embedder
    assert first.model == tiny_embedder.config["model"]
    assert (first.mode, first.alpha) == (tiny_embedder.mode, tiny_embedder.alpha)


def test_documents_match_the_core_and_keep_row_order(embeddings: MoEEmbeddings, tiny_embedder) -> None:
    vectors = embeddings.embed_documents(DOCS)
    np.testing.assert_allclose(np.array(vectors), tiny_embedder.encode(DOCS), rtol=0, atol=1e-6)
    reversed_vectors = embeddings.embed_documents(DOCS[::-1])
    np.testing.assert_allclose(np.array(reversed_vectors), np.array(vectors)[::-1], rtol=0, atol=1e-5)


def test_vectors_are_plain_python_floats(embeddings: MoEEmbeddings) -> None:
    vectors = embeddings.embed_documents(DOCS[:2])
    query = embeddings.embed_query(DOCS[0])
    assert type(vectors) is list and all(type(row) is list for row in vectors)
    assert all(type(x) is float for row in [*vectors, query] for x in row)
    assert len(query) == len(vectors[0]) == embeddings.embedder.dim


def test_loading_by_alias_reproduces_the_shared_embedder(tiny_alias: str, tiny_embedder) -> None:
    loaded = MoEEmbeddings(model=tiny_alias, model_kwargs={"device": "cpu", "statistics": tiny_embedder.statistics})
    assert loaded.embedder is not tiny_embedder
    assert loaded.model == tiny_alias
    np.testing.assert_allclose(np.array(loaded.embed_documents(DOCS[:3])), tiny_embedder.encode(DOCS[:3]),
                               rtol=0, atol=1e-6)


def test_default_prompts_embed_queries_and_documents_alike(embeddings: MoEEmbeddings) -> None:
    np.testing.assert_allclose(embeddings.embed_query(DOCS[2]), embeddings.embed_documents([DOCS[2]])[0],
                               rtol=0, atol=1e-6)


def test_query_and_document_prompts_go_to_their_side(tiny_embedder) -> None:
    asym = MoEEmbeddings(embedder=tiny_embedder, query_prompt="query: {text}", document_prompt="passage: {text}")
    text = DOCS[1]
    query, document = np.array(asym.embed_query(text)), np.array(asym.embed_documents([text])[0])
    np.testing.assert_allclose(query, tiny_embedder.encode(text, prompt="query: {text}"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(document, tiny_embedder.encode(text, prompt="passage: {text}"), rtol=0, atol=1e-6)
    assert not np.allclose(query, document, atol=1e-3)


def test_a_different_mode_on_a_shared_embedder_leaves_it_untouched(tiny_embedder) -> None:
    hs = MoEEmbeddings(embedder=tiny_embedder, mode="hs")
    vector = np.array(hs.embed_query(DOCS[0]))
    assert vector.shape == (tiny_embedder.hidden_dim,)
    np.testing.assert_allclose(vector, tiny_embedder.combine(tiny_embedder.encode_parts([DOCS[0]]), "hs")[0],
                               rtol=0, atol=1e-6)
    heavy = MoEEmbeddings(embedder=tiny_embedder, alpha=4.0)
    assert np.linalg.norm(heavy.embed_query(DOCS[0])) == pytest.approx(1.0, rel=1e-5)  # unit length for any alpha
    assert (tiny_embedder.mode, tiny_embedder.alpha) == ("sum", 1.0)


def test_in_memory_vector_store_ranks_the_exact_duplicate_first(embeddings: MoEEmbeddings) -> None:
    store = InMemoryVectorStore(embedding=embeddings)
    ids = store.add_documents([Document(page_content=text, metadata={"row": i}) for i, text in enumerate(DOCS)])
    assert len(ids) == len(DOCS)
    retriever = store.as_retriever(search_kwargs={"k": 3})
    for i, text in enumerate(DOCS):
        top = store.similarity_search(text, k=2)
        assert top[0].page_content == text and top[0].metadata["row"] == i
    for text in DOCS[:2]:
        hits = retriever.invoke(text)
        assert len(hits) == 3 and hits[0].page_content == text
    scored = store.similarity_search_with_score(DOCS[4], k=len(DOCS))
    assert scored[0][1] == pytest.approx(1.0, abs=1e-5)
    assert all(score < scored[0][1] - 1e-4 for _, score in scored[1:])


async def test_async_retrieval(embeddings: MoEEmbeddings) -> None:
    store = await InMemoryVectorStore.afrom_texts(DOCS, embedding=embeddings)
    hits = await store.as_retriever(search_kwargs={"k": 1}).ainvoke(DOCS[3])
    assert hits[0].page_content == DOCS[3]


async def test_concurrent_async_queries_equal_sequential_ones(embeddings: MoEEmbeddings) -> None:
    sequential = [embeddings.embed_query(q) for q in QUERIES]
    concurrent = await asyncio.gather(*(embeddings.aembed_query(q) for q in QUERIES))
    assert len(concurrent) == 8
    np.testing.assert_allclose(np.array(concurrent), np.array(sequential), rtol=0, atol=1e-6)
    batched = await asyncio.gather(embeddings.aembed_documents(QUERIES[:4]), embeddings.aembed_documents(QUERIES[4:]))
    np.testing.assert_allclose(np.array(batched[0] + batched[1]), np.array(sequential), rtol=0, atol=1e-5)


async def test_async_calls_do_not_block_the_event_loop(embeddings: MoEEmbeddings) -> None:
    ticks, done = 0, False

    async def heartbeat() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    beat = asyncio.create_task(heartbeat())
    await embeddings.aembed_documents(DOCS)
    ticks_while_embedding = ticks  # a blocking implementation never lets the heartbeat run
    done = True
    await beat
    assert ticks_while_embedding > 0


def test_bad_input_is_named(embeddings: MoEEmbeddings, tiny_embedder) -> None:
    assert embeddings.embed_documents([]) == []
    with pytest.raises(TypeError, match="list of strings"):
        embeddings.embed_documents("one string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        embeddings.embed_documents(["fine", 3])
    with pytest.raises(TypeError, match="single string"):
        embeddings.embed_query(["not", "a", "string"])
    with pytest.raises(ValueError, match="needs a model"):
        MoEEmbeddings()
    with pytest.raises(TypeError, match="MoEEmbedder"):
        MoEEmbeddings(embedder="moee:olmoe")
    with pytest.raises(ValueError, match="model_kwargs only apply"):
        MoEEmbeddings(embedder=tiny_embedder, model_kwargs={"device": "cpu"})
    with pytest.raises(ValueError, match="disagrees"):
        MoEEmbeddings(embedder=tiny_embedder, model="moee:something-else")
    with pytest.raises(ValueError, match="query_prompt"):
        MoEEmbeddings(embedder=tiny_embedder, query_prompt="{text} and {text}")
    with pytest.raises(ValueError, match="mode"):
        MoEEmbeddings(embedder=tiny_embedder, mode="max")
    with pytest.raises(ValueError, match="alpha"):
        MoEEmbeddings(embedder=tiny_embedder, alpha=-1)
    with pytest.raises(ValueError, match="batch_size"):
        MoEEmbeddings(embedder=tiny_embedder, batch_size=0)
    with pytest.raises(ValueError, match="own fields"):
        MoEEmbeddings(model="moee:tiny-olmoe", model_kwargs={"mode": "hs"})
    with pytest.raises(ValueError, match="unknown_field"):
        MoEEmbeddings(embedder=tiny_embedder, unknown_field=1)


def test_missing_langchain_names_the_extra() -> None:
    code = (
        "import sys\n"
        "import moee_plugins\n"
        "assert 'langchain_core' not in sys.modules, 'importing moee_plugins imported langchain_core'\n"
        "sys.modules['langchain_core'] = None\n"
        "try:\n"
        "    import moee_plugins.langchain\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'pip install "moee-plugins[langchain]"' in result.stdout


@pytest.mark.parametrize(("texts", "match"), [({"a": 1}, "got dict"), ("hello", "single str"),
                                               ({"b", "a"}, "ordered sequence")])
def test_documents_must_be_a_list_of_texts(embeddings: MoEEmbeddings, texts, match) -> None:
    with pytest.raises(TypeError, match=match):
        embeddings.embed_documents(texts)


def test_embeddings_pickle_and_give_the_same_vectors(embeddings: MoEEmbeddings) -> None:
    import pickle

    clone = pickle.loads(pickle.dumps(embeddings))
    np.testing.assert_array_equal(np.array(clone.embed_documents(DOCS[:2])), np.array(embeddings.embed_documents(DOCS[:2])))


def test_one_prompt_rule_and_one_model_name_across_adapters(tiny_embedder) -> None:
    """A "query: " instruction gives the same vector in the core, LangChain, LlamaIndex and sentence-transformers."""
    pytest.importorskip("llama_index.core")
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from moee_plugins.llama_index import MoEEmbedding
    from moee_plugins.sentence_transformers import MoEEModule

    text = DOCS[0]
    core = tiny_embedder.encode(text, prompt="query: ")
    langchain = MoEEmbeddings(embedder=tiny_embedder, query_prompt="query: ").embed_query(text)
    llama = MoEEmbedding(embedder=tiny_embedder, query_prompt="query: ").get_query_embedding(text)
    st = SentenceTransformer(modules=[MoEEModule(tiny_embedder)], device="cpu").encode(text, prompt="query: ")
    for vector in (langchain, llama, st):
        np.testing.assert_allclose(np.asarray(vector), core, rtol=0, atol=1e-5)
    assert np.abs(core - tiny_embedder.encode(text)).max() > 1e-4  # the instruction did something


def test_compact_vectors_are_the_core_ones_and_an_unfitted_size_is_refused(tiny_embedder) -> None:
    from moee_plugins import MoEEmbedder
    from moee_plugins.core.standardize import calibration_sentences

    core = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)
    core.fit_reduction(list(calibration_sentences()[:120]), [8, 16])
    compact = MoEEmbeddings(embedder=core, dimensions=8)
    np.testing.assert_allclose(compact.embed_documents(DOCS), core.encode(DOCS, dimensions=8), atol=1e-6, rtol=0)
    np.testing.assert_allclose(compact.embed_query(QUERIES[0]), core.encode(QUERIES[0], dimensions=8), atol=1e-6, rtol=0)
    store = InMemoryVectorStore.from_texts(DOCS, embedding=compact)
    assert store.similarity_search(DOCS[2], k=1)[0].page_content == DOCS[2]  # an exact duplicate comes first
    with pytest.raises(ValueError, match=r"MoEEmbeddings.dimensions: dimensions=12 is not fitted"):
        MoEEmbeddings(embedder=core, dimensions=12)
    with pytest.raises(ValueError, match=r"MoEEmbeddings.dimensions: dimensions=8: no reduction is fitted"):
        MoEEmbeddings(embedder=tiny_embedder, dimensions=8)
