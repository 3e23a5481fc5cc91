"""``moee serve`` with ``long_texts="chunk"``: a long input's vector pools its windows, as the core's does."""

from __future__ import annotations

import numpy as np

from moee_plugins import MoEEmbedder


def test_server_chunks_long_inputs_like_the_core(one_thread, tiny_embedder, serve_factory):
    chunk = MoEEmbedder(tiny_embedder.model, tiny_embedder.tokenizer, device="cpu", max_length=40,
                        long_texts="chunk", chunk_overlap=4, statistics=tiny_embedder.statistics)
    texts = [" ".join(f"Sentence {i} is about hockey and printers." for i in range(12)), "moon",
             " ".join(f"Line {i} talks about the moon and comets." for i in range(9))]
    running = serve_factory(chunk)
    with running.client() as client:
        reply = client.post("/v1/embeddings", json={"input": texts, "model": "moee-tiny"})
    assert reply.status_code == 200, reply.text
    vectors = np.array([row["embedding"] for row in reply.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, chunk.encode(texts), atol=1e-4)
    assert reply.json()["usage"]["prompt_tokens"] > 2 * 40  # every window's tokens are counted
