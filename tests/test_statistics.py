"""Standardisation statistics: flat dimensions cannot amplify noise, bad statistics are refused, degenerate
calibrations are reported."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.core.standardize import ChannelStatistics, Statistics
from moee_plugins.testing import build_tiny_moe

TEXTS = ["moon", "The hockey team won the final game of the season.", "GPUs and printers", "Doctors study disease!"]


def _stats(hidden_mean, hidden_std, routing_mean=(0.0, 0.0), routing_std=(1.0, 1.0)) -> dict:
    return {"hidden": {"mean": list(hidden_mean), "std": list(hidden_std)},
            "routing": {"mean": list(routing_mean), "std": list(routing_std)}, "num_texts": 3}


def test_a_flat_dimension_standardises_to_zero_not_to_noise_times_1e8():
    channel = ChannelStatistics(np.array([0.0, 0.0, 2.0, 5.0]), np.array([1.0, 0.8, 0.0, 2e-3]))
    noisy = np.array([[0.3, -0.2, 2.0 + 3e-7, 5.0 - 2e-6]])
    z = channel.apply(noisy)
    assert channel.flat.tolist() == [False, False, True, True]
    assert z[0, 2] == 0.0 and z[0, 3] == 0.0
    np.testing.assert_allclose(z[0, :2], [0.3 / (1 + 1e-8), -0.2 / (0.8 + 1e-8)])  # the paper's rule elsewhere


def test_a_dimension_far_flatter_than_its_channel_is_flat_even_if_not_zero():
    std = np.full(10, 2.0)
    std[3] = 1e-4  # 20000x below the typical spread: its values would be noise x 1e4
    assert np.flatnonzero(ChannelStatistics(np.zeros(10), std).flat).tolist() == [3]


@pytest.mark.parametrize(
    ("statistics", "message"),
    [
        (_stats([np.nan, 0.0], [1.0, 1.0]), r"mean is not finite at dimensions \[0\]"),
        (_stats([0.0, 0.0], [1.0, np.inf]), r"std is not finite at dimensions \[1\]"),
        (_stats([0.0, 0.0], [1.0, -0.5]), r"std is negative at dimensions \[1\]"),
        (_stats([0.0, 0.0, 0.0], [1.0, 1.0]), "mean/std must have equal length"),
        (_stats([[0.0], [0.0]], [[1.0], [1.0]]), "must be a non-empty 1-D list"),
        (_stats(["a", "b"], [1.0, 1.0]), "must be a list of numbers"),
        ({"hidden": {"mean": [0.0], "std": [1.0]}}, r"lacks \['routing'\]"),
        ({"hidden": {"mean": [0.0]}, "routing": {"mean": [0.0], "std": [1.0]}}, "with 'mean' and 'std'"),
        ("x", "statistics must be a Statistics or its dict, got str"),
    ],
)
def test_invalid_statistics_are_refused_with_the_reason(statistics, message):
    with pytest.raises(ValueError, match=message):
        Statistics.from_dict(statistics)


def test_set_statistics_refuses_bad_values_and_wrong_dimensions(tiny_embedder):
    good = tiny_embedder.statistics.to_dict()
    bad = {**good, "routing": {**good["routing"], "std": [-1.0] * tiny_embedder.routing_dim}}
    with pytest.raises(ValueError, match="std is negative"):
        tiny_embedder.set_statistics(bad)
    short = {**good, "hidden": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}}
    with pytest.raises(ValueError, match=r"statistics are for \(hidden=2"):
        tiny_embedder.set_statistics(short)
    with pytest.raises(ValueError, match="calibration hidden values are not all finite"):
        Statistics.fit(np.array([[np.nan], [1.0]]), np.ones((2, 1)), source="test")
    assert tiny_embedder.statistics.to_dict() == good


def test_calibrating_on_identical_texts_warns_and_gives_batch_independent_vectors(tiny_model_dir, one_thread, caplog):
    embedder = MoEEmbedder(str(tiny_model_dir), device="cpu")
    with caplog.at_level(logging.WARNING, logger="moee_plugins"):
        embedder.calibrate(["the same text"] * 4)
    assert "gave the same hidden state (identical texts?)" in caplog.text
    parts = embedder.encode_parts(TEXTS, batch_size=4)
    for mode in ("rw", "concat", "sum"):
        batched = embedder.combine(parts, mode)
        alone = np.concatenate([embedder.combine(embedder.encode_parts([t]), mode) for t in TEXTS])
        assert np.isfinite(batched).all()
        assert np.abs(batched - alone).max() < 1e-4, mode


def test_a_model_whose_routers_are_all_zero_warns_and_stays_batch_invariant(tmp_path, one_thread, caplog):
    path = build_tiny_moe(tmp_path / "zero-routers", "olmoe", router_std=0.0)
    embedder = MoEEmbedder(str(path), mode="concat", device="cpu")
    with caplog.at_level(logging.WARNING, logger="moee_plugins"):
        embedder.calibrate([*TEXTS, "Cars need maintenance.", "A quoted word?"])
    assert "every router score is 0" in caplog.text
    assert embedder.statistics.routing.flat.all() and not embedder.statistics.hidden.flat.any()
    parts = embedder.encode_parts(TEXTS, batch_size=4)
    assert not parts.routing.any()
    for mode in ("hs", "rw", "concat", "sum"):
        batched = embedder.combine(parts, mode)
        alone = np.concatenate([embedder.combine(embedder.encode_parts([t]), mode) for t in TEXTS])
        assert np.isfinite(batched).all()
        assert np.abs(batched - alone).max() < 1e-4, mode
    # the hidden-state half still carries the texts apart
    concat = embedder.combine(parts, "concat")
    assert np.abs(concat[0] - concat[1]).max() > 1e-2
