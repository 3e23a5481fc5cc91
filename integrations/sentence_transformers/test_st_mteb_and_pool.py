"""MTEB's own compatibility check, and multi-process encoding on two CPU workers."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer


def test_mteb_mock_run_passes(st_model):
    mteb = pytest.importorskip("mteb")
    from mteb.models import SentenceTransformerEncoderWrapper

    # mteb.mock_run takes an mteb model; this wrapper is what mteb.evaluate builds from a SentenceTransformer
    results = mteb.mock_run(SentenceTransformerEncoderWrapper(st_model))
    ran = {name: status for name, status in results.items() if status is not None}
    failures = {name: status.exception[-500:] for name, status in ran.items() if hasattr(status, "exception")}
    assert results.all_passed, failures
    assert len(ran) >= 20  # every text task of the mock grid ran


def test_multi_process_pool_on_two_cpus(st_model, texts, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the spawned workers read it at start-up
    expected = st_model.encode(texts)
    query = st_model.encode_query(texts[:3], prompt="query: ")
    pool = st_model.start_multi_process_pool(["cpu", "cpu"])
    try:
        pooled = st_model.encode(texts, pool=pool, chunk_size=3)
        pooled_query = st_model.encode_query(texts[:3], prompt="query: ", pool=pool, chunk_size=1)
    finally:
        SentenceTransformer.stop_multi_process_pool(pool)
    np.testing.assert_allclose(pooled, expected, atol=1e-5)  # row order kept across workers and chunks
    np.testing.assert_allclose(pooled_query, query, atol=1e-5)
    np.testing.assert_allclose(st_model.encode(texts), expected, atol=0)  # the parent model still works
