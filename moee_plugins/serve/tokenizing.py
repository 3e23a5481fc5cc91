"""Tokenisation for the server: a few threads shared fairly between requests, outside any global lock.

Every text goes through :meth:`MoEEmbedder.tokenize` (prompt applied, cut to ``max_length`` inside the prompt),
so the work per text is bounded by ``max_length`` as the core bounds it. Requests are cut into chunks of a few
texts and the threads take chunks round-robin across the waiting requests: a one-text request is tokenised
after at most one chunk of each request ahead of it, never after the whole of a 2,048-text one.

A fast (Rust) tokenizer releases the GIL while it encodes, so the threads run in parallel with each other and
with the forward pass. Its state only changes when truncation/padding settings change; the core always calls it
with the same settings, and the pool makes that first (state-setting) call before its threads start.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .batcher import settle

logger = logging.getLogger("moee_plugins")

CHUNK_TEXTS = 16  # texts tokenised per turn of one request
# how much of a near-limit text is read again to tell "cut" from "just fits": chars per token of max_length


@dataclass(eq=False)
class _Request:
    texts: list[str]
    prompt: Any
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    next_start: int = 0  # first text not handed to a thread yet
    pending_chunks: int = 0  # chunks handed out and not finished
    ids: list[list[int] | None] = field(default_factory=list)
    truncated: set[int] = field(default_factory=set)


class TokenizerPool:
    """``submit(texts)`` -> a future of ``(token_ids, truncated_indices)``; ``threads`` tokenise at once."""

    def __init__(self, embedder: Any, threads: int = 2, chunk_texts: int = CHUNK_TEXTS) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self._embedder = embedder
        self._chunk = chunk_texts
        self._waiting: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closing = False
        embedder.tokenize(["warm-up"])  # fixes the tokenizer's settings once, before the threads share it
        self._threads = [threading.Thread(target=self._run, name=f"moee-serve-tokenize-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, texts: Sequence[str], prompt: Any = None) -> concurrent.futures.Future:
        request = _Request(list(texts), prompt)
        request.ids = [None] * len(request.texts)
        if not request.texts:
            request.future.set_result(([], []))
            return request.future
        with self._cond:
            if self._closing:
                raise RuntimeError("the tokenizer pool is closed")
            self._waiting.append(request)
            self._cond.notify()
        return request.future

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(10)

    # ------------------------------------------------------------------ threads
    def _next_chunk(self) -> tuple[_Request, int, int] | None:
        with self._cond:
            while True:
                while self._waiting and self._waiting[0].future.done():  # cancelled or failed: drop the rest
                    self._waiting.popleft()
                if self._waiting:
                    break
                if self._closing:
                    return None
                self._cond.wait()
            request = self._waiting.popleft()
            start = request.next_start
            stop = min(start + self._chunk, len(request.texts))
            request.next_start = stop
            request.pending_chunks += 1
            if stop < len(request.texts):
                self._waiting.append(request)  # its next chunk waits behind the other requests' (round-robin)
                self._cond.notify()
            return request, start, stop

    def _run(self) -> None:
        while True:
            taken = self._next_chunk()
            if taken is None:
                return
            request, start, stop = taken
            try:
                ids, truncated = self._tokenize(request.texts[start:stop], request.prompt)
            except Exception as exc:  # this request only
                logger.exception("moee serve: tokenising a request failed")
                settle(request.future, exception=exc)
                continue
            with self._cond:
                request.ids[start:stop] = ids
                request.truncated.update(start + i for i in truncated)
                request.pending_chunks -= 1
                finished = request.pending_chunks == 0 and request.next_start == len(request.texts)
            if finished and not request.future.done():
                rows = [row for row in request.ids if row is not None]
                settle(request.future, result=(rows, sorted(request.truncated)))

    def _tokenize(self, texts: list[str], prompt: Any) -> tuple[list[list[int]], list[int]]:
        """Ids through the core's bounded tokenisation, plus which texts were cut to ``max_length`` (one pass)."""
        return self._embedder.tokenize_marking_truncated(texts, prompt)
