"""Each mode is what the paper defines; sum vectors are unit length and their dot product is exactly
(cos(HS) + alpha cos(RW)) / (1 + alpha), the paper's fused score over a constant."""

from __future__ import annotations

import numpy as np
import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.core.combine import combine

TEXTS = ["The hockey team won the final.", "GPUs and printers are hardware", "moon", "Doctors study disease!"]


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


@pytest.fixture(scope="module")
def parts(tiny_embedder):
    return tiny_embedder.encode_parts(TEXTS)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 3.0])
def test_sum_dot_equals_fused_cosines(tiny_embedder, parts, alpha):
    stats = tiny_embedder.statistics
    vectors = tiny_embedder.combine(parts, "sum", alpha=alpha)
    z_hidden, z_routing = stats.hidden.apply(parts.hidden), stats.routing.apply(parts.routing)
    expected = (_cos(z_hidden, z_hidden) + alpha * _cos(z_routing, z_routing)) / (1 + alpha)
    np.testing.assert_allclose(vectors @ vectors.T, expected, atol=1e-5)
    np.testing.assert_allclose(tiny_embedder.similarity(vectors, vectors), expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_hs_mode_is_the_unstandardised_hidden_state(tiny_embedder, parts):
    hs = tiny_embedder.combine(parts, "hs")
    np.testing.assert_allclose(hs, parts.hidden / np.linalg.norm(parts.hidden, axis=1, keepdims=True), atol=1e-6)


def test_rw_and_concat_are_standardised(tiny_embedder, parts):
    stats = tiny_embedder.statistics
    z_hidden, z_routing = stats.hidden.apply(parts.hidden), stats.routing.apply(parts.routing)
    rw = tiny_embedder.combine(parts, "rw")
    np.testing.assert_allclose(rw, z_routing / np.linalg.norm(z_routing, axis=1, keepdims=True), atol=1e-6)
    concat = combine(parts.hidden, parts.routing, "concat", statistics=stats, normalize=False)
    np.testing.assert_allclose(concat, np.concatenate([z_hidden, z_routing], axis=1), atol=1e-5)
    np.testing.assert_allclose(tiny_embedder.similarity(concat, concat, "concat"), _cos(concat, concat), atol=1e-5)


def test_dims_per_mode(tiny_embedder):
    dims = {}
    for mode in ("hs", "rw", "concat", "sum"):
        embedder = MoEEmbedder.from_config(dict(tiny_embedder.config, mode=mode), model=tiny_embedder.model,
                                           tokenizer=tiny_embedder.tokenizer)
        dims[mode] = embedder.dim
        assert embedder.encode(["a", "b"]).shape == (2, embedder.dim) == (2, embedder.get_sentence_embedding_dimension())
    assert dims == {"hs": 64, "rw": 24, "concat": 88, "sum": 88}


def test_similarity_rejects_mismatched_dimensions(tiny_embedder):
    with pytest.raises(ValueError, match="dimension"):
        tiny_embedder.similarity(np.ones((1, 3)), np.ones((1, 4)))


def test_identical_texts_are_most_similar(tiny_embedder):
    vectors = tiny_embedder.encode(TEXTS)
    sims = tiny_embedder.similarity(vectors, vectors)
    assert (sims.argmax(axis=1) == np.arange(len(TEXTS))).all()
    np.testing.assert_allclose(np.diag(sims), 1.0, atol=1e-5)
