"""The engine's public seams: ``encode_batch`` runs exactly the rows it is given as one forward pass, the planned
run follows ``Engine.plan``, and a listener sees every forward pass that really runs."""

from __future__ import annotations

import numpy as np
import pytest

from moee_plugins import MoEEmbedder

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [f"document {i} " + "word " * (3 * i % 11) for i in range(9)]


@pytest.fixture(scope="module")
def small_budget(tiny_embedder) -> MoEEmbedder:
    """The tiny embedder with a budget so small that a planned run needs several forward passes."""
    return MoEEmbedder.from_config(dict(tiny_embedder.config, max_tokens_per_batch=40, batch_size=4),
                                   model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)


def test_encode_batch_is_one_forward_pass_whatever_the_budget(small_budget):
    ids = small_budget.tokenize(TEXTS)
    passes = []
    with small_budget.engine.observe(lambda forward_pass: passes.append(forward_pass.shape)):
        one = small_budget.encode_batch(ids)
    assert passes == [(len(ids), max(len(row) for row in ids))]  # exactly the rows given, padded once

    passes.clear()
    with small_budget.engine.observe(lambda forward_pass: passes.append(forward_pass.lengths)):
        planned = small_budget.encode_token_ids(ids)
    plan = small_budget.engine.plan([len(row) for row in ids], small_budget.batch_size,
                                    small_budget.max_tokens_per_batch)
    assert len(plan) > 1 and passes == [[len(ids[i]) for i in batch] for batch in plan]
    assert np.abs(one.hidden - planned.hidden).max() < 1e-4  # same rows, same order, whatever the grouping
    assert one.num_tokens.tolist() == [len(row) for row in ids]


def test_a_listener_is_removed_and_sees_the_token_ids(small_budget):
    ids = small_budget.tokenize(TEXTS[:3])
    seen = []
    remove = small_budget.engine.add_listener(lambda forward_pass: seen.extend(forward_pass.token_ids))
    small_budget.encode_batch(ids)
    remove()
    small_budget.encode_batch(ids)
    assert sorted(map(tuple, seen)) == sorted(map(tuple, ids))  # once each: the second call was not watched
