"""The encoding pipeline: automatic token budget, chunks tokenised one ahead in a thread, bounded memory.

Nothing is timed: these tests prove that the pipelined path computes what a global plan does, in input order,
without tokenising the whole corpus before the model starts, and that its errors reach the caller.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch

import moee_plugins.core.embedder as embedder_module
from moee_plugins import MoEEmbedder
from moee_plugins.core import options, pipeline
from moee_plugins.core.batching import plan_batches

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ("hockey", "team", "printer", "graphics", "orbit", "shuttle", "doctor", "disease", "the", "a", "of", "and")


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(k))) for k in rng.integers(1, 30, size=n)]


def sibling(embedder: MoEEmbedder, **overrides) -> MoEEmbedder:
    return MoEEmbedder.from_config(embedder.config, model=embedder.model, tokenizer=embedder.tokenizer, **overrides)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 3, 6, 7, 7, ... texts, so a small corpus crosses several chunk boundaries."""
    monkeypatch.setattr(pipeline, "CHUNK_FIRST_TEXTS", 3)
    monkeypatch.setattr(pipeline, "CHUNK_MAX_TEXTS", 7)


def test_defaults_are_auto_budget_and_a_large_row_cap(tiny_embedder):
    fresh = sibling(tiny_embedder)
    assert options.OPTIONS["max_tokens_per_batch"].default == "auto"
    assert options.OPTIONS["batch_size"].default == pipeline.DEFAULT_ROW_CAP
    assert fresh.batch_size == pipeline.DEFAULT_ROW_CAP
    assert fresh.config["max_tokens_per_batch"] == "auto"
    assert fresh.engine.token_budget(fresh.max_tokens_per_batch) == pipeline.CPU_TOKEN_BUDGET
    for setting, budget in ((None, None), (77, 77)):
        other = sibling(tiny_embedder, max_tokens_per_batch=setting)
        assert other.engine.token_budget(other.max_tokens_per_batch) == budget


@pytest.mark.parametrize("bad", ["fast", "AUTO", 0, -3, 2.5, True])
def test_a_bad_token_budget_is_refused_by_name(tiny_embedder, bad):
    with pytest.raises(ValueError, match="max_tokens_per_batch must be 'auto', None or a positive integer"):
        sibling(tiny_embedder, max_tokens_per_batch=bad)


def test_cuda_budget_follows_free_memory_and_the_model_shape():
    from transformers import OlmoeConfig

    olmoe = OlmoeConfig(hidden_size=2048, intermediate_size=1024, num_experts=64, num_experts_per_tok=8)
    per_token = pipeline.activation_bytes_per_token(olmoe, torch.bfloat16)
    assert 143 * 1024 <= per_token <= 200 * 1024  # measured on an H100: ~143 KiB per padded token in bf16
    assert pipeline.activation_bytes_per_token(olmoe, torch.float32) > 1.9 * per_token
    low, high = pipeline.CUDA_TOKEN_BUDGET_RANGE
    assert pipeline.cuda_token_budget(65 * 2**30, per_token) == high       # an H100 after the weights
    assert pipeline.cuda_token_budget(3 * 2**30, per_token) == 8192        # 1.5 GiB usable / ~160 KiB
    assert pipeline.cuda_token_budget(10 * 2**20, per_token) == low        # the floor; OOM splits below it
    budgets = [pipeline.cuda_token_budget(free * 2**30, per_token) for free in (2, 4, 8, 16, 32)]
    assert budgets == sorted(budgets) and all(b & (b - 1) == 0 for b in budgets)


def test_chunk_spans_cover_the_corpus_in_order_and_grow():
    items = ["x"] * 30_000
    spans = pipeline.chunk_spans(items)
    assert spans[0] == (0, pipeline.CHUNK_FIRST_TEXTS)
    assert [b for _, b in spans[:-1]] == [a for a, _ in spans[1:]] and spans[-1][1] == len(items)
    sizes = [b - a for a, b in spans]
    assert sizes[:4] == [1024, 2048, 4096, 4096] and max(sizes) == pipeline.CHUNK_MAX_TEXTS
    assert pipeline.chunk_spans(["x"] * 1024) == [(0, 1024)]  # up to the first chunk: one global plan
    long = ["y" * 1_500_000] * 5  # the character cap closes a chunk early, but never leaves one empty
    assert pipeline.chunk_spans(long) == [(0, 3), (3, 5)]
    assert pipeline.chunk_spans([]) == []


class ForwardPasses(list):
    """The row lengths of every batch the watched embedders run, in order (the engine's public listener)."""

    def watch(self, *embedders: MoEEmbedder) -> None:
        for embedder in embedders:
            embedder.engine.add_listener(lambda forward_pass: self.append(forward_pass.lengths))


@pytest.fixture
def seen() -> ForwardPasses:
    return ForwardPasses()


def test_one_chunk_runs_exactly_the_global_plan(tiny_embedder, seen):
    corpus = texts(40)
    embedder = sibling(tiny_embedder, batch_size=8, max_tokens_per_batch=90)
    seen.watch(embedder)
    embedder.encode_parts(corpus)
    lengths = [len(ids) for ids in embedder.tokenize(corpus)]
    assert seen == [[lengths[i] for i in batch] for batch in plan_batches(lengths, 8, 90)]


def test_chunked_encoding_equals_one_text_at_a_time(tiny_embedder, small_chunks):
    corpus = texts(26, seed=1)
    parts = tiny_embedder.encode_parts(corpus)
    alone_hidden = np.stack([tiny_embedder.encode_parts([t]).hidden[0] for t in corpus])
    assert np.abs(parts.hidden - alone_hidden).max() < 1e-4
    assert parts.num_tokens.tolist() == [len(ids) for ids in tiny_embedder.tokenize(corpus)]
    vectors = tiny_embedder.encode(corpus)
    assert np.abs(vectors[::-1] - tiny_embedder.encode(corpus[::-1])).max() < 1e-4
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-2  # rows differ, so the order check can fail


@pytest.mark.parametrize("background", [True, False], ids=["thread", "inline"])
def test_tokenisation_runs_one_chunk_ahead_not_all_up_front(tiny_embedder, small_chunks, monkeypatch, background):
    monkeypatch.setattr(pipeline, "BACKGROUND_ON_CPU", background)
    threads: set[str] = set()
    events: list[tuple[str, int]] = []
    lock = threading.Lock()
    tokenize = embedder_module.tokenize

    def spy_tokenize(tokenizer, template, items, max_length):
        with lock:
            events.append(("tokenize", len(items)))
            threads.add(threading.current_thread().name)
        return tokenize(tokenizer, template, items, max_length)

    def spy_forward(forward_pass):
        with lock:
            events.append(("forward", forward_pass.rows))

    monkeypatch.setattr(embedder_module, "tokenize", spy_tokenize)
    corpus = texts(31, seed=2)
    with tiny_embedder.engine.observe(spy_forward):
        tiny_embedder.encode_parts(corpus)
    chunks = [size for kind, size in events if kind == "tokenize"]
    assert chunks == [3, 6, 7, 7, 7, 1]
    assert any(name.startswith("moee-tokenize") for name in threads) == background
    assert pipeline.background_tokenisation(torch.device("cuda"))
    # when chunk k is tokenised, every row of chunk k-2 has already been through the model
    tokenised = forwarded = 0
    starts = np.cumsum([0, *chunks])
    for kind, size in events:
        if kind == "forward":
            forwarded += size
        else:
            tokenised += 1
            if tokenised >= 3:
                assert forwarded >= starts[tokenised - 2]


def test_an_error_in_background_tokenisation_reaches_the_caller(tiny_embedder, small_chunks, monkeypatch):
    monkeypatch.setattr(pipeline, "BACKGROUND_ON_CPU", True)
    tokenize = embedder_module.tokenize

    def failing(tokenizer, template, items, max_length):
        if "boom" in items:
            raise RuntimeError("tokenizer failed on a later chunk")
        return tokenize(tokenizer, template, items, max_length)

    monkeypatch.setattr(embedder_module, "tokenize", failing)
    corpus = texts(20, seed=3)
    corpus[15] = "boom"
    with pytest.raises(RuntimeError, match="later chunk"):
        tiny_embedder.encode_parts(corpus)
    assert tiny_embedder.encode_parts(corpus[:5]).hidden.shape[0] == 5  # the embedder still works afterwards


def test_explicit_settings_keep_their_results(tiny_embedder):
    corpus = texts(30, seed=4)
    before = sibling(tiny_embedder, batch_size=32, max_tokens_per_batch=None).encode(corpus)
    assert np.abs(sibling(tiny_embedder).encode(corpus) - before).max() < 1e-4
    assert np.abs(sibling(tiny_embedder, batch_size=4, max_tokens_per_batch=64).encode(corpus) - before).max() < 1e-4


def _plan_cost(lengths: list[int], plan: list[list[int]], batch_cost: int) -> int:
    return sum(len(batch) * max(lengths[i] for i in batch) + batch_cost for batch in plan)


def _check_plan(lengths: list[int], plan: list[list[int]], rows: int, budget: int) -> None:
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))  # every row once
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    assert [i for batch in plan for i in batch] == order  # cuts of the same length-sorted order
    for batch in plan:
        assert len(batch) <= rows
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= budget


@pytest.mark.parametrize("seed", range(12))
def test_the_cheapest_plan_is_the_optimum_of_every_cut_of_the_sorted_order(seed):
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(1, 40, size=int(rng.integers(1, 11)))]
    rows, budget, cost = int(rng.integers(1, 6)), int(rng.integers(20, 120)), int(rng.integers(0, 60))
    plan = plan_batches(lengths, rows, budget, batch_cost=cost)
    _check_plan(lengths, plan, rows, budget)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = None
    for mask in range(1 << (len(lengths) - 1)):  # every way to cut the sorted order into batches
        cuts = [0, *[k + 1 for k in range(len(lengths) - 1) if mask >> k & 1], len(lengths)]
        candidate = [order[a:b] for a, b in itertools.pairwise(cuts)]
        if all(len(b) <= rows and (len(b) == 1 or len(b) * lengths[b[0]] <= budget) for b in candidate):
            value = _plan_cost(lengths, candidate, cost)
            best = value if best is None else min(best, value)
    assert _plan_cost(lengths, plan, cost) == best


def test_the_cheapest_plan_pads_less_than_filling_each_batch_with_no_more_batches():
    rng = np.random.default_rng(7)
    lengths = [int(x) for x in np.clip(rng.lognormal(np.log(60), 0.8, 400), 12, 500)]
    greedy = plan_batches(lengths, 1024, 2048)
    cheapest = plan_batches(lengths, 1024, 2048, batch_cost=2048 * 16)  # a batch dearer than any padding
    _check_plan(lengths, cheapest, 1024, 2048)
    assert len(cheapest) == len(greedy)  # as few batches as filling them ...
    padded = [sum(len(b) * max(lengths[i] for i in b) for b in plan) for plan in (greedy, cheapest)]
    assert padded[1] < padded[0]  # ... and less padding: cuts where the lengths drop
    with pytest.raises(ValueError, match="batch_cost must be >= 0"):
        plan_batches(lengths, 8, 64, batch_cost=-1)


def test_auto_plans_the_cheapest_cuts_and_explicit_budgets_fill_each_batch(tiny_embedder, monkeypatch, seen):
    corpus = texts(60, seed=5)
    auto, explicit = sibling(tiny_embedder, max_tokens_per_batch="auto"), sibling(tiny_embedder, max_tokens_per_batch=90)
    monkeypatch.setattr(pipeline, "CPU_TOKEN_BUDGET", 90)
    lengths = [len(ids) for ids in auto.tokenize(corpus)]
    seen.watch(auto, explicit)
    assert auto.engine.batch_cost("auto") == pipeline.auto_batch_cost(90) and auto.engine.batch_cost(90) is None
    vectors = auto.encode(corpus)
    cheapest = plan_batches(lengths, auto.batch_size, 90, batch_cost=pipeline.auto_batch_cost(90))
    assert seen[-len(cheapest):] == [[lengths[i] for i in batch] for batch in cheapest]
    seen.clear()
    assert np.abs(explicit.encode(corpus) - vectors).max() < 1e-4  # same vectors, whatever the plan
    assert seen == [[lengths[i] for i in batch] for batch in plan_batches(lengths, explicit.batch_size, 90)]
    assert cheapest != plan_batches(lengths, auto.batch_size, 90)  # the two policies really differ here
