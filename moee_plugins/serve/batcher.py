"""Dynamic batching: one forward thread owns the model and merges the rows of concurrent requests into
token-budget batches, so many small requests cost a few large forward passes instead of one each.

Stages: requests arrive tokenised (:mod:`.tokenizing`); the forward thread picks the next batch
(:mod:`.scheduling`: shortest first over a fair look-ahead, with ageing) and runs exactly those rows as one
forward pass (``MoEEmbedder.encode_batch``); a combine thread turns the raw parts into each request's vectors,
so the model never waits on combining or on answering. The queue is bounded in inputs and in tokens.

Every request is an :class:`EmbeddingJob` holding its own token ids and output rows; a batch is a list of
``(job, row)`` pairs, so a vector can only be written into the job and row it was computed for. A job whose
caller went away (its future was cancelled) is skipped. A batch that fails is run again request by request,
so one client's input fails only that client. If the forward thread dies, every waiting caller is failed and
:meth:`DynamicBatcher.health` says so; a forward pass running past ``stall_after_s`` reports "stalled".
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .scheduling import next_batch

logger = logging.getLogger("moee_plugins")


class Overloaded(Exception):
    """The queue is full: the caller should retry later (HTTP 503 with Retry-After)."""


class NotReady(Exception):
    """The model is still loading or calibrating, failed to load, or the server is shutting down."""


class WorkerStopped(Exception):
    """The forward thread stopped unexpectedly: requests it held or would have run cannot be answered."""


class BatchObserver(Protocol):
    def observe_batch(self, rows: int, tokens: int, padded_tokens: int, seconds: float) -> None: ...

    def observe_queue(self, seconds: float) -> None: ...

    def set_queue_depth(self, inputs: int, tokens: int) -> None: ...

    def observe_failure(self, stage: str) -> None: ...


@dataclass(frozen=True)
class BatchSettings:
    """How the worker groups rows; ``max_queue_inputs`` / ``max_queue_tokens`` bound what may wait (beyond them:
    :class:`Overloaded`); ``stall_after_s``: a forward pass running longer makes :meth:`DynamicBatcher.health`
    report "stalled"."""

    max_batch_tokens: int = 8192
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue_inputs: int = 8192
    max_queue_tokens: int = 1 << 20
    window_batches: int = 8  # batches' worth of waiting rows looked at when choosing the next batch
    stall_after_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_batch_size", "max_queue_inputs", "max_queue_tokens", "window_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be between 0 and 10000, got {self.max_wait_ms!r}")
        if isinstance(self.stall_after_s, bool) or not isinstance(self.stall_after_s, (int, float)) \
                or not self.stall_after_s > 0:
            raise ValueError(f"stall_after_s must be a positive number of seconds, got {self.stall_after_s!r}")


@dataclass(eq=False)
class EmbeddingJob:
    """One request: its token ids, the dimension it asked for and the future its vectors are delivered to."""

    token_ids: list[list[int]]
    dimensions: int | None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued_at: float = field(default_factory=time.perf_counter)
    todo: list[int] = field(default_factory=list)  # rows not handed to a forward pass yet
    skipped: int = 0  # forward passes chosen without this job while it waited (see scheduling)
    remaining: int = 0  # rows whose vectors are not written yet
    vectors: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.todo = list(range(len(self.token_ids)))
        self.remaining = len(self.token_ids)


Batch = list[tuple[EmbeddingJob, int]]


class DynamicBatcher:
    """Owns the embedder on one forward thread; :meth:`submit` queues a request, its future gets (N, dim) float32.

    ``embedder`` is a built :class:`~moee_plugins.MoEEmbedder` or a callable that builds one (then loading
    happens on the worker and :attr:`ready` stays false until it is done). Statistics are fixed before
    :attr:`ready` turns true, so the first request never pays for calibration.
    """

    def __init__(self, embedder: Any | Callable[[], Any], settings: BatchSettings | None = None,
                 observer: BatchObserver | None = None) -> None:
        self.settings = settings or BatchSettings()
        self._observer = observer
        self._source = embedder
        self.embedder: Any = None
        self._jobs: list[EmbeddingJob] = []  # jobs with rows not yet run, in arrival order
        self._queued_inputs = 0
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._closing = False
        self.load_error: BaseException | None = None
        self.worker_error: BaseException | None = None
        self._busy_since: float | None = None  # when the running forward pass started
        self._in_flight: Batch = []  # the batch the forward thread holds
        self._passes = 0
        self._combine_queue: queue.Queue = queue.Queue(maxsize=2)  # bounded: at most two batches' parts wait
        self._combiner = threading.Thread(target=self._combine_loop, name="moee-serve-combine", daemon=True)
        self._thread = threading.Thread(target=self._run, name="moee-serve-worker", daemon=True)
        self._combiner.start()
        self._thread.start()

    # ------------------------------------------------------------------ state
    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._closing and self.worker_error is None

    @property
    def closing(self) -> bool:
        return self._closing

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the model is loaded and calibrated (True) or loading failed / timed out (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.load_error is not None or not self._thread.is_alive():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True

    @property
    def worker_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued_inputs(self) -> int:
        return self._queued_inputs

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def forward_passes(self) -> int:
        """Forward passes run so far (``encode_batch`` calls, retries included)."""
        return self._passes

    def health(self) -> tuple[str, str | None]:
        """``("ok", None)``, or a state (loading, error, stopped, stalled, shutting_down) and why."""
        if self.load_error is not None:
            return "error", "the model failed to load"
        if self.worker_error is not None or (self._ready.is_set() and not self._thread.is_alive() and not self._closing):
            return "stopped", "the model worker stopped unexpectedly; restart the server"
        if self._closing:
            return "shutting_down", "the server is shutting down"
        if not self._ready.is_set():
            return "loading", "the model is still loading"
        busy_since = self._busy_since
        if busy_since is not None and time.perf_counter() - busy_since > self.settings.stall_after_s:
            return "stalled", (f"one forward pass has run for more than {self.settings.stall_after_s:g} s "
                               f"({self._passes} passes completed)")
        return "ok", None

    def wait_until(self, predicate: Callable[[DynamicBatcher], bool], timeout: float | None = None) -> bool:
        """Block until ``predicate(self)`` holds (re-checked whenever the queue changes); False on timeout.
        For callers and tests that need "request N is queued" without polling."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def supports_dimensions(self, dimensions: int) -> bool:
        """Whether reduced vectors of ``dimensions`` can be produced by this embedder."""
        return dimensions in tuple(self.embedder.supported_dimensions)

    # ------------------------------------------------------------------ requests
    def submit(self, token_ids: Sequence[Sequence[int]], dimensions: int | None = None) -> concurrent.futures.Future:
        """Queue one request's rows; raises :class:`NotReady` or :class:`Overloaded` instead of queueing."""
        job = EmbeddingJob([list(row) for row in token_ids], dimensions)
        if not job.token_ids:
            job.future.set_result(np.zeros((0, self.embedder.dim), dtype=np.float32))
            return job.future
        tokens = sum(len(row) for row in job.token_ids)
        settings = self.settings
        with self._cond:
            if self._closing:
                raise NotReady("the server is shutting down")
            if self.worker_error is not None:
                raise NotReady("the model worker stopped")
            if not self._ready.is_set():
                raise NotReady("the model is still loading" if self.load_error is None else "the model failed to load")
            if self._queued_inputs and self._queued_inputs + len(job.token_ids) > settings.max_queue_inputs:
                raise Overloaded(f"{self._queued_inputs} inputs are already waiting (limit {settings.max_queue_inputs})")
            if self._queued_tokens and self._queued_tokens + tokens > settings.max_queue_tokens:
                raise Overloaded(f"{self._queued_tokens} tokens are already waiting (limit {settings.max_queue_tokens})")
            self._jobs.append(job)
            self._queued_inputs += len(job.token_ids)
            self._queued_tokens += tokens
            self._depth_changed()
            self._cond.notify_all()
        return job.future

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop taking requests, finish every accepted one, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        self._combiner.join(timeout)

    # ------------------------------------------------------------------ forward thread
    def _run(self) -> None:
        try:
            embedder = self._source() if callable(self._source) else self._source
            self._prepare(embedder)
            self.embedder = embedder
        except BaseException as exc:  # reported by /health and to every caller; the server keeps answering
            logger.exception("moee serve: the model failed to load")
            self.load_error = exc
            self._combine_queue.put(None)
            return
        self._ready.set()
        try:
            while True:
                batch = self._take_batch()
                if batch is None:
                    return
                self._in_flight = batch
                self._forward(batch)
                self._in_flight = []
        except BaseException as exc:  # the worker is gone: nobody may wait for it forever
            logger.critical("moee serve: the model worker stopped", exc_info=True)
            self.worker_error = exc
            self._fail_everything(WorkerStopped("the model worker stopped"))
        finally:
            self._busy_since = None
            self._combine_queue.put(None)

    @staticmethod
    def _prepare(embedder: Any) -> None:
        """Fix the standardisation statistics now, not inside the first request; log what is served."""
        embedder.ensure_statistics()
        if hasattr(embedder, "model_reference"):  # the core's one identity: weights + tokenizer + vector options
            from ..core.persistence import identity, identity_digest

            logger.info("serving %s (identity %s)", embedder.model_reference, identity_digest(identity(embedder)))

    def _take_batch(self) -> Batch | None:
        """Wait for rows (up to ``max_wait_ms`` after the oldest arrived, unless a batch's worth is already
        queued) and choose the next batch. ``None`` once closing and nothing is left."""
        settings = self.settings
        with self._cond:
            while True:
                if self.worker_error is not None:
                    return None
                self._drop_cancelled()
                if self._jobs:
                    break
                if self._closing:
                    return None
                self._cond.wait()
            deadline = self._jobs[0].enqueued_at + settings.max_wait_ms / 1000
            while not self._closing and self._queued_tokens < settings.max_batch_tokens:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._drop_cancelled()
            batch = next_batch(self._jobs, settings.max_batch_size, settings.max_batch_tokens,
                               settings.window_batches, max_skips=settings.window_batches)
            now = time.perf_counter()
            taken: dict[int, set[int]] = {}
            for job, row in batch:
                if len(job.todo) == len(job.token_ids) and self._observer is not None and id(job) not in taken:
                    self._observer.observe_queue(now - job.enqueued_at)
                taken.setdefault(id(job), set()).add(row)
                self._queued_inputs -= 1
                self._queued_tokens -= len(job.token_ids[row])
            for job in {id(job): job for job, _ in batch}.values():
                job.todo = [row for row in job.todo if row not in taken[id(job)]]
            self._jobs = [job for job in self._jobs if job.todo]
            self._depth_changed()
            self._cond.notify_all()
            return batch

    def _drop_cancelled(self) -> None:
        for job in [job for job in self._jobs if job.future.done()]:
            self._queued_inputs -= len(job.todo)
            self._queued_tokens -= sum(len(job.token_ids[row]) for row in job.todo)
            job.todo = []
        self._jobs = [job for job in self._jobs if job.todo]

    def _depth_changed(self) -> None:
        if self._observer is not None:
            self._observer.set_queue_depth(self._queued_inputs, self._queued_tokens)

    def _forward(self, batch: Batch) -> None:
        """Run the batch as one forward pass; if it fails and holds several requests, run each request alone."""
        entries = [(job, row) for job, row in batch if not job.future.done()]
        if not entries:
            return
        jobs = {id(job): job for job, _ in entries}
        try:
            self._combine_queue.put((entries, self._encode(entries)))
            return
        except Exception as exc:
            self._failed("forward")
            if len(jobs) == 1:
                logger.warning("moee serve: a request of %d inputs failed", len(entries), exc_info=True)
                settle(entries[0][0].future, exception=_batch_failed("the model failed on this request's input", exc))
                return
            logger.warning("moee serve: a batch of %d inputs failed; retrying request by request", len(entries),
                           exc_info=True)
        for job in jobs.values():
            mine = [(j, row) for j, row in entries if j is job]
            try:
                self._combine_queue.put((mine, self._encode(mine)))
            except Exception as exc:
                logger.warning("moee serve: a request of %d inputs failed on its own", len(mine), exc_info=True)
                self._failed("forward")
                settle(job.future, exception=_batch_failed("the model failed on this request's input", exc))

    def _encode(self, entries: Batch) -> Any:
        rows = [job.token_ids[row] for job, row in entries]
        self._busy_since = started = time.perf_counter()
        try:
            parts = self.embedder.encode_batch(rows)
        finally:
            self._busy_since = None
            self._passes += 1
        if self._observer is not None:
            lengths = [len(r) for r in rows]
            self._observer.observe_batch(len(rows), sum(lengths), len(rows) * max(lengths),
                                         time.perf_counter() - started)
        return parts

    def _failed(self, stage: str) -> None:
        if self._observer is not None:
            self._observer.observe_failure(stage)

    def _fail_everything(self, exc: BaseException) -> None:
        with self._cond:
            jobs, self._jobs = self._jobs, []
            self._queued_inputs = self._queued_tokens = 0
            self._cond.notify_all()
        for job in [job for job, _ in self._in_flight] + jobs:
            settle(job.future, exception=exc)

    # ------------------------------------------------------------------ combine thread
    def _combine_loop(self) -> None:
        while True:
            item = self._combine_queue.get()
            if item is None:
                return
            entries, parts = item
            try:
                self._deliver(entries, parts)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    logger.critical("moee serve: the combine thread stopped", exc_info=True)
                    self.worker_error = exc
                    self._fail_everything(WorkerStopped("the model worker stopped"))
                    for job, _ in entries:
                        settle(job.future, exception=WorkerStopped("the model worker stopped"))
                    continue
                logger.exception("moee serve: combining a batch of %d inputs failed; retrying request by request",
                                 len(entries))
                self._failed("combine")
                self._deliver_each(entries, parts)

    def _deliver(self, entries: Batch, parts: Any) -> None:
        by_dimensions = {d: self.embedder.combine(parts, dimensions=d) for d in {job.dimensions for job, _ in entries}}
        self._scatter(entries, by_dimensions)

    def _deliver_each(self, entries: Batch, parts: Any) -> None:
        for job in {id(job): job for job, _ in entries}.values():
            index = [k for k, (j, _) in enumerate(entries) if j is job]
            try:
                vectors = self.embedder.combine(parts[index], dimensions=job.dimensions)
            except Exception as exc:
                logger.warning("moee serve: combining a request's vectors failed", exc_info=True)
                settle(job.future, exception=_batch_failed("the vectors of this request's input could not be made", exc))
                continue
            self._scatter([entries[k] for k in index], {job.dimensions: vectors})

    @staticmethod
    def _scatter(entries: Batch, by_dimensions: dict[int | None, np.ndarray]) -> None:
        """Row k of each combined array belongs to ``entries[k]``: write it into that job's row."""
        for k, (job, row) in enumerate(entries):
            vector = by_dimensions[job.dimensions][k]
            if job.vectors is None:
                job.vectors = np.empty((len(job.token_ids), vector.shape[0]), dtype=np.float32)
            job.vectors[row] = vector
            job.remaining -= 1
            if job.remaining == 0:
                settle(job.future, result=job.vectors)


class BatchFailed(Exception):
    """The model could not embed a request's input (the cause is logged server-side, never sent to clients)."""


def _batch_failed(message: str, cause: BaseException) -> BatchFailed:
    failed = BatchFailed(message)
    failed.__cause__ = cause
    return failed


def settle(future: concurrent.futures.Future, *, result: Any = None, exception: BaseException | None = None) -> None:
    """Deliver to a future unless its caller already gave up on it."""
    if future.done():
        return
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:  # cancelled between the check and the set
        pass
