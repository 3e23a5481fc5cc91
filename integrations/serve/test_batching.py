"""The dynamic batcher merges concurrent requests without misrouting a row, respects its token budget, skips
cancelled requests, refuses (503) rather than queue without bound, and finishes accepted work on shutdown."""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import pytest
from serve_helpers import MODEL_NAME, GatedEmbedder

from moee_plugins.serve import BatchFailed, BatchSettings, DynamicBatcher, NotReady, Overloaded


class FakeEmbedder:
    """Vectors [first token, length]: a row's vector says which input it came from."""

    dim = 2
    statistics = "fixed"
    standardize = None
    supported_dimensions = ()

    def __init__(self, gated: bool = False) -> None:
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.entered = threading.Event()
        self.calls: list[list[list[int]]] = []

    def encode_batch(self, rows):
        self.calls.append([list(r) for r in rows])
        self.entered.set()
        assert self.gate.wait(10), "gate never opened"
        if any(999 in row for row in rows):
            raise RuntimeError("poisoned row")
        return rows

    def ensure_statistics(self):
        return self.statistics

    def combine(self, rows, dimensions=None):
        assert dimensions is None
        return np.asarray([[row[0], len(row)] for row in rows], dtype=np.float32)


def _rows(job_id: int, n: int, length: int = 3) -> list[list[int]]:
    return [[job_id * 100 + i] + [7] * (length - 1) for i in range(n)]


def _check(result: np.ndarray, rows: list[list[int]]) -> None:
    np.testing.assert_array_equal(result, [[row[0], len(row)] for row in rows])


def _wait_for(batcher: DynamicBatcher, predicate, timeout: float = 30) -> None:
    """Wait on the batcher's own condition (signalled on every queue change), never a sleep."""
    assert batcher.wait_until(predicate, timeout), "condition not reached"


@pytest.fixture
def batchers():
    made: list[tuple[DynamicBatcher, FakeEmbedder]] = []

    def make(**settings):
        fake = FakeEmbedder(gated=settings.pop("gated", False))
        batcher = DynamicBatcher(fake, BatchSettings(**{"max_wait_ms": 0, **settings}))
        assert batcher.wait_ready(10)
        made.append((batcher, fake))
        return batcher, fake

    yield make
    for batcher, fake in made:
        fake.gate.set()
        batcher.close(10)


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows(batchers):
    batcher, fake = batchers(gated=True, max_batch_size=64, max_batch_tokens=10_000)
    first_rows = _rows(1, 3)
    first = batcher.submit(first_rows)
    assert fake.entered.wait(5)  # the worker holds request 1 in a forward pass
    later = {job: _rows(job, n, length) for job, n, length in ((2, 5, 4), (3, 1, 9), (4, 7, 2))}
    futures = {job: batcher.submit(rows) for job, rows in later.items()}
    fake.gate.set()
    _check(first.result(10), first_rows)
    for job, future in futures.items():
        _check(future.result(10), later[job])
    assert len(fake.calls) == 2  # 3 requests that waited together -> one forward pass, not three
    assert sorted(r[0] for r in fake.calls[1]) == sorted(r[0] for rows in later.values() for r in rows)


def test_batches_respect_the_padded_token_budget_and_row_cap(batchers):
    batcher, fake = batchers(gated=True, max_batch_size=4, max_batch_tokens=24)
    blocker = batcher.submit(_rows(9, 1))
    assert fake.entered.wait(5)
    jobs = {job: _rows(job, n, length) for job, n, length in ((1, 6, 5), (2, 3, 12), (3, 5, 2))}
    futures = {job: batcher.submit(rows) for job, rows in jobs.items()}
    fake.gate.set()
    for job, future in futures.items():
        _check(future.result(10), jobs[job])
    blocker.result(10)
    for rows in fake.calls[1:]:
        assert len(rows) <= 4
        assert len(rows) == 1 or len(rows) * max(map(len, rows)) <= 24


def test_cancelled_requests_are_skipped_without_touching_others(batchers):
    batcher, fake = batchers(gated=True)
    blocker = batcher.submit(_rows(9, 1))
    assert fake.entered.wait(5)
    gone_rows, kept_rows = _rows(1, 4), _rows(2, 4)
    gone = batcher.submit(gone_rows)
    kept = batcher.submit(kept_rows)
    assert gone.cancel()
    fake.gate.set()
    _check(kept.result(10), kept_rows)
    blocker.result(10)
    computed = {row[0] for rows in fake.calls for row in rows}
    assert not computed & {row[0] for row in gone_rows}
    assert batcher.queued_inputs == 0


def test_a_full_queue_refuses_instead_of_growing(batchers):
    batcher, fake = batchers(gated=True, max_queue_inputs=4)
    running = batcher.submit(_rows(1, 1))
    assert fake.entered.wait(5)
    queued = batcher.submit(_rows(2, 4))  # exactly fills the queue
    with pytest.raises(Overloaded, match="limit 4"):
        batcher.submit(_rows(3, 1))
    fake.gate.set()
    _check(queued.result(10), _rows(2, 4))
    running.result(10)
    _check(batcher.submit(_rows(3, 1)).result(10), _rows(3, 1))  # room again


def test_a_failing_batch_fails_only_its_requests(batchers):
    batcher, _ = batchers(max_batch_size=1)
    poisoned = batcher.submit([[999, 1]])
    healthy = batcher.submit(_rows(2, 2))
    with pytest.raises(BatchFailed, match="failed on this request's input") as failure:
        poisoned.result(10)
    assert "poisoned" in str(failure.value.__cause__)  # the cause stays server-side, for the log
    _check(healthy.result(10), _rows(2, 2))
    _check(batcher.submit(_rows(3, 1)).result(10), _rows(3, 1))


def test_close_finishes_accepted_requests_then_refuses(batchers):
    batcher, fake = batchers(gated=True)
    running = batcher.submit(_rows(1, 2))
    assert fake.entered.wait(5)
    queued = batcher.submit(_rows(2, 3))
    closer = threading.Thread(target=batcher.close, args=(10,))
    closer.start()
    _wait_for(batcher, lambda b: b.closing)
    with pytest.raises(NotReady, match="shutting down"):
        batcher.submit(_rows(3, 1))
    fake.gate.set()
    closer.join(10)
    _check(running.result(1), _rows(1, 2))
    _check(queued.result(1), _rows(2, 3))
    assert not batcher.worker_alive


class ReducingFake(FakeEmbedder):
    """Has compact vectors of 1 dimension (as MoEEmbedder.supported_dimensions / combine(dimensions=) give)."""

    supported_dimensions = (1,)

    def combine(self, rows, dimensions=None):
        full = super().combine(rows)
        return full if dimensions is None else full[:, :dimensions]


def test_full_and_reduced_requests_share_a_batch():
    fake = ReducingFake(gated=True)
    batcher = DynamicBatcher(fake, BatchSettings(max_wait_ms=0))
    try:
        assert batcher.wait_ready(10) and batcher.supports_dimensions(1) and not batcher.supports_dimensions(2)
        blocker = batcher.submit(_rows(9, 1))
        assert fake.entered.wait(5)
        full, reduced = batcher.submit(_rows(1, 2)), batcher.submit(_rows(2, 3), dimensions=1)
        fake.gate.set()
        _check(full.result(10), _rows(1, 2))
        np.testing.assert_array_equal(reduced.result(10), [[row[0]] for row in _rows(2, 3)])
        blocker.result(10)
        assert len(fake.calls) == 2  # one forward pass for both
    finally:
        fake.gate.set()
        batcher.close(10)


def test_a_loader_that_fails_is_reported_not_raised():
    def broken():
        raise OSError("no such model")

    batcher = DynamicBatcher(broken)
    assert not batcher.wait_ready(10)
    assert "no such model" in str(batcher.load_error)
    with pytest.raises(NotReady, match="failed to load"):
        batcher.submit([[1]])


# ------------------------------------------------------------------------------------------- over HTTP
def test_overload_is_503_with_retry_after_and_nothing_is_lost(serve_factory, tiny_embedder, one_thread):
    gated = GatedEmbedder(tiny_embedder)
    running = serve_factory(gated, batch=BatchSettings(max_queue_inputs=4, max_wait_ms=0), max_inputs_per_request=4)
    body = {"model": MODEL_NAME, "input": ["one", "two", "three", "four"], "encoding_format": "float"}
    with concurrent.futures.ThreadPoolExecutor(2) as pool, running.client() as client:
        first = pool.submit(client.post, "/v1/embeddings", json=body)
        assert gated.entered.wait(10)  # request 1 is in the model
        second = pool.submit(client.post, "/v1/embeddings", json=body)
        _wait_for(running.app.state.batcher, lambda b: b.queued_inputs == 4)  # request 2 fills the queue
        refused = client.post("/v1/embeddings", json=body)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        gated.gate.set()
        expected = tiny_embedder.encode(body["input"])
        for future in (first, second):
            response = future.result(30)
            assert response.status_code == 200
            np.testing.assert_allclose([d["embedding"] for d in response.json()["data"]], expected, atol=1e-6, rtol=0)
    assert running.app.state.metrics.sample("moee_rejected_requests_total", {"reason": "overloaded"}) == 1


def test_a_client_that_gives_up_does_not_disturb_others(serve_factory, tiny_embedder, one_thread):
    httpx = pytest.importorskip("httpx")
    gated = GatedEmbedder(tiny_embedder)
    running = serve_factory(gated, batch=BatchSettings(max_wait_ms=0))
    with concurrent.futures.ThreadPoolExecutor(2) as pool, running.client() as client:
        blocker = pool.submit(client.post, "/v1/embeddings", json={"input": "first", "encoding_format": "float"})
        assert gated.entered.wait(10)
        kept = pool.submit(client.post, "/v1/embeddings", json={"input": ["kept a", "kept b"], "encoding_format": "float"})
        _wait_for(running.app.state.batcher, lambda b: b.queued_inputs == 2)  # queued behind the forward pass
        with running.client(timeout=0.3) as impatient, pytest.raises(httpx.TimeoutException):
            impatient.post("/v1/embeddings", json={"input": ["never read"] * 3})  # gives up while the model is busy
        gated.gate.set()
        response = kept.result(30)
        assert blocker.result(30).status_code == 200
    assert response.status_code == 200
    got = np.asarray([d["embedding"] for d in response.json()["data"]])
    np.testing.assert_allclose(got, tiny_embedder.encode(["kept a", "kept b"]), atol=1e-6, rtol=0)


def test_graceful_shutdown_finishes_accepted_requests(serve_factory, tiny_embedder, one_thread):
    httpx = pytest.importorskip("httpx")
    gated = GatedEmbedder(tiny_embedder)
    running = serve_factory(gated, batch=BatchSettings(max_wait_ms=0))
    texts = [[f"text {i}", f"other {i}"] for i in range(3)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool, running.client() as client:
        def post(t):
            return pool.submit(client.post, "/v1/embeddings", json={"input": t, "encoding_format": "float"})

        futures = [post(texts[0])]
        assert gated.entered.wait(10)  # request 1 is in the model, the others queue behind it
        futures += [post(t) for t in texts[1:]]
        _wait_for(running.app.state.batcher, lambda b: b.queued_inputs == 4)  # all three accepted
        shutting_down = threading.Event()
        shutdown = running.server.shutdown

        async def shutdown_observed(*args, **kwargs):  # uvicorn's graceful shutdown has begun: it stops listening
            shutting_down.set()
            await shutdown(*args, **kwargs)

        running.server.shutdown = shutdown_observed
        running.server.should_exit = True  # what SIGTERM does
        assert shutting_down.wait(30)
        gated.gate.set()
        for t, future in zip(texts, futures, strict=True):
            response = future.result(30)
            assert response.status_code == 200
            np.testing.assert_allclose([d["embedding"] for d in response.json()["data"]], tiny_embedder.encode(t),
                                       atol=1e-6, rtol=0)
    running.thread.join(30)
    assert not running.thread.is_alive()
    assert not running.app.state.batcher.worker_alive
    with pytest.raises(httpx.TransportError), httpx.Client(timeout=2) as client:
        client.get(f"{running.url}/health")
