"""Throughput machinery of the core: token-budget batching, padding, and the out-of-memory split.

Nothing here is timed; these tests prove that the fast paths compute exactly what the slow ones do.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from moee_plugins import MoEEmbedder
from moee_plugins.core.batching import left_pad, plan_batches

pytestmark = pytest.mark.usefixtures("one_thread")


WORDS = ("hockey", "team", "printer", "graphics", "orbit", "shuttle", "doctor", "disease", "engine", "motorcycle",
         "church", "faith", "keys", "encryption", "senate", "election", "the", "a", "of", "and", "to", "in", "it", "was")


def long_tailed_texts(n: int = 28, seed: int = 0) -> list[str]:
    """Deterministic texts whose lengths spread from one word to ~150 (a long tail, like news posts)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(12), 1.0, n)), 1, 150).astype(int)
    lengths[:2] = (1, 150)  # both extremes, always
    return [" ".join(rng.choice(WORDS, size=int(k))) for k in lengths]


TEXTS = long_tailed_texts()
BUDGET = 160


def sibling(embedder: MoEEmbedder, **overrides) -> MoEEmbedder:
    """Another embedder on the same loaded model and statistics (the session fixture must not be mutated)."""
    return MoEEmbedder.from_config(embedder.config, model=embedder.model, tokenizer=embedder.tokenizer, **overrides)


@pytest.fixture(scope="module")
def single(tiny_embedder) -> np.ndarray:
    return np.stack([tiny_embedder.encode(text) for text in TEXTS])


def test_the_token_budget_really_regroups_the_corpus(tiny_embedder):
    lengths = [len(ids) for ids in tiny_embedder.tokenize(TEXTS)]
    plan = plan_batches(lengths, 32, BUDGET)
    assert sorted(i for batch in plan for i in batch) == list(range(len(TEXTS)))
    assert len({len(batch) for batch in plan}) > 2  # long texts travel in small batches, short ones in big ones
    for batch in plan:
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= BUDGET
        assert all(lengths[i] <= lengths[batch[0]] for i in batch)  # longest first: the width is known upfront


@pytest.mark.parametrize("batch_size", [4, 32])
def test_batched_token_budget_and_single_text_results_are_identical(tiny_embedder, single, batch_size):
    batched = tiny_embedder.encode(TEXTS, batch_size=batch_size)
    budgeted = sibling(tiny_embedder, max_tokens_per_batch=BUDGET).encode(TEXTS, batch_size=batch_size)
    assert batched.shape == budgeted.shape == single.shape == (len(TEXTS), tiny_embedder.dim)
    assert np.abs(batched - single).max() < 1e-4
    assert np.abs(budgeted - single).max() < 1e-4
    # the rows differ from each other, so a reordering could not pass unnoticed
    assert np.abs(single[0] - single[1]).max() > 1e-2


def test_left_pad_puts_every_last_token_in_the_last_column():
    rows = [[5, 6, 7], [9], [1, 2, 3, 4, 5]]
    ids, mask = left_pad(rows, pad_id=0)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[0, 0, 5, 6, 7], [0, 0, 0, 0, 9], [1, 2, 3, 4, 5]]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]


class FlakyForward:
    """A listener on the engine's forward passes (its public seam): a simulated CUDA out-of-memory on any batch
    larger than ``limit`` rows, raised where the pass would run."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls: list[tuple[int, bool]] = []  # (rows, succeeded)

    def __call__(self, forward_pass):
        if forward_pass.rows > self.limit:
            self.calls.append((forward_pass.rows, False))
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated, {forward_pass.rows} rows)")
        self.calls.append((forward_pass.rows, True))


def test_out_of_memory_splits_the_batch_keeps_every_row_in_order_and_the_smaller_size_sticks(tiny_embedder, caplog):
    texts = TEXTS[:11]
    expected = tiny_embedder.encode(texts)
    embedder = sibling(tiny_embedder, max_tokens_per_batch=None)  # rows alone decide the batch here
    flaky = FlakyForward(limit=2)
    embedder.engine.add_listener(flaky)
    with caplog.at_level(logging.WARNING, logger="moee_plugins"):
        got = embedder.encode(texts, batch_size=8)

    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4  # no row dropped, none moved
    assert any(not ok for _, ok in flaky.calls)  # it did run out of memory, and recovered
    assert all(rows <= 2 for rows, ok in flaky.calls if ok)
    assert sum(rows for rows, ok in flaky.calls if ok) == len(texts)  # every row exactly once
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all("out of memory" in w for w in warnings)

    flaky.calls.clear()
    caplog.clear()
    again = embedder.encode(texts, batch_size=8)  # later calls start at the lowered size
    assert np.abs(again - expected).max() < 1e-4
    assert flaky.calls and all(ok and rows <= 2 for rows, ok in flaky.calls)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_out_of_memory_on_a_single_row_is_raised(tiny_embedder):
    embedder = sibling(tiny_embedder)
    embedder.engine.add_listener(FlakyForward(limit=0))
    with pytest.raises(torch.OutOfMemoryError):
        embedder.encode(TEXTS[:3], batch_size=4)


def test_an_external_progress_bar_advances_batch_by_batch(tiny_embedder):
    """`moee embed` shows one bar over many calls: the core advances it per batch, in rows."""

    class Bar:
        def __init__(self) -> None:
            self.steps: list[int] = []

        def update(self, n: int) -> None:
            self.steps.append(n)

    bar = Bar()
    texts = [f"document number {i} " + "word " * (i % 7) for i in range(10)]
    parts = tiny_embedder.encode_parts(texts, batch_size=3, progress=bar)
    lengths = [len(ids) for ids in tiny_embedder.tokenize(texts)]
    plan = tiny_embedder.engine.plan(lengths, 3, tiny_embedder.max_tokens_per_batch)
    assert bar.steps == [len(batch) for batch in plan] and len(plan) > 1
    assert sum(bar.steps) == len(parts) == 10


def test_results_are_identical_whatever_the_host_copy_interval(tiny_embedder, monkeypatch):
    """Pooled rows wait on the device and are copied in groups; every group lands in its own rows."""
    texts = [f"text {i} " + "filler " * (i % 9) for i in range(23)]
    reference = tiny_embedder.encode_parts(texts, batch_size=4)
    monkeypatch.setattr("moee_plugins.core.engine.FLUSH_ROWS", 5)
    grouped = tiny_embedder.encode_parts(texts, batch_size=4)
    np.testing.assert_array_equal(grouped.hidden, reference.hidden)
    np.testing.assert_array_equal(grouped.routing, reference.routing)
    single = np.stack([tiny_embedder.encode_parts([t]).routing[0] for t in texts[:3]])
    np.testing.assert_allclose(grouped.routing[:3], single, atol=1e-4)
