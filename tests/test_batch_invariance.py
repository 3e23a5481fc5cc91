"""An embedding depends on its text only: not on batch size, neighbours or padding."""

from __future__ import annotations

import numpy as np
import pytest

from moee_plugins import MoEEmbedder

TEXTS = [
    "moon",
    "The hockey team won the final game of the season after a long and difficult playoff run.",
    "GPUs and printers",
    "A \"quoted\" word?",
    "Encryption keys protect private messages from governments and from everyone else who might try to read them, "
    "and they are the basis of secure communication on the internet today.",
    "Doctors study disease!",
    "x",
    "Cars need maintenance.",
]


@pytest.fixture(scope="module")
def alone(tiny_embedder):
    return np.stack([tiny_embedder.encode_parts([t]).hidden[0] for t in TEXTS]), np.stack(
        [tiny_embedder.encode_parts([t]).routing[0] for t in TEXTS]
    )


@pytest.mark.parametrize("batch_size", [2, 3, 5, 8])
def test_parts_do_not_depend_on_batch_composition(tiny_embedder, alone, batch_size):
    hidden_alone, routing_alone = alone
    parts = tiny_embedder.encode_parts(TEXTS, batch_size=batch_size)
    assert np.abs(parts.hidden - hidden_alone).max() < 1e-4
    assert np.abs(parts.routing - routing_alone).max() < 1e-4


def test_token_budget_batches_give_the_same_vectors(tiny_embedder):
    reference = tiny_embedder.encode(TEXTS, batch_size=1)
    budgeted = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model,
                                       tokenizer=tiny_embedder.tokenizer, max_tokens_per_batch=60)
    assert np.abs(budgeted.encode(TEXTS, batch_size=8) - reference).max() < 1e-4


@pytest.mark.parametrize("mode", ["hs", "rw", "concat", "sum"])
def test_every_mode_is_batch_invariant_and_a_batch_of_one_is_not_zero(tiny_embedder, mode):
    batched = tiny_embedder.combine(tiny_embedder.encode_parts(TEXTS, batch_size=8), mode)
    for i, text in enumerate(TEXTS):
        single = tiny_embedder.combine(tiny_embedder.encode_parts([text]), mode)[0]
        assert np.abs(single - batched[i]).max() < 1e-4
        assert np.linalg.norm(single) > 0.5


def test_reordering_inputs_reorders_outputs(tiny_embedder):
    forward = tiny_embedder.encode(TEXTS)
    backward = tiny_embedder.encode(TEXTS[::-1])
    assert np.abs(forward[::-1] - backward).max() < 1e-4
    # and rows are really different from each other, so the check above can fail
    assert np.abs(forward[0] - forward[1]).max() > 1e-2
