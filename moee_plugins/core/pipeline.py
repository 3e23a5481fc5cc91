"""The encoding pipeline's policies: the automatic padded-token budget per device, and corpus chunks tokenised in
a background thread while the model runs the previous chunk (so memory stays bounded at any corpus size)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

logger = logging.getLogger("moee_plugins")

AUTO = "auto"
# rows per batch by default: high enough that on short texts the token budget, not the row count, closes a batch
DEFAULT_ROW_CAP = 1024
# CPU: padded tokens per batch, measured near-optimal with benchmarks/budget.py (docs/performance.md); past a
# few thousand tokens a CPU gains nothing from bigger batches, while long padded rows make attention and the
# expert dispatch memory-bound
CPU_TOKEN_BUDGET = 2048
# CUDA: the budget is what fits in a share of the free memory, clamped to this range (a GPU is saturated well
# before the top; the out-of-memory split is the safety net below it)
CUDA_TOKEN_BUDGET_RANGE = (4096, 65536)
CUDA_FREE_MEMORY_SHARE = 0.5
# "auto" also chooses where batches end: the plan minimising processed tokens + AUTO_BATCH_COST x batches
# (batching.plan_batches' batch_cost), the fixed cost of a forward pass taken as this share of the budget
# (measured with benchmarks/budget.py --batch-costs, docs/performance.md)
AUTO_BATCH_COST_SHARE = 1 / 16
# corpus chunks, tokenised one ahead of the model: the first is small so the device starts early, each next one
# twice as large up to CHUNK_MAX_TEXTS texts (or CHUNK_MAX_CHARS characters, about a million tokens)
CHUNK_FIRST_TEXTS = 1024
CHUNK_MAX_TEXTS = 4096
CHUNK_MAX_CHARS = 4_000_000

# tokenise the next chunk in a background thread on CPU too (off: there the "device" is the same cores, and a
# thread holding the GIL between the forward pass's many short ops stalls it more than the overlap gains)
BACKGROUND_ON_CPU = False

T = TypeVar("T")
R = TypeVar("R")


def activation_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """A conservative estimate of the forward pass's peak activation memory per padded token.

    Hidden-state-sized buffers (residual, norms, attention q/k/v/output: ~16 x hidden) plus the routed experts'
    intermediate activations (~6 x top-k x expert width) and router scores. Checked against a measurement on
    the OLMoE-1B-7B shape in bfloat16 (4,685 MiB at 32,768 tokens, ~143 KiB per token; this gives ~160 KiB).
    """
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    width = int(getattr(config, "moe_intermediate_size", 0) or getattr(config, "intermediate_size", 0) or 4 * hidden)
    top_k = int(getattr(config, "num_experts_per_tok", 0) or getattr(config, "moe_topk", 0) or 2)
    experts = int(getattr(config, "num_experts", 0) or getattr(config, "n_routed_experts", 0)
                  or getattr(config, "num_local_experts", 0) or 8)
    element = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 2
    return max(1, element * (16 * hidden + 6 * top_k * width) + 4 * 4 * experts)


def cuda_token_budget(free_bytes: int, bytes_per_token: int) -> int:
    """The largest power of two of padded tokens whose activations fit in a share of ``free_bytes``, clamped."""
    low, high = CUDA_TOKEN_BUDGET_RANGE
    fits = int(CUDA_FREE_MEMORY_SHARE * free_bytes) // max(1, bytes_per_token)
    budget = low
    while budget * 2 <= min(fits, high):
        budget *= 2
    return budget


def resolve_token_budget(setting: Any, model: Any, device: torch.device, dtype: torch.dtype) -> int | None:
    """The padded-token budget a run uses: an explicit value as is, ``"auto"`` chosen for ``device``."""
    if setting != AUTO:
        return setting
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        budget = cuda_token_budget(free, activation_bytes_per_token(getattr(model, "config", None), dtype))
        logger.info("max_tokens_per_batch='auto': %d padded tokens per batch (%.1f GiB free on %s)",
                    budget, free / 2**30, device)
        return budget
    return CPU_TOKEN_BUDGET


def auto_batch_cost(budget: int | None) -> int | None:
    """The per-batch cost ``"auto"`` plans with: a share of the budget (none without a budget)."""
    return None if budget is None else int(budget * AUTO_BATCH_COST_SHARE)


def chunk_spans(texts: Sequence[str]) -> list[tuple[int, int]]:
    """``[start, stop)`` spans covering ``texts`` in order: the pipeline's units of tokenisation and planning.

    A corpus of up to ``CHUNK_FIRST_TEXTS`` texts is one span (batches exactly as a plan over all of it);
    larger ones are cut into chunks that double in size up to ``CHUNK_MAX_TEXTS`` texts or
    ``CHUNK_MAX_CHARS`` characters, whichever comes first.
    """
    spans: list[tuple[int, int]] = []
    start, size, n = 0, CHUNK_FIRST_TEXTS, len(texts)
    while start < n:
        stop, chars = start, 0
        while stop < n and stop - start < size and (chars < CHUNK_MAX_CHARS or stop == start):
            chars += len(texts[stop])
            stop += 1
        spans.append((start, stop))
        start, size = stop, min(2 * size, CHUNK_MAX_TEXTS)
    return spans


def background_tokenisation(device: torch.device) -> bool:
    """Whether the next chunk is tokenised in a thread: on an accelerator, whose host cores are otherwise idle."""
    return device.type != "cpu" or BACKGROUND_ON_CPU


def prefetched(work: Callable[[T], R], items: Iterable[T], background: bool = True) -> Iterator[R]:
    """``work(item)`` for each item, in order; with ``background``, the next one is computed in a thread while
    the caller uses the current one. At most two results exist at a time; an error in ``work`` is raised in the
    caller."""
    items = list(items)
    if len(items) <= 1 or not background:
        yield from (work(item) for item in items)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="moee-tokenize") as pool:
        future = pool.submit(work, items[0])
        try:
            for item in items[1:]:
                result = future.result()
                future = pool.submit(work, item)
                yield result
                del result
            yield future.result()
        finally:
            future.cancel()
