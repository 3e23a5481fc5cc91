"""The engine: token ids in, pooled hidden state + routing scores (:class:`MoEEParts`) out.

It owns everything between a list of token ids and the raw channels: the token budget (``"auto"`` resolved per
device), the batch plan, padding, the forward pass with its :class:`RoutingCapture`, the out-of-memory split,
the lock that serialises forward passes, and the chunked run over a corpus. It knows nothing of texts, prompts,
statistics or modes (the facade's and :mod:`.vectors`' business).

Observing it: :meth:`Engine.observe` (or :meth:`Engine.add_listener`) registers a listener called with a
:class:`ForwardPass` right before each forward pass that actually runs, so tests and server metrics count real
passes without reaching into private members.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .batching import plan_batches, position_ids_from_mask, right_pad
from .layers import HiddenLayerCapture, resolve_hidden_layer
from .loading import input_device
from .parts import MoEEParts, RouterBlock
from .pipeline import AUTO, auto_batch_cost, resolve_token_budget
from .routers import RouterSite, RoutingCapture, find_router_sites, select_sites, sized_from_logits
from .vectors import check_model_output

logger = logging.getLogger("moee_plugins")

FLUSH_ROWS = 4096  # pooled rows kept on the device between copies to the host


@dataclass(frozen=True)
class ForwardPass:
    """One forward pass about to run: its padded ``input_ids`` and ``attention_mask`` (rows x longest row)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, padded length): the padded tokens the pass processes."""
        return int(self.input_ids.shape[0]), int(self.input_ids.shape[1])

    @property
    def lengths(self) -> list[int]:
        """Real tokens of each row, in the pass's row order."""
        return [int(n) for n in self.attention_mask.sum(dim=1).tolist()]

    @property
    def token_ids(self) -> list[list[int]]:
        """Each row's token ids without padding (right padding: the first ``length`` positions)."""
        ids = self.input_ids.tolist()
        return [row[:n] for row, n in zip(ids, self.lengths, strict=True)]


Listener = Callable[[ForwardPass], None]


def token_id_rows(token_ids: Any) -> list[list[int]]:
    """Token ids as lists of ints, refused by name when they are not a sequence of non-empty id sequences."""
    if isinstance(token_ids, (str, bytes, Mapping, set, frozenset)) or not isinstance(token_ids, Iterable):
        raise TypeError(f"token_ids must be a sequence of token-id sequences, got {type(token_ids).__name__}")
    rows: list[list[int]] = []
    for i, row in enumerate(token_ids):
        if isinstance(row, (str, bytes)) or not isinstance(row, Iterable):
            raise TypeError(f"token_ids[{i}] must be a sequence of token ids, got {type(row).__name__}")
        ids = [int(v) for v in row]
        if not ids:
            raise ValueError(f"token_ids[{i}] is empty: every input needs at least one token")
        rows.append(ids)
    return rows


def router_layout(sites: Sequence[RouterSite]) -> list[RouterBlock]:
    """Which routing columns each router fills, in layer order."""
    blocks, start = [], 0
    for site in sites:
        blocks.append(RouterBlock(site.layer, site.name, site.num_experts, start, start + site.num_experts))
        start += site.num_experts
    return blocks


@contextlib.contextmanager
def _closing(chunks: Any) -> Iterator[None]:
    """Stop a chunk generator (and its background tokenisation) however the loop over it ends."""
    try:
        yield
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


class Engine:
    """Runs a model whose routers are ``sites``: planned corpora (:meth:`run`), exactly one batch
    (:meth:`run_batch`) or padded tensors (:meth:`forward_features`).

    Args:
        model: the loaded base model (eval mode).
        sites: the router sites whose scores make the routing channel.
        pooling, routing: how hidden states and router scores are pooled and scored.
        pad_id: the id right padding fills with.
        device, dtype: where the model runs and its dtype (for the ``"auto"`` token budget).
        listeners: called with a :class:`ForwardPass` before each forward pass (see :meth:`observe`).
        hidden_layer: the decoder layer of the hidden-state channel (-1: the model's output, after the final norm).
    """

    def __init__(self, model: Any, sites: Sequence[RouterSite], *, pooling: str, routing: str, pad_id: int,
                 device: torch.device, dtype: torch.dtype, listeners: Iterable[Listener] = (),
                 hidden_layer: int = -1) -> None:
        self.model = model
        # hidden_layer: the decoder layer whose output is the hidden-state channel, read by a hook (core/layers.py)
        self.hidden_capture = HiddenLayerCapture(model, [resolve_hidden_layer(model, hidden_layer)])
        self.sites = list(sites)
        self.layout = router_layout(self.sites)
        self.pooling, self.routing, self.pad_id, self.dtype = pooling, routing, pad_id, dtype
        self.hidden_dim = int(model.config.hidden_size)
        self.routing_dim = self.layout[-1].stop
        self.device = device
        self.input_device = input_device(model, device)
        self.row_cap: int | None = None  # lowered for the rest of the engine's life after an out-of-memory split
        self.lock = threading.RLock()
        self.listeners: list[Listener] = list(listeners)
        self._auto_budget: tuple[tuple[str, str], int | None] | None = None

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, *, layers: Sequence[int] | None, pooling: str, routing: str,
                  device: torch.device, dtype: torch.dtype, hidden_layer: int = -1) -> Engine:
        """An engine on a loaded model: the routers of ``layers`` (None: all), padding with the tokenizer's pad id
        (else its EOS id)."""
        pad_id = next((v for v in (tokenizer.pad_token_id, tokenizer.eos_token_id) if v is not None), 0)
        sites = sized_from_logits(model, select_sites(find_router_sites(model), layers))
        return cls(model, sites, pooling=pooling, routing=routing, pad_id=pad_id, device=device, dtype=dtype,
                   hidden_layer=hidden_layer)

    # ------------------------------------------------------------------ observation
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(ForwardPass)`` before every forward pass; returns a function that removes it. An
        exception it raises is the pass's own (a ``torch.OutOfMemoryError`` is handled like a real one)."""
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener) if listener in self.listeners else None

    @contextlib.contextmanager
    def observe(self, listener: Listener) -> Iterator[Listener]:
        """:meth:`add_listener` for the duration of a ``with`` block."""
        remove = self.add_listener(listener)
        try:
            yield listener
        finally:
            remove()

    # ------------------------------------------------------------------ placement and planning
    def move(self, target: torch.device) -> None:
        """Move the model to ``target`` (not one spread over devices by a device map), between forward passes."""
        with self.lock:
            if getattr(self.model, "hf_device_map", None) is None:
                self.model.to(target)
            self.follow(target)

    def follow(self, fallback: torch.device) -> torch.device:
        """Re-read where the model's inputs go (after it moved); returns that device."""
        self.input_device = self.device = input_device(self.model, fallback)
        return self.input_device

    def token_budget(self, setting: int | str | None) -> int | None:
        """The padded-token budget of a run: an explicit setting as is, ``"auto"`` resolved once per device and
        dtype."""
        if setting != AUTO:
            return setting  # type: ignore[return-value]
        key = (str(self.device), str(self.dtype))
        if self._auto_budget is None or self._auto_budget[0] != key:
            self._auto_budget = (key, resolve_token_budget(AUTO, self.model, self.device, self.dtype))
        return self._auto_budget[1]

    def batch_cost(self, setting: int | str | None) -> int | None:
        """The per-batch cost the plan minimises with (``"auto"`` only; explicit budgets fill each batch)."""
        return auto_batch_cost(self.token_budget(setting)) if setting == AUTO else None

    def plan(self, lengths: Sequence[int], batch_size: int, max_tokens_per_batch: int | str | None) -> list[list[int]]:
        """The batches (row indices) :meth:`run` forms for rows of these lengths under these settings."""
        budget = self.token_budget(max_tokens_per_batch)
        return plan_batches(lengths, batch_size, budget, batch_cost=self.batch_cost(max_tokens_per_batch))

    def pad(self, token_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` right-padded, as every forward pass takes them."""
        return right_pad([list(row) for row in token_ids], self.pad_id)

    # ------------------------------------------------------------------ forward passes
    def _capture(self) -> RoutingCapture:
        return RoutingCapture(self.sites, self.pooling, self.routing)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, capture: RoutingCapture) -> torch.Tensor:
        """One forward pass (capture attached): [HS | RW] pooled, (rows, H + R) float32, on the device."""
        if self.listeners:
            event = ForwardPass(input_ids, attention_mask)
            for listener in list(self.listeners):
                listener(event)
        input_ids = input_ids.to(self.input_device)
        attention_mask = attention_mask.to(self.input_device)
        capture.start_batch(attention_mask)
        with self.hidden_capture.attached():
            output = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
            last_hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
            pooled_hidden = self.hidden_capture.pooled(last_hidden, attention_mask, self.pooling)[0]
        pooled_routing = capture.collect(pooled_hidden.device)
        return torch.cat([pooled_hidden, pooled_routing], dim=1)

    def _forward_rows(self, rows: list[list[int]], capture: RoutingCapture) -> torch.Tensor:
        return self._forward(*self.pad(rows), capture)

    def _forward_halving(self, rows: list[list[int]], capture: RoutingCapture) -> torch.Tensor:
        try:
            return self._forward_rows(rows, capture)
        except torch.OutOfMemoryError:
            if len(rows) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(rows) // 2
            return torch.cat([self._forward_halving(rows[:half], capture), self._forward_halving(rows[half:], capture)])

    def _parts(self, hidden: np.ndarray, routing: np.ndarray, lengths: np.ndarray) -> MoEEParts:
        return MoEEParts(hidden, routing, lengths, list(self.layout))

    def run_batch(self, token_ids: Sequence[Sequence[int]]) -> MoEEParts:
        """The raw channels of exactly these rows, as one forward pass (for a caller that plans its own batches,
        e.g. the server). Nothing is re-planned; only an out-of-memory batch is halved and retried."""
        rows = token_id_rows(token_ids)
        if not rows:
            return self.run([], batch_size=1, max_tokens_per_batch=None)
        capture = self._capture()
        with self.lock, torch.inference_mode(), capture.attached():
            both = self._forward_halving(rows, capture).cpu().numpy()
        hidden, routing = both[:, : self.hidden_dim], both[:, self.hidden_dim :]
        check_model_output(hidden, routing)
        return self._parts(hidden, routing, np.array([len(r) for r in rows], dtype=np.int64))

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[HS | RW] raw and pooled, (N, H + R) float32 on the model's device, from right-padded tensors."""
        if not isinstance(input_ids, torch.Tensor) or not isinstance(attention_mask, torch.Tensor):
            raise TypeError("encode_features needs input_ids and attention_mask tensors (see MoEEmbedder.pad)")
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids and attention_mask must be 2-D of one shape, got {tuple(input_ids.shape)} "
                             f"and {tuple(attention_mask.shape)}")
        if input_ids.shape[0] == 0:
            return torch.empty((0, self.hidden_dim + self.routing_dim), device=self.input_device)
        capture = self._capture()
        with self.lock, torch.inference_mode(), capture.attached():
            pooled = self._forward(input_ids, attention_mask, capture)
        finite = torch.isfinite(pooled).all(dim=1)
        if not bool(finite.all()):
            check_model_output(finite=finite.cpu().numpy())
        return pooled

    def run(self, token_ids: Sequence[Sequence[int]], *, batch_size: int, max_tokens_per_batch: int | str | None,
            show_progress_bar: bool | None = None, progress: Any = None) -> MoEEParts:
        """Plan and run ``token_ids`` (length-sorted batches under ``batch_size`` rows and the token budget);
        row i of the result is row i of the input."""
        rows = token_ids if isinstance(token_ids, list) else list(token_ids)
        return self.run_chunks(len(rows), [(0, rows)], batch_size=batch_size, max_tokens_per_batch=max_tokens_per_batch,
                               show_progress_bar=show_progress_bar, progress=progress)

    def run_chunks(self, num_rows: int, chunks: Iterable[tuple[int, list[list[int]]]], *, batch_size: int,
                   max_tokens_per_batch: int | str | None, show_progress_bar: bool | None = None,
                   progress: Any = None) -> MoEEParts:
        """Plan and run a corpus given as ``chunks`` of ``(offset, token ids)`` covering ``num_rows`` rows: each
        chunk is planned and run on its own, so only the chunks in flight are held in memory (a generator's
        next chunk can be tokenised meanwhile). Rows land in input order; ``progress``: an open bar (anything
        with ``update(n)``) advanced batch by batch instead of one of this call's own."""
        n = int(num_rows)
        hidden = np.empty((n, self.hidden_dim), dtype=np.float32)
        routing = np.empty((n, self.routing_dim), dtype=np.float32)
        lengths = np.zeros(n, dtype=np.int64)
        if n == 0:
            return self._parts(hidden, routing, lengths)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        budget, batch_cost = self.token_budget(max_tokens_per_batch), self.batch_cost(max_tokens_per_batch)
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO and n > 1
        from tqdm.auto import tqdm

        capture = self._capture()
        started, done_tokens = time.perf_counter(), 0
        # pooled vectors stay on the device until a few thousand rows are pending: one copy (and one wait for
        # the GPU) per flush instead of per batch, so the next batch is queued while the last one still runs
        pending: list[tuple[list[int], torch.Tensor]] = []

        def flush() -> None:
            if pending:
                rows_done = [i for batch_rows, _ in pending for i in batch_rows]
                both = torch.cat([vectors for _, vectors in pending]).cpu().numpy()
                hidden[rows_done] = both[:, : self.hidden_dim]
                routing[rows_done] = both[:, self.hidden_dim :]
                pending.clear()

        own_bar = tqdm(total=n, desc="Encoding", unit="text", disable=progress is not None or not show_progress_bar)
        progress = own_bar if progress is None else progress
        with self.lock, torch.inference_mode(), capture.attached(), own_bar, _closing(chunks):
            for offset, chunk_ids in chunks:
                chunk_lengths = [len(ids) for ids in chunk_ids]
                lengths[offset : offset + len(chunk_ids)] = chunk_lengths
                queue = deque(plan_batches(chunk_lengths, batch_size, budget, batch_cost=batch_cost))
                while queue:
                    batch = queue.popleft()
                    cap = self.row_cap
                    if cap is not None and len(batch) > cap:
                        queue.extendleft(reversed([batch[i : i + cap] for i in range(0, len(batch), cap)]))
                        continue
                    try:
                        vectors = self._forward_rows([chunk_ids[i] for i in batch], capture)
                    except torch.OutOfMemoryError:
                        if len(batch) == 1:
                            raise
                        self.row_cap = max(1, len(batch) // 2)
                        logger.warning("out of memory on a batch of %d texts; continuing with at most %d per batch",
                                       len(batch), self.row_cap)
                        if torch.cuda.is_available():
                            torch.cuda.empty_cache()
                        queue.appendleft(batch)
                        continue
                    pending.append(([offset + i for i in batch], vectors))
                    if sum(len(done) for done, _ in pending) >= FLUSH_ROWS:
                        flush()
                    done_tokens += sum(chunk_lengths[i] for i in batch)
                    progress.update(len(batch))
                    if progress is own_bar:  # an external bar's owner shows its own figures
                        progress.set_postfix(
                            tokens_per_s=f"{done_tokens / max(time.perf_counter() - started, 1e-9):.0f}", refresh=False)
                del chunk_ids  # the chunk's token lists go before the next chunk is fetched
            flush()
        check_model_output(hidden, routing)
        return self._parts(hidden, routing, lengths)
