"""Our channels equal what the paper's own MoEE code computed on the same tiny OLMoE checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from moee_plugins import MoEEmbedder

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def expected(parity_dir):
    return np.load(parity_dir / "expected.npz", allow_pickle=True)


@pytest.fixture(scope="module")
def reference_embedder(parity_dir):
    return MoEEmbedder(str(parity_dir / "model"), mode="hs", prompt="prompteol", pooling="last", routing="logits",
                       device="cpu")


@pytest.mark.parametrize("batch_size", [6, 1, 4])
def test_hidden_and_routing_match_reference(reference_embedder, expected, batch_size):
    texts = [str(t) for t in expected["texts"]]
    parts = reference_embedder.encode_parts(texts, batch_size=batch_size)
    assert np.abs(parts.hidden - expected["hs_bs6"]).max() < TOLERANCE
    assert np.abs(parts.hidden - expected["hs_bs1"]).max() < TOLERANCE
    assert np.abs(parts.routing - expected["rw_raw_bs6"]).max() < TOLERANCE
    assert np.abs(parts.routing - expected["rw_raw_bs1"]).max() < TOLERANCE


def test_hs_and_rw_modes_match_reference(parity_dir, expected):
    texts = [str(t) for t in expected["texts"]]
    hs = MoEEmbedder(str(parity_dir / "model"), mode="hs", normalize=False, device="cpu").encode(texts)
    assert np.abs(hs - expected["hs_bs6"]).max() < TOLERANCE
    # rw mode is z(RW); the reference standardises with its batch's statistics, so calibrate on that batch
    rw_embedder = MoEEmbedder(str(parity_dir / "model"), mode="rw", normalize=False, device="cpu")
    rw_embedder.calibrate(texts)
    rw = rw_embedder.encode(texts)
    assert rw.shape == (6, 24) and np.abs(rw - expected["moee_concat_bs6"][:, 64:]).max() < TOLERANCE


def test_concat_matches_reference_when_calibrated_on_the_same_batch(parity_dir, expected):
    """The reference z-scores with its batch's statistics; calibrating on that batch reproduces it exactly."""
    texts = [str(t) for t in expected["texts"]]
    embedder = MoEEmbedder(str(parity_dir / "model"), mode="concat", normalize=False, device="cpu")
    embedder.calibrate(texts)
    assert np.abs(embedder.encode(texts) - expected["moee_concat_bs6"]).max() < TOLERANCE


def test_routing_layout_names_every_moe_layer(reference_embedder):
    parts = reference_embedder.encode_parts(["moon"])
    assert [(b.layer, b.num_experts) for b in parts.layout] == [(0, 8), (1, 8), (2, 8)]
    np.testing.assert_array_equal(parts.layer(1), parts.routing[:, 8:16])
