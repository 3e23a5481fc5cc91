"""Compact vectors: a PCA fitted once at calibration, applied identically everywhere, saved in the config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moee_plugins import MoEEmbedder
from moee_plugins.core.reduction import Reduction
from moee_plugins.core.standardize import calibration_sentences

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["The hockey team won the final.", "GPUs and printers are hardware", "moon", "Doctors study disease!",
         "Encryption keys protect private messages.", "Bake the bread for forty minutes."]


@pytest.fixture(scope="module")
def reduced(tiny_embedder) -> MoEEmbedder:
    """A sibling of the session embedder (same statistics) with a reduction to 8 and 16 dimensions."""
    embedder = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model,
                                       tokenizer=tiny_embedder.tokenizer)
    embedder.fit_reduction(list(calibration_sentences()[:200]), [16, 8])
    return embedder


def test_nothing_is_supported_until_a_reduction_is_fitted(tiny_embedder, reduced):
    assert tiny_embedder.supported_dimensions == () and tiny_embedder.config["reduction"] is None
    assert reduced.supported_dimensions == (8, 16)
    with pytest.raises(ValueError, match=r"no reduction is fitted; call fit_reduction"):
        tiny_embedder.encode(TEXTS, dimensions=8)
    with pytest.raises(ValueError, match=r"dimensions=12 is not fitted; supported dimensions: \(8, 16\)"):
        reduced.encode(TEXTS, dimensions=12)
    with pytest.raises(TypeError, match="dimensions must be None or an integer"):
        reduced.encode(TEXTS, dimensions="8")


def test_reduced_vectors_are_the_projection_of_full_ones(reduced):
    full = reduced.encode(TEXTS)
    compact = reduced.encode(TEXTS, dimensions=8)
    assert compact.shape == (len(TEXTS), 8) and compact.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(compact, axis=1), 1.0, atol=1e-5)
    r = reduced.reduction
    expected = (full.astype(np.float64) - r.mean) @ r.components[:8].T.astype(np.float64)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(compact, expected, atol=1e-5)
    # nested components: the 8-dimensional projection is the start of the 16-dimensional one, renormalised
    wide = (full.astype(np.float64) - r.mean) @ r.components[:16].T.astype(np.float64)
    np.testing.assert_allclose(compact, wide[:, :8] / np.linalg.norm(wide[:, :8], axis=1, keepdims=True), atol=1e-5)
    assert reduced.encode(TEXTS[2], dimensions=16).shape == (16,)


def test_reduced_vectors_do_not_depend_on_the_batch(reduced):
    batched = reduced.encode(TEXTS, dimensions=16)
    for i, text in enumerate(TEXTS):
        assert np.abs(reduced.encode([text], dimensions=16)[0] - batched[i]).max() < 1e-4


def test_components_are_orthonormal_sorted_and_deterministic(reduced):
    r = reduced.reduction
    np.testing.assert_allclose(r.components @ r.components.T, np.eye(16), atol=1e-5)
    ratios = r.explained_variance_ratio
    assert (np.diff(ratios) <= 1e-7).all() and 0 < ratios.sum() <= 1 + 1e-6
    again = Reduction.fit(reduced.combine(reduced.encode_parts(list(calibration_sentences()[:200]))), [8, 16],
                          mode="sum", alpha=reduced.alpha, source="again")
    np.testing.assert_allclose(again.components, r.components, atol=1e-5)  # signs fixed: the same basis


def test_the_reduction_survives_config_json_and_reload(reduced):
    config = json.loads(json.dumps(reduced.config))
    assert config["reduction"]["dimensions"] == [8, 16]
    reloaded = MoEEmbedder.from_config(config, model=reduced.model, tokenizer=reduced.tokenizer)
    assert reloaded.supported_dimensions == (8, 16)
    np.testing.assert_array_equal(reloaded.reduction.components, reduced.reduction.components)
    np.testing.assert_array_equal(reloaded.encode(TEXTS, dimensions=8), reduced.encode(TEXTS, dimensions=8))


def test_calibrate_with_dimensions_fits_both_and_new_statistics_drop_a_stale_reduction(tiny_embedder, caplog):
    embedder = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model,
                                       tokenizer=tiny_embedder.tokenizer)
    sentences = list(calibration_sentences()[:120])
    embedder.calibrate(sentences, dimensions=4)
    assert embedder.supported_dimensions == (4,) and embedder.statistics.num_texts == 120
    assert embedder.reduction.num_texts == 120
    with caplog.at_level("WARNING", logger="moee_plugins"):
        embedder.calibrate(sentences[:50])
    assert embedder.supported_dimensions == () and "no longer applies" in caplog.text


def test_a_reduction_is_refused_where_it_does_not_apply(reduced, tiny_embedder):
    parts = reduced.encode_parts(TEXTS)
    with pytest.raises(ValueError, match="fitted on sum"):
        reduced.combine(parts, "hs", dimensions=8)
    with pytest.raises(ValueError, match="alpha"):
        reduced.combine(parts, "sum", alpha=2.0, dimensions=8)
    with pytest.raises(ValueError, match="needs more than 16 calibration texts, got 6"):
        reduced.fit_reduction(TEXTS, 16)
    with pytest.raises(ValueError, match="is not a reduction"):
        reduced.fit_reduction(TEXTS, reduced.dim)
    with pytest.raises(ValueError, match="positive integers"):
        reduced.fit_reduction(TEXTS, [0, 4])
    one_layer = MoEEmbedder.from_config(dict(tiny_embedder.config, layers=tiny_embedder.moe_layers[:1], statistics=None),
                                        model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)
    with pytest.raises(ValueError, match="takes 88-dimensional sum vectors but this embedder's are 72-dimensional"):
        one_layer.set_reduction(reduced.config["reduction"])
    assert reduced.supported_dimensions == (8, 16)  # a refused fit leaves the fitted reduction in place


def test_pca_keeps_neighbours_better_than_truncation(reduced):
    """The reason for PCA: truncating a sum vector keeps hidden-state dimensions only."""
    corpus = list(calibration_sentences()[200:400])
    full = reduced.encode(corpus)
    compact = reduced.encode(corpus, dimensions=16)
    truncated = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)

    def overlap(vectors: np.ndarray, k: int = 10) -> float:
        want = np.argsort(-(full @ full.T), axis=1)[:, 1 : k + 1]
        got = np.argsort(-(vectors @ vectors.T), axis=1)[:, 1 : k + 1]
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(want, got, strict=True)]))

    assert overlap(compact) > overlap(truncated)


def test_the_device_path_gives_the_same_compact_vectors_as_encode(reduced):
    """``combine_features(dimensions=)`` (what sentence-transformers' forward uses) = ``encode(dimensions=)``."""
    input_ids, attention_mask = reduced.pad(reduced.tokenize(TEXTS))
    pooled = reduced.encode_features(input_ids, attention_mask)
    for size in (8, 16):
        on_device = reduced.combine_features(pooled, dimensions=size)
        assert on_device.dtype == torch.float32 and tuple(on_device.shape) == (len(TEXTS), size)
        np.testing.assert_allclose(on_device.numpy(), reduced.encode(TEXTS, dimensions=size), atol=1e-5, rtol=0)
    np.testing.assert_allclose(reduced.combine_features(pooled).numpy(), reduced.encode(TEXTS), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"dimensions=12 is not fitted"):
        reduced.combine_features(pooled, dimensions=12)
    with pytest.raises(ValueError, match=r"fitted on sum .* not concat"):
        reduced.check_dimensions(8, "concat")


def test_blocks_bound_the_working_copies_whatever_the_width():
    from moee_plugins.core.combine import BLOCK_BYTES, MAX_BLOCK_ROWS, block_rows, combine, finite_rows

    assert block_rows(3072) == BLOCK_BYTES // (8 * 3072) == 170 and block_rows(8) == MAX_BLOCK_ROWS
    assert block_rows(10**9) == 1
    rng = np.random.default_rng(0)
    hidden, routing = rng.standard_normal((1500, 2000), dtype=np.float32), rng.standard_normal((1500, 100),
                                                                                                 dtype=np.float32)
    assert block_rows(2100) < 1500  # several blocks: the result must not depend on where they are cut
    whole = np.concatenate([hidden / np.linalg.norm(hidden, axis=1, keepdims=True),
                            routing / np.linalg.norm(routing, axis=1, keepdims=True)], axis=1) / np.sqrt(2)
    np.testing.assert_allclose(combine(hidden, routing, "sum"), whole, atol=1e-6, rtol=0)
    routing[1234, 7] = np.nan
    assert np.flatnonzero(~finite_rows(routing)).tolist() == [1234]
