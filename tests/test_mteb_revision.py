"""The MTEB wrapper files every result of one wrapper and its views under one revision, known at construction."""

from __future__ import annotations

import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.evaluation.mteb import MoEEMTEBModel, config_revision

TEXTS = ["The hockey team won.", "GPUs and printers", "moon"]


class _Metadata:
    name = "AnyTask"


def _encode(model: MoEEMTEBModel):
    return model.encode([{"text": TEXTS}], task_metadata=_Metadata(), hf_split="test", hf_subset="default")


def test_the_revision_is_fixed_at_construction_for_the_wrapper_and_its_views(tiny_embedder, small_builtin_calibration):
    fresh = dict(tiny_embedder.config, statistics=None)  # nothing calibrated yet: the first encode used to do it
    embedder = MoEEmbedder.from_config(fresh, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)
    model = MoEEMTEBModel(embedder, mode="hs")
    revision = model.mteb_model_meta.revision
    _encode(model)
    view = model.with_mode("sum")
    _encode(view)
    assert view.mteb_model_meta.revision == revision == model.mteb_model_meta.revision == config_revision(embedder)
    assert MoEEMTEBModel(embedder, mode="sum").mteb_model_meta.revision == revision  # a new wrapper agrees


def test_a_changed_embedder_is_refused_rather_than_filed_under_the_old_revision(tiny_embedder):
    embedder = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)
    model = MoEEMTEBModel(embedder, mode="sum")
    embedder.calibrate(TEXTS)
    with pytest.raises(ValueError, match="build a new MoEEMTEBModel"):
        _encode(model)
