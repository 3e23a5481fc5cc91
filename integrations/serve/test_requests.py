"""Bad requests get the right 4xx with a message naming the problem (OpenAI's error shape), and the server
keeps serving; plus truncation reporting, /similarity, /v1/models, /health and /metrics."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import API_KEY, MODEL_NAME, assert_error

GOOD = {"model": MODEL_NAME, "input": ["still serving", "fine"], "encoding_format": "float"}


@pytest.mark.parametrize(
    ("body", "fragment", "param"),
    [
        ({"model": MODEL_NAME}, "'input' is required", "input"),
        ({"input": []}, "must not be an empty list", "input"),
        ({"input": ""}, "'input[0]' is an empty string", "input"),
        ({"input": ["ok", None]}, "'input[1]' must be a string, got null", "input"),
        ({"input": ["ok", 1.5]}, "'input[1]' must be a string, got a number", "input"),
        ({"input": [{"text": "a"}]}, "'input[0]' must be a string, got an object", "input"),
        ({"input": {"text": "a"}}, "'input' must be a string, a list of strings or token ids, got an object", "input"),
        ({"input": [[1, 2], []]}, "'input[1]' is an empty list", "input"),
        ({"input": [[1, 2], [3, "a"]]}, "'input[1]' must hold only integers (token ids)", "input"),
        ({"input": [[1, 2], [3, True]]}, "'input[1]' must hold only integers (token ids)", "input"),
        ({"input": [-1]}, "'input[0]' holds token id -1, outside this model's vocabulary", "input"),
        ({"input": [[5], [10**9]]}, "'input[1]' holds token id 1000000000, outside", "input"),
        ({"input": "a", "model": 5}, "'model' must be a string, got a number", "model"),
        ({"input": "a", "truncate": "no"}, "'truncate' must be true or false, got 'no'", "truncate"),
        ({"input": "a", "prompt_name": "querry"}, "'prompt_name' 'querry' is not a prompt of this server; it knows "
         "['document', 'query']", "prompt_name"),
        ({"input": "a", "input_type": ["query"]}, "'input_type' must be a string naming a prompt, got a list", "input_type"),
        ({"input": "a", "input_type": "query", "prompt_name": "document"}, "name different prompts", "prompt_name"),
        ({"input": "a", "encoding_format": ["float"]}, "'encoding_format' must be one of", "encoding_format"),
        ({"input": "a", "encoding_format": "int8"}, "'encoding_format' must be one of", "encoding_format"),
        ({"input": "a", "dimensions": 0}, "'dimensions' must be a positive integer", "dimensions"),
        ({"input": "a", "dimensions": "64"}, "'dimensions' must be a positive integer", "dimensions"),
    ],
)
def test_bad_embedding_bodies_are_400(server, body, fragment, param):
    with server.client() as client:
        error = assert_error(client.post("/v1/embeddings", json=body), 400, fragment)
        assert error["param"] == param and error["type"] == "invalid_request_error"
        assert client.post("/v1/embeddings", json=GOOD).status_code == 200


def test_wrong_json_and_wrong_model(server):
    with server.client() as client:
        as_json = {"Content-Type": "application/json"}
        assert_error(client.post("/v1/embeddings", content=b'{"input": ["a",', headers=as_json), 400, "not valid JSON",
               "invalid_json")
        assert_error(client.post("/v1/embeddings", content=b"", headers=as_json), 400, "no body", "invalid_json")
        assert_error(client.post("/v1/embeddings", json=["a", "b"]), 400, "must be a JSON object, got a list")
        assert_error(client.post("/v1/embeddings", json={"model": "gpt-4", "input": "a"}), 404,
               f"this server serves '{MODEL_NAME}'", "model_not_found")
        assert_error(client.get("/v1/embeddings"), 405, "Method Not Allowed")
        assert_error(client.get("/v2/nothing"), 404, "Not Found", "not_found")
        assert client.post("/v1/embeddings", json=GOOD).status_code == 200


def test_too_many_inputs_and_too_large_bodies(serve_factory, tiny_embedder):
    running = serve_factory(tiny_embedder, max_inputs_per_request=8, max_request_bytes=4096)
    with running.client() as client:
        assert_error(client.post("/v1/embeddings", json={"input": ["a"] * 9}), 400, "at most 8 per request", "too_many_inputs")
        assert_error(client.post("/v1/embeddings", json={"input": "word " * 2000}), 413, "at most 4096", "request_too_large")
        # no Content-Length (chunked): the limit holds while reading
        chunks = iter([b'{"input": "', b"w" * 5000, b'"}'])
        assert_error(client.post("/v1/embeddings", content=chunks, headers={"Content-Type": "application/json"}), 413,
               "at most 4096", "request_too_large")
        ok = client.post("/v1/embeddings", json={"input": ["a"] * 8, "encoding_format": "float"})
        assert ok.status_code == 200 and len(ok.json()["data"]) == 8


def test_api_key_on_every_route_but_health(server):
    with server.client(key=None) as anonymous:
        assert anonymous.get("/health").json() == {"status": "ok", "model": MODEL_NAME}
        for method, route in (("post", "/v1/embeddings"), ("get", "/v1/models"), ("post", "/similarity"),
                              ("get", "/metrics")):
            response = getattr(anonymous, method)(route, **({"json": GOOD} if method == "post" else {}))
            assert_error(response, 401, "invalid or missing API key", "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
    for key in ("wrong", API_KEY + "x", API_KEY[:-1]):
        with server.client(key=key) as client:
            assert_error(client.post("/v1/embeddings", json=GOOD), 401, "invalid or missing API key")
    with server.client(key=None, headers={"Authorization": f"Basic {API_KEY}"}) as client:
        assert_error(client.post("/v1/embeddings", json=GOOD), 401, "invalid or missing API key")
    with server.client() as client:
        assert client.post("/v1/embeddings", json=GOOD).status_code == 200


def test_long_texts_are_truncated_as_the_core_does_and_reported(server, tiny_embedder):
    long_text = " ".join(f"word{i}" for i in range(4 * tiny_embedder.max_length))
    texts = ["short", long_text, "also short"]
    with server.client() as client:
        response = client.post("/v1/embeddings", json={"model": MODEL_NAME, "input": texts, "encoding_format": "float"})
    assert response.status_code == 200
    assert response.headers["x-moee-truncated"] == "1"
    assert response.headers["x-moee-truncated-indices"] == "1"
    got = np.asarray([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_embedder.encode(texts), atol=1e-6, rtol=0)
    assert response.json()["usage"]["prompt_tokens"] == sum(len(ids) for ids in tiny_embedder.tokenize(texts))


def test_similarity_models_and_metrics(server, tiny_embedder):
    queries, documents = ["hockey final"], ["The hockey team won.", "bread recipe", "GPUs"]
    with server.client() as client:
        response = client.post("/similarity", json={"queries": queries, "documents": documents})
        assert response.status_code == 200
        body = response.json()
        assert body["mode"] == tiny_embedder.mode
        expected = tiny_embedder.similarity(tiny_embedder.encode(queries), tiny_embedder.encode(documents))
        np.testing.assert_allclose(body["data"], expected, atol=1e-5, rtol=0)
        assert_error(client.post("/similarity", json={"queries": queries}), 400, "'documents' is required")
        models = client.get("/v1/models").json()
        assert models["data"][0]["id"] == MODEL_NAME and models["data"][0]["dimensions"] == tiny_embedder.dim
        text = client.get("/metrics").text
    for name in ("moee_requests_total", "moee_inputs_total", "moee_tokens_total", "moee_batch_size_bucket",
                 "moee_queue_seconds_bucket", "moee_request_seconds_bucket", "moee_batch_seconds_bucket"):
        assert name in text
    assert 'moee_requests_total{route="/similarity",status="200"}' in text
    metrics = server.app.state.metrics
    assert metrics.sample("moee_inputs_total") >= 4
    assert metrics.sample("moee_batch_size_count") >= 1
