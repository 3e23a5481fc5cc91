"""Dynamic batching: one worker thread owns the model and merges the rows of concurrent requests into
token-budget batches, so many small requests cost a few large forward passes instead of one each.

Every request is a :class:`EmbeddingJob` holding its own token ids and its own output rows; a batch is a
list of ``(job, row)`` pairs, so a vector can only ever be written into the job and row it was computed for.
A job whose caller went away (its future was cancelled) is skipped, never reused.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..core.batching import plan_batches

logger = logging.getLogger("moee_plugins")


class Overloaded(Exception):
    """The queue is full: the caller should retry later (HTTP 503 with Retry-After)."""


class NotReady(Exception):
    """The model is still loading or calibrating, failed to load, or the server is shutting down."""


class BatchObserver(Protocol):
    def observe_batch(self, rows: int, tokens: int, padded_tokens: int, seconds: float) -> None: ...

    def observe_queue(self, seconds: float) -> None: ...

    def set_queue_depth(self, inputs: int) -> None: ...


@dataclass(frozen=True)
class BatchSettings:
    """How the worker groups rows; ``max_queue_inputs`` bounds what may wait (beyond it: :class:`Overloaded`)."""

    max_batch_tokens: int = 8192
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue_inputs: int = 8192
    window_batches: int = 8  # batches' worth of waiting rows taken and length-sorted at once: wider pads less

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_batch_size", "max_queue_inputs", "window_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be between 0 and 10000, got {self.max_wait_ms!r}")


@dataclass(eq=False)
class EmbeddingJob:
    """One request: its token ids, the dimension it asked for and the future its vectors are delivered to."""

    token_ids: list[list[int]]
    dimensions: int | None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued_at: float = field(default_factory=time.perf_counter)
    next_row: int = 0  # rows handed to the worker so far
    remaining: int = 0  # rows not computed yet
    vectors: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.remaining = len(self.token_ids)


class DynamicBatcher:
    """Owns the embedder on one worker thread; :meth:`submit` queues a request, its future gets (N, dim) float32.

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
        self._queue: deque[EmbeddingJob] = deque()
        self._queued_inputs = 0
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._closing = False
        self.load_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="moee-serve-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ state
    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._closing

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
        with self._cond:
            if self._closing:
                raise NotReady("the server is shutting down")
            if not self._ready.is_set():
                raise NotReady("the model is still loading" if self.load_error is None else "the model failed to load")
            if self._queued_inputs and self._queued_inputs + len(job.token_ids) > self.settings.max_queue_inputs:
                raise Overloaded(f"{self._queued_inputs} inputs are already waiting (limit "
                                 f"{self.settings.max_queue_inputs})")
            self._queue.append(job)
            self._queued_inputs += len(job.token_ids)
            self._queued_tokens += sum(len(row) for row in job.token_ids)
            self._depth_changed()
            self._cond.notify()
        return job.future

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop taking requests, finish every accepted one, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        try:
            embedder = self._source() if callable(self._source) else self._source
            self._prepare(embedder)
            self.embedder = embedder
        except BaseException as exc:  # reported by /health and to every caller; the server keeps answering
            logger.exception("moee serve: the model failed to load")
            self.load_error = exc
            return
        self._ready.set()
        while True:
            window = self._take_window()
            if window is None:
                return
            self._process(window)

    @staticmethod
    def _prepare(embedder: Any) -> None:
        """Fix the standardisation statistics now, not inside the first request; log what is served."""
        embedder.ensure_statistics()
        if hasattr(embedder, "model_reference"):  # the core's one identity: weights + tokenizer + vector options
            from ..core.persistence import identity, identity_digest

            logger.info("serving %s (identity %s)", embedder.model_reference, identity_digest(identity(embedder)))

    def _take_window(self) -> list[tuple[EmbeddingJob, int]] | None:
        """Wait for rows (up to ``max_wait_ms`` after the oldest arrived, unless a batch is already full) and
        take up to a few batches' worth in arrival order. ``None`` once closing and nothing is left."""
        settings = self.settings
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].enqueued_at + settings.max_wait_ms / 1000
            while not self._closing and self._queued_tokens < settings.max_batch_tokens:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            window: list[tuple[EmbeddingJob, int]] = []
            tokens = 0
            row_limit = settings.max_batch_size * settings.window_batches
            token_limit = settings.max_batch_tokens * settings.window_batches
            while self._queue and len(window) < row_limit and tokens < token_limit:
                job = self._queue[0]
                if job.future.done():  # cancelled by its caller: drop its rows unseen
                    self._dequeue(job, len(job.token_ids) - job.next_row)
                    continue
                if job.next_row == 0 and self._observer is not None:
                    self._observer.observe_queue(time.perf_counter() - job.enqueued_at)
                row = job.next_row
                job.next_row += 1
                window.append((job, row))
                tokens += len(job.token_ids[row])
                self._queued_inputs -= 1
                self._queued_tokens -= len(job.token_ids[row])
                if job.next_row == len(job.token_ids):
                    self._queue.popleft()
            self._depth_changed()
            return window

    def _dequeue(self, job: EmbeddingJob, rows_left: int) -> None:
        self._queue.popleft()
        self._queued_inputs -= rows_left
        self._queued_tokens -= sum(len(row) for row in job.token_ids[job.next_row :])

    def _depth_changed(self) -> None:
        if self._observer is not None:
            self._observer.set_queue_depth(self._queued_inputs)

    def _process(self, window: list[tuple[EmbeddingJob, int]]) -> None:
        lengths = [len(job.token_ids[row]) for job, row in window]
        for batch in plan_batches(lengths, self.settings.max_batch_size, self.settings.max_batch_tokens):
            entries = [window[k] for k in batch if not window[k][0].future.done()]
            if entries:
                self._run_batch(entries)

    def _run_batch(self, entries: list[tuple[EmbeddingJob, int]]) -> None:
        rows = [job.token_ids[row] for job, row in entries]
        started = time.perf_counter()
        try:
            parts = self.embedder.encode_token_ids(rows, batch_size=len(rows), show_progress_bar=False)
            by_dimensions = {d: self._combine(parts, d) for d in {job.dimensions for job, _ in entries}}
        except Exception as exc:  # fails this batch's requests only; the worker goes on
            logger.exception("moee serve: a batch of %d inputs failed", len(rows))
            for job in {job for job, _ in entries}:
                _settle(job.future, exception=exc)
            return
        if self._observer is not None:
            self._observer.observe_batch(len(rows), sum(map(len, rows)), len(rows) * max(map(len, rows)),
                                         time.perf_counter() - started)
        for k, (job, row) in enumerate(entries):
            vector = by_dimensions[job.dimensions][k]
            if job.vectors is None:
                job.vectors = np.empty((len(job.token_ids), vector.shape[0]), dtype=np.float32)
            job.vectors[row] = vector
            job.remaining -= 1
            if job.remaining == 0:
                _settle(job.future, result=job.vectors)

    def _combine(self, parts: Any, dimensions: int | None) -> np.ndarray:
        return self.embedder.combine(parts, dimensions=dimensions)


def _settle(future: concurrent.futures.Future, *, result: Any = None, exception: BaseException | None = None) -> None:
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
