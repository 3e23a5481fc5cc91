"""What sentence-transformers' own encode arguments and saved settings do to an MoEE model: a saved truncate_dim
comes back through ``moee:``, a per-call truncate_dim follows the module's rule, a per-call max_length is honoured
and other per-call tokenizer settings are refused rather than ignored."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from moee_plugins import MoEEmbedder
from moee_plugins.core.standardize import calibration_sentences


@pytest.fixture(scope="module")
def reduction(tiny_embedder):
    core = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)
    core.fit_reduction(list(calibration_sentences()[:120]), [16])
    return core


def test_a_saved_truncate_dim_comes_back_through_moee(st_hook, tiny_alias, statistics, reduction, texts, tmp_path):
    model = SentenceTransformer(tiny_alias, device="cpu", truncate_dim=16,
                                model_kwargs={"statistics": statistics, "reduction": reduction.config["reduction"]})
    model.save(str(tmp_path / "saved"))
    reloaded = SentenceTransformer(f"moee:{tmp_path / 'saved'}", device="cpu")  # no truncate_dim given this time
    assert reloaded.truncate_dim == 16 and reloaded.get_embedding_dimension() == 16
    np.testing.assert_allclose(reloaded.encode(texts), reduction.encode(texts, dimensions=16), atol=1e-5, rtol=0)


def test_a_per_call_truncate_dim_without_a_fitted_reduction_is_refused(st_model, texts):
    with pytest.raises(ValueError, match=r"truncate_dim=16 would cut .* fit a reduction"):
        st_model.encode(texts, truncate_dim=16)
    with pytest.raises(ValueError, match="truncate_dim=16 would cut"):
        st_model.encode_query(texts, truncate_dim=16)
    assert st_model.encode(texts[:2], truncate_dim=st_model.get_embedding_dimension()).shape[1] == 88


def test_a_per_call_truncate_dim_of_a_fitted_size_gives_the_compact_vectors(st_hook, tiny_alias, statistics,
                                                                             reduction, texts):
    model = SentenceTransformer(tiny_alias, device="cpu",
                                model_kwargs={"statistics": statistics, "reduction": reduction.config["reduction"]})
    np.testing.assert_allclose(model.encode(texts, truncate_dim=16), reduction.encode(texts, dimensions=16),
                               atol=1e-5, rtol=0)
    assert model.encode(texts).shape[1] == reduction.dim  # the call's size did not stay on the model


def test_a_per_call_max_length_is_honoured_and_other_processing_kwargs_refused(st_model, texts):
    core = st_model[0].embedder
    short = MoEEmbedder.from_config(core.config, model=core.model, tokenizer=core.tokenizer, max_length=16)
    got = st_model.encode(texts, processing_kwargs={"text": {"max_length": 16, "truncation": True}})
    np.testing.assert_allclose(got, short.encode(texts), atol=1e-5, rtol=0)  # the core's cut inside the template
    assert np.abs(got - st_model.encode(texts)).max() > 1e-3  # ... so not the model's own length
    for bad in ({"text": {"padding": "max_length"}}, {"text": {"max_length": 16, "truncation": False}},
                {"image": {"size": 4}}):
        with pytest.raises(ValueError, match="max_seq_length"):
            st_model.encode(texts, processing_kwargs=bad)
