"""Bounded loopback load: 64 concurrent clients, a few hundred requests of 1-8 texts; every request gets its own
vectors in its own order (equal to in-process encode), every text is computed exactly once, the batch metrics
count the forward passes the model really ran, and requests really were merged into batches.
The full 2,000-request run with throughput figures is benchmarks/serve_load.py."""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest
from serve_helpers import API_KEY, MODEL_NAME

from moee_plugins.serve import BatchSettings

CLIENTS = 64
REQUESTS = 256


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["market", "hockey", "GPU", "bread", "league", "printer", "river", "model", "vote", "engine", "cloud", "garden"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) + f" #{i}" for i in range(n)]


@pytest.mark.slow
def test_concurrent_load_every_request_answered_once_with_its_own_vectors(serve_factory, tiny_embedder, one_thread):
    httpx = pytest.importorskip("httpx")
    running = serve_factory(tiny_embedder, batch=BatchSettings(max_batch_size=64, max_batch_tokens=4096, max_wait_ms=2))
    corpus = _corpus(400)
    expected = tiny_embedder.encode(corpus)
    rng = random.Random(1)
    requests = [rng.sample(range(len(corpus)), rng.randint(1, 8)) for _ in range(REQUESTS)]
    answers: dict[int, np.ndarray] = {}

    async def client_loop(queue: asyncio.Queue, client) -> None:
        while True:
            try:
                request_id = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            texts = [corpus[i] for i in requests[request_id]]
            response = await client.post("/v1/embeddings", json={"model": MODEL_NAME, "input": texts,
                                                                  "encoding_format": "float"})
            assert response.status_code == 200, response.text
            data = response.json()["data"]
            assert [d["index"] for d in data] == list(range(len(texts)))
            answers[request_id] = np.asarray([d["embedding"] for d in data], dtype=np.float32)

    async def main() -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for request_id in range(REQUESTS):
            queue.put_nowait(request_id)
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=running.url, headers={"Authorization": f"Bearer {API_KEY}"},
                                     timeout=60, limits=limits) as client:
            await asyncio.wait_for(asyncio.gather(*(client_loop(queue, client) for _ in range(CLIENTS))), timeout=120)

    passes = []  # the model's own forward calls: what really ran, whatever the server's metrics say
    hook = tiny_embedder.model.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    started = time.perf_counter()
    try:
        asyncio.run(main())
    finally:
        hook.remove()
    elapsed = time.perf_counter() - started
    assert sorted(answers) == list(range(REQUESTS))
    for request_id, got in answers.items():
        np.testing.assert_allclose(got, expected[requests[request_id]], atol=1e-6, rtol=0)
    metrics = running.app.state.metrics
    batches = metrics.sample("moee_batch_size_count")
    inputs = sum(len(r) for r in requests)
    assert sum(passes) == inputs  # every text went through the model once, none twice
    assert batches == len(passes)  # the metrics count the forward passes that ran, not batches planned
    assert metrics.sample("moee_batch_size_sum") == inputs
    assert batches < REQUESTS / 2, f"{batches} forward passes for {REQUESTS} requests: requests were not merged"
    print(f"{REQUESTS} requests / {inputs} texts in {elapsed:.1f} s; mean batch {inputs / batches:.1f} texts")
