"""Loading: the ``moee:`` hook, its narrowness and idempotence, the hook-free factory, options, bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sentence_transformers import CrossEncoder, SentenceTransformer, SparseEncoder

import moee_plugins.sentence_transformers as mst
from moee_plugins import MoEEmbedder
from moee_plugins.sentence_transformers import MoEEModule, install_hook, load, split_model_kwargs


def test_alias_name_gives_a_moee_sentence_transformer(st_model, tiny_embedder, texts):
    assert isinstance(st_model, SentenceTransformer)
    assert isinstance(st_model[0], MoEEModule) and len(st_model) == 1
    assert st_model.get_embedding_dimension() == tiny_embedder.dim == 64 + 3 * 8
    assert st_model.similarity_fn_name == "dot"
    assert st_model.max_seq_length == 512
    assert st_model.tokenizer is st_model[0].embedder.tokenizer
    vectors = st_model.encode(texts)
    np.testing.assert_allclose(vectors, tiny_embedder.encode(texts), atol=1e-5)


def test_model_kwargs_carry_embedder_options_and_loading_arguments(st_hook, tiny_alias, tiny_embedder, statistics,
                                                                   texts):
    model = SentenceTransformer(tiny_alias, device="cpu", model_kwargs={
        "mode": "concat", "prompt": "none", "alpha": 2.0, "max_length": 64, "statistics": statistics,
        "torch_dtype": "float32", "attn_implementation": "eager",
    })
    embedder = model[0].embedder
    assert (embedder.mode, embedder.prompt.name, embedder.alpha, embedder.max_length) == ("concat", "none", 2.0, 64)
    assert embedder.attn_implementation == "eager"  # an embedder option now (issue 27), passed to from_pretrained
    assert embedder.model.config._attn_implementation == "eager"
    assert model.similarity_fn_name == "cosine"
    expected = tiny_embedder.combine(tiny_embedder.encode_parts(texts, prompt="none"), mode="concat")
    np.testing.assert_allclose(model.encode(texts), expected, atol=1e-5)


def test_split_model_kwargs():
    options, adapter, loading = split_model_kwargs(
        {"mode": "hs", "torch_dtype": "bfloat16", "include_weights": True, "device_map": "auto",
         "model_kwargs": {"revision": "main"}})
    assert options == {"mode": "hs", "dtype": "bfloat16"}
    assert adapter == {"include_weights": True}
    assert loading == {"device_map": "auto", "revision": "main"}
    assert split_model_kwargs(None) == ({}, {}, {})
    with pytest.raises(ValueError, match="both 'dtype' and 'torch_dtype'"):
        split_model_kwargs({"dtype": "float32", "torch_dtype": "bfloat16"})
    with pytest.raises(ValueError, match="trust_remote_code"):
        split_model_kwargs({"trust_remote_code": True})
    with pytest.raises(TypeError, match="model_kwargs must be a dict"):
        split_model_kwargs(["mode", "hs"])


def test_hook_is_idempotent_and_reversible(st_hook):
    hooked = SentenceTransformer.__dict__["__init__"]
    assert mst.hook_installed()
    assert install_hook() is False  # second call: nothing changes
    assert SentenceTransformer.__dict__["__init__"] is hooked
    try:
        assert mst.uninstall_hook() is True
        assert not mst.hook_installed() and mst.uninstall_hook() is False
        assert not hasattr(SentenceTransformer.__dict__["__init__"], "__moee_original_init__")
        assert install_hook() is True
    finally:
        install_hook()
    # only SentenceTransformer is touched
    for cls in (CrossEncoder, SparseEncoder):
        assert not hasattr(cls.__init__, "__moee_original_init__")


def test_hook_leaves_other_names_exactly_as_the_library_runs_them(st_hook, tiny_model_dir, texts, tmp_path):
    """A plain sentence-transformers folder loads to the same vectors with and without the hook."""
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(str(tiny_model_dir))
    plain = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension())], device="cpu")
    plain.save(str(tmp_path / "plain"))
    hooked = SentenceTransformer(str(tmp_path / "plain"), device="cpu")
    assert not any(isinstance(m, MoEEModule) for m in hooked)
    mst.uninstall_hook()
    try:
        stock = SentenceTransformer(str(tmp_path / "plain"), device="cpu")
    finally:
        install_hook()
    np.testing.assert_array_equal(hooked.encode(texts), stock.encode(texts))


def test_hook_free_factory(st_hook, tiny_model_dir, tiny_embedder, statistics, texts):
    mst.uninstall_hook()
    try:
        model = load(str(tiny_model_dir), device="cpu", mode="hs", statistics=statistics,
                     prompts={"query": "query: "})
        assert not mst.hook_installed()
    finally:
        install_hook()
    assert isinstance(model, SentenceTransformer) and model.similarity_fn_name == "cosine"
    assert model.prompts["query"] == "query: "
    np.testing.assert_allclose(model.encode(texts), tiny_embedder.combine(tiny_embedder.encode_parts(texts), mode="hs"),
                               atol=1e-5)


def test_modules_path_sets_similarity_from_the_mode(tiny_embedder):
    # a model assembled by hand (no hook, no factory) still gets the mode's similarity and an MoEE model card
    module = MoEEModule(MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model,
                                                tokenizer=tiny_embedder.tokenizer))
    model = SentenceTransformer(modules=[module], device="cpu")
    assert model.similarity_fn_name == "dot"
    assert "import moee_plugins" in model._model_card_text
    explicit = SentenceTransformer(modules=[module], device="cpu", similarity_fn_name="cosine")
    assert explicit.similarity_fn_name == "cosine"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model_kwargs": {"mode": "bogus"}}, ValueError, "mode must be one of"),
        ({"model_kwargs": {"prompt": "no placeholder"}}, ValueError, "prompt"),
        ({"backend": "onnx"}, ValueError, "torch backend"),
        ({"processor_kwargs": {"padding_side": "left"}}, ValueError, "processor_kwargs=... is not supported"),
        ({"revision": "main"}, ValueError, "revision=... is not supported"),
        ({"model_kwargs": {"device": "cpu"}}, ValueError, "pass device=... to SentenceTransformer"),
    ],
)
def test_bad_options_name_the_problem(st_hook, tiny_alias, kwargs, error, match):
    with pytest.raises(error, match=match):
        SentenceTransformer(tiny_alias, **kwargs)


def test_bad_names(st_hook, tmp_path):
    with pytest.raises(ValueError, match="names no model"):
        SentenceTransformer("moee:")
    with pytest.raises(OSError):
        SentenceTransformer(f"moee:{tmp_path / 'missing'}")
    with pytest.raises(TypeError, match="model must be"):
        load("")


def test_lazy_activation_when_sentence_transformers_is_already_imported(st_hook):
    from moee_plugins import _st_hook

    mst.uninstall_hook()
    try:
        _st_hook.activate()  # sentence_transformers is in sys.modules: installs at once, no finder left behind
        assert mst.hook_installed() and not _st_hook.pending()
        _st_hook.activate()
        assert mst.hook_installed()
    finally:
        install_hook()


def test_module_follows_its_weights_and_survives_pickling(tiny_model_dir, statistics, texts):
    model = load(str(tiny_model_dir), device="cpu", statistics=statistics)
    before = model.encode(texts)
    assert model.to("cpu") is model  # what sentence-transformers does on encode(device=...) and in the pool workers
    assert model[0].embedder.device == next(model.parameters()).device
    np.testing.assert_array_equal(model.encode(texts), before)
    clone = pickle.loads(pickle.dumps(model))  # the multi-process pool sends the model this way
    assert clone[0].embedder.config == model[0].embedder.config
    np.testing.assert_array_equal(clone.encode(texts), before)


def test_truncate_dim_is_refused_without_a_fitted_reduction(st_hook, tiny_alias, statistics, texts):
    with pytest.raises(ValueError, match="truncate_dim=32 would cut"):
        SentenceTransformer(tiny_alias, device="cpu", truncate_dim=32, model_kwargs={"statistics": statistics})


def test_truncate_dim_of_a_fitted_size_gives_the_core_compact_vectors(st_hook, tiny_alias, tiny_embedder, statistics,
                                                                       texts, tmp_path):
    """``truncate_dim`` = a fitted compact size: the fitted PCA, not a cut (which would keep only hidden-state
    dimensions); int8/binary precision quantise those vectors; the reduction is saved with the model."""
    from sentence_transformers.util.quantization import quantize_embeddings

    from moee_plugins.core.standardize import calibration_sentences

    core = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)
    core.fit_reduction(list(calibration_sentences()[:120]), [8, 16])
    expected = core.encode(texts, dimensions=16)
    reduction = core.config["reduction"]
    model = SentenceTransformer(tiny_alias, device="cpu", truncate_dim=16,
                                model_kwargs={"statistics": statistics, "reduction": reduction})
    assert model.get_embedding_dimension() == 16
    got = model.encode(texts)
    assert got.shape == (len(texts), 16)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.abs(got - core.encode(texts)[:, :16]).max() > 0.1  # really not the first 16 full dimensions
    np.testing.assert_array_equal(model.encode(texts, precision="int8"), quantize_embeddings(got, precision="int8"))
    np.testing.assert_array_equal(model.encode(texts, precision="binary"),
                                  quantize_embeddings(got, precision="binary"))
    with model.truncate_embeddings(8):  # sentence-transformers' own way to change it for a while
        np.testing.assert_allclose(model.encode(texts), core.encode(texts, dimensions=8), atol=1e-5, rtol=0)
    model.truncate_dim = None
    np.testing.assert_allclose(model.encode(texts), core.encode(texts), atol=1e-5, rtol=0)
    model.truncate_dim = 16
    model.save(str(tmp_path / "saved"))
    reloaded = SentenceTransformer(f"moee:{tmp_path / 'saved'}", device="cpu", truncate_dim=16)
    np.testing.assert_allclose(reloaded.encode(texts), expected, atol=1e-5, rtol=0)
