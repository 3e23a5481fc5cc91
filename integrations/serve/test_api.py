"""Per-request prompts (``prompt_name`` / ``input_type``), token-id input, ``truncate: false`` and ``/v1/rerank``
against a real server on 127.0.0.1, each equal to the in-process call it stands for."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import MODEL_NAME

PROMPTS = {"query": "query: ", "document": "passage: ", "title": "Title: {text}", "plain": "raw"}
TEXTS = ["The hockey team won the final.", "GPUs and printers for sale", "A recipe for bread"]


@pytest.fixture(scope="module")
def prompted(one_thread, tiny_embedder):
    from serve_helpers import start_server

    running = start_server(tiny_embedder, prompts=PROMPTS)
    yield running
    running.stop()


def _vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def _embed(client, **body):
    return client.post("/v1/embeddings", json={"model": MODEL_NAME, "encoding_format": "float", **body})


@pytest.mark.parametrize("field", ["prompt_name", "input_type"])
def test_named_prompts_equal_in_process_encode(prompted, tiny_embedder, field):
    with prompted.client() as client:
        for name, prompt in PROMPTS.items():
            got = _vectors(_embed(client, input=TEXTS, **{field: name}))
            np.testing.assert_allclose(got, tiny_embedder.encode(TEXTS, prompt=prompt), atol=1e-6, rtol=0)
        plain = _vectors(_embed(client, input=TEXTS))
        error = client.post("/v1/embeddings", json={"input": "a", field: "summary"}).json()["error"]
    np.testing.assert_allclose(plain, tiny_embedder.encode(TEXTS), atol=1e-6, rtol=0)
    assert not np.allclose(tiny_embedder.encode(TEXTS, prompt="query: "), plain, atol=1e-3)  # the prompt matters
    assert error["param"] == field and error["code"] == "unknown_prompt"
    assert "['document', 'plain', 'query', 'title']" in error["message"]


def test_query_and_document_default_to_the_models_own_prompt(server, tiny_embedder):
    with server.client() as client:
        for name in ("query", "document"):
            got = _vectors(_embed(client, input=TEXTS, input_type=name))
            np.testing.assert_allclose(got, tiny_embedder.encode(TEXTS), atol=1e-6, rtol=0)


def test_token_ids_equal_the_text_they_decode_to(prompted, tiny_embedder):
    tokenizer = tiny_embedder.tokenizer
    bare = tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    with_specials = tokenizer(TEXTS, add_special_tokens=True)["input_ids"]
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in bare]
    with prompted.client() as client:
        for ids in (bare, with_specials):
            np.testing.assert_allclose(_vectors(_embed(client, input=ids)), tiny_embedder.encode(decoded),
                                       atol=1e-6, rtol=0)
        single = _vectors(_embed(client, input=bare[1]))  # one input as a single list of ints
        np.testing.assert_allclose(single, tiny_embedder.encode(decoded[1:2]), atol=1e-6, rtol=0)
        queried = _vectors(_embed(client, input=bare, input_type="query"))
        np.testing.assert_allclose(queried, tiny_embedder.encode(decoded, prompt="query: "), atol=1e-6, rtol=0)
        mixed = _vectors(_embed(client, input=[bare[0], TEXTS[1]]))
        np.testing.assert_allclose(mixed, tiny_embedder.encode([decoded[0], TEXTS[1]]), atol=1e-6, rtol=0)
        usage = _embed(client, input=bare).json()["usage"]["prompt_tokens"]
    assert usage == sum(len(row) for row in tiny_embedder.tokenize(decoded))


def test_truncate_false_refuses_over_long_inputs_naming_their_length(prompted, tiny_embedder):
    limit = tiny_embedder.max_length
    long_text = " ".join(f"word{i}" for i in range(2 * limit))
    whole = len(tiny_embedder.tokenizer(tiny_embedder.prompt_for("query: ").format(long_text))["input_ids"])
    long_ids = [10 + i % 200 for i in range(limit + 5)]
    with prompted.client() as client:
        refused = client.post("/v1/embeddings", json={"input": ["short", long_text], "truncate": False,
                                                      "input_type": "query"})
        assert refused.status_code == 413, refused.text
        error = refused.json()["error"]
        assert error["code"] == "input_too_long" and error["param"] == "input"
        assert f"'input[1]' has {whole} tokens with the prompt; this model takes at most {limit}" in error["message"]
        ids_refused = client.post("/v1/embeddings", json={"input": [long_ids], "truncate": False}).json()["error"]
        assert f"'input[0]' has {len(long_ids)} token ids; this model takes at most {limit}" in ids_refused["message"]
        fits = _embed(client, input=["short", "also short"], truncate=False)
        cut = _embed(client, input=["short", long_text])  # truncate defaults to true: cut inside the prompt
    np.testing.assert_allclose(_vectors(fits), tiny_embedder.encode(["short", "also short"]), atol=1e-6, rtol=0)
    assert cut.headers["x-moee-truncated-indices"] == "1"
    np.testing.assert_allclose(_vectors(cut), tiny_embedder.encode(["short", long_text]), atol=1e-6, rtol=0)


def _expected_scores(embedder, query, documents, query_prompt=None, document_prompt=None) -> np.ndarray:
    return embedder.similarity(embedder.encode([query], prompt=query_prompt),
                               embedder.encode(documents, prompt=document_prompt))[0]


DOCUMENTS = ["The hockey team won the final.", "bread recipe", "GPUs for sale", "Who won the hockey game?"]


@pytest.mark.parametrize("route", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_equals_in_process_similarity(prompted, tiny_embedder, route):
    query = "hockey final winner"
    expected = _expected_scores(tiny_embedder, query, DOCUMENTS, "query: ", "passage: ")
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    with prompted.client() as client:
        body = client.post(route, json={"model": MODEL_NAME, "query": query, "documents": DOCUMENTS}).json()
        top = client.post(route, json={"query": query, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 2,
                                       "return_documents": True}).json()
    assert [r["index"] for r in body["results"]] == order
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], expected[order], atol=1e-5, rtol=0)
    assert "document" not in body["results"][0] and body["model"] == MODEL_NAME and body["usage"]["total_tokens"] > 0
    assert [r["index"] for r in top["results"]] == order[:2]
    assert [r["document"]["text"] for r in top["results"]] == [DOCUMENTS[i] for i in order[:2]]


def test_rerank_in_teis_shape_and_with_one_prompt(server, tiny_embedder):
    query = "bread"
    expected = _expected_scores(tiny_embedder, query, DOCUMENTS)
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    with server.client() as client:
        tei = client.post("/rerank", json={"query": query, "texts": DOCUMENTS, "return_text": True}).json()
        bad = [client.post("/v1/rerank", json=body).json()["error"]["message"] for body in (
            {"documents": DOCUMENTS}, {"query": query}, {"query": query, "documents": []},
            {"query": query, "documents": DOCUMENTS, "top_n": 0}, {"query": query, "documents": [1]})]
    assert [r["index"] for r in tei] == order and [r["text"] for r in tei] == [DOCUMENTS[i] for i in order]
    np.testing.assert_allclose([r["score"] for r in tei], expected[order], atol=1e-5, rtol=0)
    assert bad == ["'query' is required: the text to rank the documents against",
                   "'documents' is required: a string or a list of strings",
                   "'documents' must not be an empty list",
                   "'top_n' must be a positive integer, got 0",
                   "'documents[0]' must be a string, got a number"]
