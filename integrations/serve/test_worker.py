"""The supervised, staged worker (issue #25 item 1, #23 item 3): tokenising shared fairly and outside any global
lock, exactly the planned batches run (and counted), a short request not held behind long batches, combining off
the forward thread, a queue bounded in tokens, /health that sees a dead or stalled worker, a server-side request
timeout, and a failing input that fails only its own client with an error body free of internals.

Every wait is on an event or the batcher's condition; no assertion depends on timing."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import numpy as np
import pytest
from serve_helpers import GatedEmbedder

from moee_plugins.serve import BatchSettings, DynamicBatcher, Overloaded
from moee_plugins.serve.scheduling import next_batch


class Rows:
    """A fake embedder's input: vectors [first token, length] say which input a row came from."""

    dim = 2
    statistics = "fixed"
    supported_dimensions = ()

    def __init__(self) -> None:
        self.forward_gate = threading.Event()
        self.forward_gate.set()
        self.combine_gate = threading.Event()
        self.combine_gate.set()
        self.forward_entered = threading.Event()
        self.combine_entered = threading.Event()
        self.calls: list[list[list[int]]] = []

    def ensure_statistics(self) -> None:
        return None

    def encode_batch(self, rows):
        self.calls.append([list(r) for r in rows])
        self.forward_entered.set()
        assert self.forward_gate.wait(30), "forward gate never opened"
        return [list(r) for r in rows]

    def combine(self, rows, dimensions=None):
        self.combine_entered.set()
        assert self.combine_gate.wait(30), "combine gate never opened"
        return np.asarray([[row[0], len(row)] for row in rows], dtype=np.float32)


@pytest.fixture
def make_batcher():
    made: list[tuple[DynamicBatcher, Rows]] = []

    def make(**settings: Any) -> tuple[DynamicBatcher, Rows]:
        fake = Rows()
        batcher = DynamicBatcher(fake, BatchSettings(**{"max_wait_ms": 0, **settings}))
        assert batcher.wait_ready(10)
        made.append((batcher, fake))
        return batcher, fake

    yield make
    for batcher, fake in made:
        fake.forward_gate.set()
        fake.combine_gate.set()
        batcher.close(10)


# ------------------------------------------------------------------------------------------- scheduling
def test_a_short_request_runs_in_the_next_pass_not_behind_a_window_of_long_batches(make_batcher):
    batcher, fake = make_batcher(max_batch_size=64, max_batch_tokens=200, window_batches=8)
    fake.forward_gate.clear()
    blocker = batcher.submit([[1, 2]])
    assert fake.forward_entered.wait(10)
    long_rows = [[100 + i] + [7] * 99 for i in range(16)]  # 8 batches of 2 rows of 100 tokens
    long = batcher.submit(long_rows)
    short = batcher.submit([[5, 7, 7]])
    fake.forward_gate.set()
    np.testing.assert_array_equal(short.result(10), [[5, 3]])
    long.result(10)
    blocker.result(10)
    assert [5, 7, 7] in fake.calls[1]  # the very next forward pass after the one running when it arrived


class _Job:
    def __init__(self, lengths: list[int]) -> None:
        self.token_ids = [[0] * n for n in lengths]
        self.todo = list(range(len(lengths)))
        self.skipped = 0


def test_a_long_request_is_not_starved_by_a_stream_of_short_ones():
    long = _Job([100])
    jobs = [long]
    for _ in range(20):  # a new short request arrives before every pass
        jobs.append(_Job([3]))
        batch = next_batch(jobs, max_rows=4, max_tokens=100, window_batches=4, max_skips=4)
        for job, row in batch:
            job.todo.remove(row)
        jobs = [job for job in jobs if job.todo]
        if long not in jobs:
            break
    assert long not in jobs, "the long request never ran"
    assert long.skipped == 0


def test_the_look_ahead_takes_rows_round_robin_across_requests():
    big, small = _Job([10] * 50), _Job([10])
    batch = next_batch([big, small], max_rows=4, max_tokens=10_000, window_batches=1, max_skips=8)
    assert any(job is small for job, _ in batch)  # seen at once, though 50 rows of another request came first


def test_a_short_row_is_not_padded_to_long_ones_when_a_pass_of_its_own_is_cheaper():
    short, long = _Job([3]), _Job([200] * 8)
    batch = next_batch([long, short], max_rows=64, max_tokens=2048, window_batches=4, max_skips=8)
    assert batch == [(short, 0)]  # 197 padded tokens for it among long rows would cost more than a pass (128)
    batch = next_batch([long], max_rows=64, max_tokens=2048, window_batches=4, max_skips=8)
    assert len(batch) == 8  # rows of one length still fill the budget


# ------------------------------------------------------------------------------------------- stages and queue
def test_combining_runs_off_the_forward_thread(make_batcher):
    batcher, fake = make_batcher()
    fake.combine_gate.clear()
    first = batcher.submit([[1, 2]])
    assert fake.combine_entered.wait(10)  # request 1's vectors are being combined (held there)
    fake.forward_entered.clear()
    second = batcher.submit([[2, 2, 2]])
    assert fake.forward_entered.wait(10), "the model waited for another request's combining"
    fake.combine_gate.set()
    np.testing.assert_array_equal(first.result(10), [[1, 2]])
    np.testing.assert_array_equal(second.result(10), [[2, 3]])


def test_the_queue_is_bounded_in_tokens(make_batcher):
    batcher, fake = make_batcher(max_queue_tokens=10)
    fake.forward_gate.clear()
    running = batcher.submit([[1]])
    assert fake.forward_entered.wait(10)
    queued = batcher.submit([[2] * 8])
    with pytest.raises(Overloaded, match="tokens"):
        batcher.submit([[3] * 5])
    fake.forward_gate.set()
    running.result(10)
    queued.result(10)
    assert batcher.submit([[3] * 5]).result(10).shape == (1, 2)  # room again


# ------------------------------------------------------------------------------------------- over HTTP
class TokenizeGated:
    """The tiny embedder; tokenising any text that starts with "BIG" waits for ``gate``."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self.gate, self.entered = threading.Event(), threading.Event()

    def tokenize_marking_truncated(self, texts, prompt=None):
        if any(text.startswith("BIG") for text in texts):
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return self._embedder.tokenize_marking_truncated(texts, prompt)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)


def test_a_short_request_is_answered_while_a_big_one_is_still_tokenising(serve_factory, tiny_embedder, one_thread):
    wrapped = TokenizeGated(tiny_embedder)
    running = serve_factory(wrapped)
    with concurrent.futures.ThreadPoolExecutor(1) as pool, running.client() as client:
        big = pool.submit(client.post, "/v1/embeddings", json={"input": "BIG text, as long as one may be"})
        assert wrapped.entered.wait(30)  # the big request holds a tokenizer thread (as a huge text would)
        try:
            short = client.post("/v1/embeddings", json={"input": "one word", "encoding_format": "float"}, timeout=20)
        finally:
            wrapped.gate.set()
        assert short.status_code == 200
        np.testing.assert_allclose(short.json()["data"][0]["embedding"], tiny_embedder.encode("one word"), atol=1e-6)
        assert big.result(30).status_code == 200


class TokenizerCalls:
    """The tiny embedder, recording every call of its bounded tokenisation and every text handed to its tokenizer
    directly."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self.tokenize_calls: list[list[str]] = []
        self.direct: list[int] = []
        outer = self

        class Tokenizer:
            def __call__(self, text, *args, **kwargs):
                outer.direct.append(len(text) if isinstance(text, str) else sum(map(len, text)))
                return embedder.tokenizer(text, *args, **kwargs)

            def __getattr__(self, name):
                return getattr(embedder.tokenizer, name)

            def __len__(self):
                return len(embedder.tokenizer)

        self.tokenizer = Tokenizer()

    def tokenize_marking_truncated(self, texts, prompt=None):
        self.tokenize_calls.append(list(texts))
        return self._embedder.tokenize_marking_truncated(texts, prompt)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)


def test_a_long_input_is_tokenised_once_through_the_core(serve_factory, tiny_embedder, one_thread):
    recorder = TokenizerCalls(tiny_embedder)
    running = serve_factory(recorder)
    long_text = "word " * 200_000  # 1 MB
    with running.client() as client:
        response = client.post("/v1/embeddings", json={"input": [long_text, "short"]})
    assert response.status_code == 200
    assert response.headers["X-MoEE-Truncated-Indices"] == "0"
    assert sum(call.count(long_text) for call in recorder.tokenize_calls) == 1  # once, by the core's bounded tokenisation
    assert all(size < len(long_text) for size in recorder.direct)  # never in full beside the core's bounded path


def test_metrics_count_the_forward_passes_that_ran(serve_factory, tiny_embedder, one_thread):
    # one planned batch of 64 texts x ~40 tokens (~2,600 padded tokens): above the library's own CPU budget
    # (2,048), so a worker that re-planned under it would run two passes while counting one
    running = serve_factory(tiny_embedder, batch=BatchSettings(max_batch_tokens=16384, max_batch_size=64, max_wait_ms=0))
    texts = [f"sentence {i} " + "about the river and the hockey league " * 4 for i in range(64)]
    passes: list[int] = []
    hook = tiny_embedder.model.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        with running.client() as client:
            response = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "float"})
    finally:
        hook.remove()
    assert response.status_code == 200
    assert sum(passes) == 64
    metrics = running.app.state.metrics
    assert metrics.sample("moee_batch_size_count") == len(passes) == 1
    assert metrics.sample("moee_batch_size_sum") == 64


class Poisoned(GatedEmbedder):
    """Gated; a forward pass holding the poisoned text's ids fails with an internal message naming a path."""

    def __init__(self, embedder: Any, poison: list[int]) -> None:
        super().__init__(embedder)
        self.poison = poison

    def encode_batch(self, rows: Any) -> Any:
        parts = super().encode_batch(rows)
        if any(list(row) == self.poison for row in rows):
            raise RuntimeError("CUDA kernel failed reading /srv/secret/model.safetensors")
        return parts


def test_one_clients_bad_input_fails_only_that_client_with_no_internals(serve_factory, tiny_embedder, one_thread):
    poisoned = Poisoned(tiny_embedder, tiny_embedder.tokenize(["poison pill"])[0])
    running = serve_factory(poisoned, batch=BatchSettings(max_wait_ms=0))
    batcher = running.app.state.batcher
    with concurrent.futures.ThreadPoolExecutor(3) as pool, running.client() as client:
        def post(texts):
            return pool.submit(client.post, "/v1/embeddings", json={"input": texts, "encoding_format": "float"})

        blocker = post(["first"])
        assert poisoned.entered.wait(10)
        bad = post(["poison pill", "ordinary"])
        assert batcher.wait_until(lambda b: b.queued_inputs == 2, 30)
        good = post(["healthy a", "healthy b"])
        assert batcher.wait_until(lambda b: b.queued_inputs == 4, 30)  # both wait for the same next pass
        poisoned.gate.set()
        good, bad, blocker = good.result(30), bad.result(30), blocker.result(30)
    assert blocker.status_code == 200 and good.status_code == 200
    np.testing.assert_allclose([d["embedding"] for d in good.json()["data"]], tiny_embedder.encode(["healthy a", "healthy b"]),
                               atol=1e-6, rtol=0)
    assert bad.status_code == 500
    error = bad.json()["error"]
    assert error["code"] == "embedding_failed"
    assert "secret" not in bad.text and "/srv" not in bad.text and "CUDA" not in bad.text
    assert running.app.state.metrics.sample("moee_failures_total", {"stage": "forward"}) >= 1


class Crash(BaseException):
    """What kills a thread outright (as a fatal runtime error would)."""


class Crashing:
    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder

    def encode_batch(self, rows: Any) -> Any:
        raise Crash("the worker dies")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)


def test_a_dead_worker_fails_requests_and_health_instead_of_hanging(serve_factory, tiny_embedder, one_thread):
    running = serve_factory(Crashing(tiny_embedder))
    with running.client(timeout=30) as client:
        first = client.post("/v1/embeddings", json={"input": "anything"})
        assert first.status_code == 503 and first.json()["error"]["code"] == "worker_stopped"
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "stopped"
        again = client.post("/v1/embeddings", json={"input": "anything"})
        assert again.status_code == 503


def test_health_reports_a_stalled_forward_pass(serve_factory, tiny_embedder, one_thread):
    gated = GatedEmbedder(tiny_embedder)
    running = serve_factory(gated, batch=BatchSettings(stall_after_s=1e-6, max_wait_ms=0))
    with concurrent.futures.ThreadPoolExecutor(1) as pool, running.client() as client:
        pending = pool.submit(client.post, "/v1/embeddings", json={"input": "held"})
        assert gated.entered.wait(10)
        try:
            health = client.get("/health")
        finally:
            gated.gate.set()
        assert health.status_code == 503
        assert health.json()["status"] == "stalled" and "forward pass" in health.json()["message"]
        assert pending.result(30).status_code == 200
        assert client.get("/health").status_code == 200  # no pass running: healthy again


def test_a_request_past_the_server_timeout_gets_504_and_its_rows_are_dropped(serve_factory, tiny_embedder, one_thread):
    gated = GatedEmbedder(tiny_embedder)
    running = serve_factory(gated, batch=BatchSettings(max_wait_ms=0), request_timeout_s=1.0)
    batcher = running.app.state.batcher
    with concurrent.futures.ThreadPoolExecutor(1) as pool, running.client() as client:
        held = pool.submit(client.post, "/v1/embeddings", json={"input": "held in the model"})
        assert gated.entered.wait(10)
        queued = client.post("/v1/embeddings", json={"input": ["queued a", "queued b"]})
        assert queued.status_code == 504 and queued.json()["error"]["code"] == "timeout"
        assert held.result(30).status_code == 504
    gated.gate.set()
    later = batcher.submit(tiny_embedder.tokenize(["later"])).result(30)  # the worker goes on
    np.testing.assert_allclose(later, tiny_embedder.encode(["later"]), atol=1e-6, rtol=0)
    assert gated.calls == 2  # the held pass and "later": the timed-out queued rows never ran
    assert running.app.state.metrics.sample("moee_request_timeouts_total") == 2


# ------------------------------------------------------------------------------------------- flags
def test_worker_flags_reach_the_settings(tmp_path):
    import argparse

    from moee_plugins.commands import serve as serve_command

    parser = argparse.ArgumentParser()
    serve_command.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", str(tmp_path), "--request-timeout", "12.5", "--stall-timeout", "7",
                              "--max-queue-tokens", "4096", "--tokenizer-threads", "3"])
    settings = serve_command.settings_from(args)
    assert settings.request_timeout_s == 12.5 and settings.tokenizer_threads == 3
    assert settings.batch.stall_after_s == 7 and settings.batch.max_queue_tokens == 4096


@pytest.mark.parametrize("flags, message", [
    (["--request-timeout", "0"], "--request-timeout must be a positive number"),
    (["--stall-timeout", "-1"], "--stall-timeout must be a positive number"),
    (["--max-queue-tokens", "0"], "--max-queue-tokens must be a positive integer"),
    (["--tokenizer-threads", "0"], "--tokenizer-threads must be a positive integer"),
])
def test_bad_worker_flags_are_usage_errors(flags, message, tmp_path):
    import argparse

    from moee_plugins.commands import serve as serve_command
    from moee_plugins.commands._common import UsageError

    parser = argparse.ArgumentParser()
    serve_command.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", str(tmp_path), *flags])
    with pytest.raises(UsageError, match=message):
        serve_command.settings_from(args)
