"""Bad input gets a clear error; odd-but-valid input gets a finite vector in the right row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moee_plugins import MoEEmbedder


def test_none_is_a_type_error(tiny_embedder):
    with pytest.raises(TypeError, match="got None"):
        tiny_embedder.encode(None)


@pytest.mark.parametrize(("texts", "index"), [(["ok", None], 1), ([3, "ok"], 0), (["a", "b", b"bytes"], 2)])
def test_non_string_items_name_their_index(tiny_embedder, texts, index):
    with pytest.raises(TypeError, match=rf"texts\[{index}\] must be a string"):
        tiny_embedder.encode(texts)


@pytest.mark.parametrize("texts", [42, b"bytes", {"a": 1}])
def test_wrong_container_types(tiny_embedder, texts):
    with pytest.raises(TypeError, match="texts must be a string or a sequence of strings"):
        tiny_embedder.encode(texts)


def test_empty_list_gives_an_empty_matrix(tiny_embedder):
    out = tiny_embedder.encode([])
    assert out.shape == (0, tiny_embedder.dim) and out.dtype == np.float32
    assert len(tiny_embedder.encode_parts([])) == 0


@pytest.mark.parametrize("prompt", ["prompteol", "none", "raw"])
def test_empty_and_whitespace_strings_give_finite_vectors(tiny_embedder, prompt):
    out = tiny_embedder.encode(["", "   ", "\n", "real text"], prompt=prompt)
    assert out.shape == (4, tiny_embedder.dim)
    assert np.isfinite(out).all()


def test_single_string_gives_a_vector(tiny_embedder):
    vector = tiny_embedder.encode("moon")
    assert vector.shape == (tiny_embedder.dim,) and vector.dtype == np.float32
    np.testing.assert_allclose(vector, tiny_embedder.encode(["moon"])[0], atol=1e-6)


def test_text_far_longer_than_max_length(tiny_embedder):
    out = tiny_embedder.encode(["long " * 20_000, "short"])
    assert out.shape == (2, tiny_embedder.dim) and np.isfinite(out).all()


def test_generators_and_tuples_are_accepted_in_order(tiny_embedder):
    texts = ["alpha", "beta", "gamma"]
    expected = tiny_embedder.encode(texts)
    np.testing.assert_allclose(tiny_embedder.encode(t for t in texts), expected, atol=1e-6)
    np.testing.assert_allclose(tiny_embedder.encode(tuple(texts)), expected, atol=1e-6)


def test_non_finite_model_output_raises_instead_of_returning_nan(tiny_embedder):
    embedder = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model,
                                       tokenizer=tiny_embedder.tokenizer)

    def poisoned(module, inputs, output):  # the model itself returns NaN in the first row of the batch
        output = output.clone()
        output[0, :, 0] = float("nan")
        return output

    hook = embedder.model.norm.register_forward_hook(poisoned)
    try:
        with pytest.raises(FloatingPointError, match=r"non-finite .* inputs \[\d\]"):
            embedder.encode(["a", "b"])
    finally:
        hook.remove()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "mean"}, ValueError, "mode must be one of"),
        ({"pooling": "cls"}, ValueError, "pooling must be one of"),
        ({"routing": "weights"}, ValueError, "routing must be one of"),
        ({"alpha": -1}, ValueError, "alpha must be"),
        ({"alpha": float("nan")}, ValueError, "alpha must be"),
        ({"standardize": "batch"}, ValueError, "standardize must be"),
        ({"quantization": "3bit"}, ValueError, "quantization must be"),
        ({"max_length": 0}, ValueError, "max_length must be"),
        ({"batch_size": "8"}, ValueError, "batch_size must be"),
        ({"layers": "0,1"}, TypeError, "layers must be"),
        ({"prompt": "no placeholder"}, ValueError, "exactly once"),
    ],
)
def test_bad_options_are_rejected_before_loading(kwargs, error, match):
    with pytest.raises(error, match=match):
        MoEEmbedder("moee:olmoe", **kwargs)


@pytest.mark.parametrize("model", [None, 3, ["moee:olmoe"]])
def test_bad_model_argument(model):
    with pytest.raises(TypeError, match="model must be"):
        MoEEmbedder(model)


def test_wrong_dtype_name(tiny_model_dir):
    with pytest.raises(ValueError, match="dtype must be"):
        MoEEmbedder(str(tiny_model_dir), dtype="float8")


def test_mean_pooling_ignores_padding(tiny_embedder):
    mean = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer,
                                   pooling="mean")
    texts = ["x", "a much longer text that forces padding on the short one"]
    together = mean.encode_parts(texts, batch_size=2)
    alone = mean.encode_parts(texts[:1])
    np.testing.assert_allclose(together.hidden[0], alone.hidden[0], atol=1e-4)
    np.testing.assert_allclose(together.routing[0], alone.routing[0], atol=1e-4)
    ids = torch.tensor([mean.tokenize(texts[:1])[0]])
    with torch.inference_mode():
        manual = mean.model(input_ids=ids).last_hidden_state.mean(dim=1)[0].numpy()
    np.testing.assert_allclose(alone.hidden[0], manual, atol=1e-4)
