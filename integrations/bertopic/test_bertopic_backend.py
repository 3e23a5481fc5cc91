"""MoEEBackend as a BERTopic BaseEmbedder: output contract, prompts, construction, copying."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

pytest.importorskip("bertopic", reason="the bertopic extra is not installed")

from bertopic.backend import BaseEmbedder
from bertopic.backend._utils import select_backend

from moee_plugins import MoEEmbedder, get_alias, register_alias
from moee_plugins.bertopic import MoEEBackend


def test_is_a_base_embedder_and_select_backend_keeps_it(backend):
    assert isinstance(backend, BaseEmbedder)
    assert select_backend(backend) is backend
    assert select_backend(backend, language="english") is backend


def test_embed_matches_core_in_order_and_float32(backend, embedder, docs, embeddings):
    texts = docs[:7]
    out = backend.embed(texts)
    assert out.dtype == np.float32 and out.shape == (7, embedder.dim)
    np.testing.assert_array_equal(out, embedder.encode(texts))
    np.testing.assert_allclose(out, embeddings[:7], rtol=1e-5, atol=1e-6)  # same rows as in the full corpus batch
    # row i belongs to input i, whatever the order
    np.testing.assert_array_equal(backend.embed(texts[::-1]), out[::-1])
    np.testing.assert_array_equal(backend.embed_documents(texts), out)
    np.testing.assert_array_equal(backend.embed(np.array(texts, dtype=object)), out)
    assert backend.embed([]).shape == (0, embedder.dim)


def test_verbose_shows_a_progress_bar(backend, docs, capsys):
    backend.embed(docs[:3], verbose=True)
    assert "Encoding" in capsys.readouterr().err
    backend.embed(docs[:3], verbose=False)
    assert "Encoding" not in capsys.readouterr().err


def test_words_share_the_document_prompt_by_default(backend, embedder):
    words = ["hockey", "rocket", "flour"]
    words_vec = backend.embed_words(words)
    np.testing.assert_array_equal(words_vec, backend.embed_documents(words))
    np.testing.assert_array_equal(words_vec, embedder.encode(words, prompt="prompteol"))
    assert not np.allclose(words_vec, embedder.encode(words, prompt="none"))


def test_word_prompt_applies_to_embed_words_only(embedder):
    backend = MoEEBackend(embedder, word_prompt="none")
    words = ["hockey", "rocket"]
    np.testing.assert_array_equal(backend.embed_words(words), embedder.encode(words, prompt="none"))
    np.testing.assert_array_equal(backend.embed_documents(words), embedder.encode(words))
    assert backend.config["word_prompt"] == "none"


def test_construction_from_a_name_with_options(tiny_alias, fast_cpu):
    backend = MoEEBackend(tiny_alias, mode="hs", device="cpu", batch_size=4, model_kwargs=fast_cpu)
    assert backend.embedder.mode == "hs" and backend.embedder.batch_size == 4
    vectors = backend.embed(["a puck", "a rocket"])
    assert vectors.shape == (2, backend.embedder.hidden_dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_default_model_is_moee_olmoe(tiny_model_dir, embedder, fast_cpu):
    """``MoEEBackend()`` loads ``moee:olmoe``; point that alias at the tiny model so nothing downloads."""
    original = get_alias("olmoe")
    register_alias("olmoe", str(tiny_model_dir), description="test stand-in", overwrite=True)
    try:
        backend = MoEEBackend(device="cpu", statistics=embedder.statistics, model_kwargs=fast_cpu)  # no calibration
        assert backend.embedder.config["model"] == "moee:olmoe"
        assert backend.embed(["one", "two"]).shape == (2, backend.dim)
    finally:
        register_alias(original.name, original.model_id, description=original.description,
                       defaults=original.defaults, requires_remote_code=original.requires_remote_code, overwrite=True)


def test_bad_arguments_are_named(embedder):
    with pytest.raises(TypeError, match="existing MoEEmbedder"):
        MoEEBackend(embedder, mode="hs")
    with pytest.raises(TypeError, match="MoEEmbedder, got int"):
        MoEEBackend(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt"):
        MoEEBackend(embedder, word_prompt="{text} and {text}")
    with pytest.raises(ValueError, match="'embedder'"):
        MoEEBackend.from_config({"model": "x"})


def test_deepcopy_shares_the_embedder(backend):
    clone = copy.deepcopy(backend)
    assert clone is not backend and clone.embedder is backend.embedder


def test_pickle_stores_the_config_and_rebuilds_an_identical_backend(backend, docs):
    payload = pickle.dumps(backend)
    assert len(payload) < 200_000  # the config (with statistics), not the weights
    restored = pickle.loads(payload)
    assert isinstance(restored, MoEEBackend) and restored.embedder is not backend.embedder
    assert isinstance(restored.embedder, MoEEmbedder)
    np.testing.assert_array_equal(restored.embed(docs[:5]), backend.embed(docs[:5]))


def test_compact_vectors_serve_documents_words_topics_and_survive_pickling(embedder, docs, n_topics):
    """``MoEEBackend(..., dimensions=d)``: the core's compact vectors for documents and words alike, a topic model
    fitted on them finds topics, and the size travels with the backend's config."""
    from bertopic import BERTopic
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    core = MoEEmbedder.from_config(embedder.config, model=embedder.model, tokenizer=embedder.tokenizer)
    core.fit_reduction(docs[:120], [16, 32])
    backend = MoEEBackend(core, dimensions=16)
    assert backend.dim == 16
    np.testing.assert_allclose(backend.embed(docs[:20]), core.encode(docs[:20], dimensions=16), atol=1e-6, rtol=0)
    assert backend.embed_words(["hockey", "printer"]).shape == (2, 16)
    restored = pickle.loads(pickle.dumps(backend))
    assert restored.dimensions == 16
    np.testing.assert_array_equal(restored.embed(docs[:5]), backend.embed(docs[:5]))
    model = BERTopic(embedding_model=backend, umap_model=PCA(n_components=8, random_state=0),
                     hdbscan_model=KMeans(n_clusters=n_topics, n_init=10, random_state=0))
    topics, _ = model.fit_transform(docs)
    assert len(topics) == len(docs) and len(set(topics)) == n_topics
    similar, scores = model.find_topics(docs[0], top_n=1)
    assert similar[0] == topics[0] and scores[0] > 0
    with pytest.raises(ValueError, match=r"MoEEBackend.dimensions: dimensions=8 is not fitted"):
        MoEEBackend(core, dimensions=8)
