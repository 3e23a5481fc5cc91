"""Clients we did not write (openai, LangChain's OpenAIEmbeddings, LlamaIndex's OpenAIEmbedding) against a
real server on 127.0.0.1: the vectors they get equal in-process ``MoEEmbedder.encode`` of the same texts."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import API_KEY, MODEL_NAME

TEXTS = ["The hockey team won the final.", "GPUs and printers for sale", "A recipe for bread", "x"]


def test_openai_client_float_and_base64(server, tiny_embedder):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0)
    expected = tiny_embedder.encode(TEXTS)
    as_float = client.embeddings.create(model=MODEL_NAME, input=TEXTS, encoding_format="float")
    as_base64 = client.embeddings.create(model=MODEL_NAME, input=TEXTS)  # the client asks for base64 by default
    for response in (as_float, as_base64):
        assert [item.index for item in response.data] == list(range(len(TEXTS)))
        got = np.asarray([item.embedding for item in response.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
        assert response.model == MODEL_NAME
        tokens = sum(len(ids) for ids in tiny_embedder.tokenize(TEXTS))  # prompt included
        assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    single = client.embeddings.create(model=MODEL_NAME, input=TEXTS[1], encoding_format="float")
    np.testing.assert_allclose(single.data[0].embedding, expected[1], atol=1e-6, rtol=0)
    raw = client.embeddings.with_raw_response.create(model=MODEL_NAME, input=TEXTS, encoding_format="base64")
    assert raw.headers["x-moee-truncated"] == "0"
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]


def test_openai_client_full_dimensions_accepted_others_refused(server, tiny_embedder):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0)
    full = client.embeddings.create(model=MODEL_NAME, input=TEXTS[:2], dimensions=tiny_embedder.dim,
                                    encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in full.data], tiny_embedder.encode(TEXTS[:2]), atol=1e-6, rtol=0)
    reduced = tuple(getattr(tiny_embedder, "supported_dimensions", ()) or ())
    with pytest.raises(openai.BadRequestError, match="dimensions=7 is not available"):
        client.embeddings.create(model=MODEL_NAME, input=TEXTS[:2], dimensions=7 if 7 not in reduced else 10**6)


def test_openai_client_gets_compact_vectors_of_a_fitted_reduction(serve_factory, tiny_embedder):
    openai = pytest.importorskip("openai")
    from moee_plugins import MoEEmbedder, calibration_sentences

    compact = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)
    compact.fit_reduction(list(calibration_sentences())[:64], [8, 16])
    running = serve_factory(compact)
    client = openai.OpenAI(base_url=running.v1, api_key=API_KEY, max_retries=0)
    for dims in (8, 16):
        response = client.embeddings.create(model=MODEL_NAME, input=TEXTS, dimensions=dims, encoding_format="float")
        got = np.asarray([d.embedding for d in response.data])
        assert got.shape == (len(TEXTS), dims)
        np.testing.assert_allclose(got, compact.encode(TEXTS, dimensions=dims), atol=1e-6, rtol=0)
    with pytest.raises(openai.BadRequestError, match="dimensions=12 is not available"):
        client.embeddings.create(model=MODEL_NAME, input=TEXTS, dimensions=12)


def test_openai_client_wrong_key_is_refused(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.v1, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid or missing API key"):
        client.embeddings.create(model=MODEL_NAME, input=TEXTS)


def test_langchain_openai_embeddings(server, tiny_embedder):
    langchain_openai = pytest.importorskip("langchain_openai")
    embeddings = langchain_openai.OpenAIEmbeddings(model=MODEL_NAME, base_url=server.v1, api_key=API_KEY,
                                                   check_embedding_ctx_length=False, max_retries=0)
    documents = embeddings.embed_documents(TEXTS)
    np.testing.assert_allclose(np.asarray(documents), tiny_embedder.encode(TEXTS), atol=1e-6, rtol=0)
    query = embeddings.embed_query("Who won the hockey final?")
    np.testing.assert_allclose(query, tiny_embedder.encode("Who won the hockey final?"), atol=1e-6, rtol=0)


async def test_langchain_openai_embeddings_async(server, tiny_embedder):
    langchain_openai = pytest.importorskip("langchain_openai")
    embeddings = langchain_openai.OpenAIEmbeddings(model=MODEL_NAME, base_url=server.v1, api_key=API_KEY,
                                                   check_embedding_ctx_length=False, max_retries=0)
    documents = await embeddings.aembed_documents(TEXTS)
    np.testing.assert_allclose(np.asarray(documents), tiny_embedder.encode(TEXTS), atol=1e-6, rtol=0)


def test_llama_index_openai_embedding(server, tiny_embedder):
    llama_openai = pytest.importorskip("llama_index.embeddings.openai")
    model = llama_openai.OpenAIEmbedding(model_name=MODEL_NAME, api_base=server.v1, api_key=API_KEY, max_retries=0,
                                         embed_batch_size=3)  # 4 texts -> two requests, still in order
    vectors = model.get_text_embedding_batch(TEXTS)
    np.testing.assert_allclose(np.asarray(vectors), tiny_embedder.encode(TEXTS), atol=1e-6, rtol=0)
    query = model.get_query_embedding("bread recipe")
    np.testing.assert_allclose(query, tiny_embedder.encode("bread recipe"), atol=1e-6, rtol=0)


def test_openai_client_token_ids_and_input_type(serve_factory, tiny_embedder):
    """Token ids as the OpenAI API takes them (one list, or a list of lists), and a named prompt through the
    client's ``extra_body``: each equal to in-process ``encode`` of the decoded text with that prompt."""
    openai = pytest.importorskip("openai")
    running = serve_factory(tiny_embedder, prompts={"query": "query: "})
    client = openai.OpenAI(base_url=running.v1, api_key=API_KEY, max_retries=0)
    ids = tiny_embedder.tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    decoded = [tiny_embedder.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    many = client.embeddings.create(model=MODEL_NAME, input=ids)  # base64, as the client asks by default
    np.testing.assert_allclose([d.embedding for d in many.data], tiny_embedder.encode(decoded), atol=1e-6, rtol=0)
    one = client.embeddings.create(model=MODEL_NAME, input=ids[0], encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, tiny_embedder.encode(decoded[0]), atol=1e-6, rtol=0)
    queries = client.embeddings.create(model=MODEL_NAME, input=TEXTS, extra_body={"input_type": "query"})
    np.testing.assert_allclose([d.embedding for d in queries.data], tiny_embedder.encode(TEXTS, prompt="query: "),
                               atol=1e-6, rtol=0)
    with pytest.raises(openai.BadRequestError, match="is not a prompt of this server"):
        client.embeddings.create(model=MODEL_NAME, input=TEXTS, extra_body={"input_type": "summary"})


DOCUMENTS = ["The hockey team won the final.", "bread recipe", "GPUs for sale", "Who won the hockey game?"]


def test_cohere_sdk_rerank(server, tiny_embedder):
    """The official ``cohere`` SDK (v1 and v2 clients) pointed at the server: the ranking and scores equal
    in-process ``similarity``."""
    cohere = pytest.importorskip("cohere")
    query = "hockey final winner"
    expected = tiny_embedder.similarity(tiny_embedder.encode([query]), tiny_embedder.encode(DOCUMENTS))[0]
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    v1 = cohere.Client(api_key=API_KEY, base_url=server.url)
    ranked = v1.rerank(model=MODEL_NAME, query=query, documents=DOCUMENTS, top_n=3, return_documents=True)
    assert [r.index for r in ranked.results] == order[:3]
    np.testing.assert_allclose([r.relevance_score for r in ranked.results], expected[order[:3]], atol=1e-5, rtol=0)
    assert [r.document.text for r in ranked.results] == [DOCUMENTS[i] for i in order[:3]]
    v2 = cohere.ClientV2(api_key=API_KEY, base_url=server.url)
    ranked = v2.rerank(model=MODEL_NAME, query=query, documents=DOCUMENTS)
    assert [r.index for r in ranked.results] == order
    np.testing.assert_allclose([r.relevance_score for r in ranked.results], expected[order], atol=1e-5, rtol=0)
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.Client(api_key="wrong", base_url=server.url).rerank(model=MODEL_NAME, query=query, documents=DOCUMENTS)
