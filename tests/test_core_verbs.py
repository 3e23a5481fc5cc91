"""The core's public verbs: the options table, explicit statistics, portable folders, pickling and devices,
per-call mode/alpha, the forward on padded tensors, and clear errors for bad options and inputs."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from moee_plugins import MoEEmbedder, Statistics, register_alias, unregister_alias
from moee_plugins.core import options
from moee_plugins.core.standardize import ChannelStatistics

TEXTS = ["The hockey team won.", "GPUs and printers", "moon", "a longer sentence about rockets in orbit"]


@pytest.fixture(scope="module")
def shared(tiny_embedder, one_thread):
    """A fresh embedder around the session's model and statistics, free to mutate."""
    def make(**overrides):
        return MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model,
                                       tokenizer=tiny_embedder.tokenizer, **overrides)
    return make


# ---------------------------------------------------------------- options table
def test_every_option_has_a_kind_and_fingerprints_come_from_the_table(tiny_embedder):
    assert set(options.OPTIONS) == set(tiny_embedder.config) - {"model", *options.STATE_KEYS, *options.INFO_KEYS}
    assert {o.kind for o in options.OPTIONS.values()} == {"parts", "vectors", "runtime"}
    vector = options.vector_options(tiny_embedder.config)
    assert {"mode", "alpha", "prompt", "layers", "dtype"} <= set(vector)
    assert not {"batch_size", "max_tokens_per_batch", "trust_remote_code"} & set(vector)
    assert "mode" not in options.parts_options(tiny_embedder.config)
    fingerprint = tiny_embedder.fingerprint()
    json.dumps(fingerprint)  # serialisable
    assert fingerprint["statistics_sha256"] and fingerprint["resolved_dtype"] == "float32"
    assert tiny_embedder.fingerprint("parts")["model"] == fingerprint["model"]


def test_fingerprint_changes_with_what_changes_vectors_only(shared):
    base = shared()
    assert shared(batch_size=3).fingerprint() == base.fingerprint()
    assert shared(alpha=2.0).fingerprint() != base.fingerprint()
    assert shared(alpha=2.0).fingerprint("parts") == base.fingerprint("parts")
    assert shared(max_length=64).fingerprint("parts") != base.fingerprint("parts")


def test_alias_defaults_apply_to_every_option(tiny_model_dir, one_thread):
    register_alias("tiny-hs-mean", str(tiny_model_dir), defaults={"mode": "hs", "pooling": "mean", "max_length": 64},
                   overwrite=True)
    register_alias("tiny-bad-default", str(tiny_model_dir), defaults={"colour": "red"}, overwrite=True)
    try:
        embedder = MoEEmbedder("moee:tiny-hs-mean", device="cpu")
        assert (embedder.mode, embedder.pooling, embedder.max_length) == ("hs", "mean", 64)
        assert MoEEmbedder("moee:tiny-hs-mean", mode="sum", device="cpu").mode == "sum"  # the caller wins
        with pytest.raises(TypeError, match=r"defaults of alias 'tiny-bad-default'.*colour"):
            MoEEmbedder("moee:tiny-bad-default", device="cpu")
    finally:
        unregister_alias("tiny-hs-mean")
        unregister_alias("tiny-bad-default")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layers": []}, ValueError, r"layers=\[\] selects no router"),
        ({"dtype": torch.float64}, ValueError, "dtype torch.float64 is not supported"),
        ({"normalize": "no"}, TypeError, "normalize must be True or False"),
        ({"model_kwargs": "x"}, TypeError, "model_kwargs must be a dict"),
        ({"model_kwargs": {"trust_remote_code": True}}, ValueError, "model_kwargs may not set 'trust_remote_code'"),
        ({"statistics": "x"}, TypeError, "statistics must be a Statistics"),
        ({"alpha": 1e308}, ValueError, "at most"),
        ({"alpha": True}, ValueError, "alpha must be"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
        ({"max_length": np.float64(3.0)}, ValueError, "max_length must be a positive integer"),
        ({"trust_remote_code": "yes"}, TypeError, "trust_remote_code must be True or False"),
    ],
)
def test_bad_options_get_clear_errors_before_loading(kwargs, error, match):
    with pytest.raises(error, match=match):
        MoEEmbedder("moee:olmoe", **kwargs)


def test_numpy_scalars_are_accepted_as_python_numbers(shared):
    embedder = shared(batch_size=np.int64(4), max_length=np.int32(128), alpha=np.float32(0.5), layers=np.array([0, 2]),
                      statistics=None)
    assert embedder.batch_size == 4 and type(embedder.batch_size) is int
    assert embedder.alpha == 0.5 and type(embedder.alpha) is float
    assert embedder.layers == [0, 2] and embedder.max_length == 128
    json.dumps(embedder.config)


def test_dtype_objects_are_stored_by_name(shared):
    assert shared(dtype=torch.float32).config["dtype"] == "float32"


def test_from_config_errors():
    with pytest.raises(ValueError, match="needs a 'model' entry"):
        MoEEmbedder.from_config({})
    with pytest.raises(TypeError, match="config must be a dict"):
        MoEEmbedder.from_config("moee:olmoe")


# ---------------------------------------------------------------- input checks
@pytest.mark.parametrize("texts", [{"b", "a"}, frozenset({"a"})])
def test_a_set_of_texts_is_refused(tiny_embedder, texts):
    with pytest.raises(TypeError, match="ordered sequence"):
        tiny_embedder.encode(texts)


def test_lone_surrogate_names_its_index(tiny_embedder):
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode.*character 2"):
        tiny_embedder.encode(["fine", "ab\ud800c"])


def test_batch_size_zero_is_an_error_not_the_default(tiny_embedder):
    for call in (tiny_embedder.encode, tiny_embedder.encode_parts):
        with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
            call(["a"], batch_size=0)


# ---------------------------------------------------------------- statistics
def test_combine_never_runs_the_model(shared):
    embedder = shared()
    parts = embedder.encode_parts(TEXTS)
    embedder.statistics = None
    with embedder.engine.observe(lambda forward_pass: pytest.fail("combine ran the model")):
        with pytest.raises(RuntimeError, match="ensure_statistics"):
            embedder.combine(parts)
        assert embedder.combine(parts, "hs").shape == (len(TEXTS), embedder.hidden_dim)  # hs needs no statistics


def test_ensure_statistics_calibrates_once_and_says_so(shared, tiny_embedder, caplog):
    embedder = shared(statistics=None)
    embedder.statistics = None
    with caplog.at_level(logging.INFO, logger="moee_plugins"):
        stats = embedder.ensure_statistics()
        again = embedder.ensure_statistics()
    messages = [r.getMessage() for r in caplog.records if "calibrating on" in r.getMessage()]
    assert len(messages) == 1 and "calibrating on 520 built-in sentences" in messages[0]
    assert again is stats
    np.testing.assert_array_equal(stats.hidden.mean, tiny_embedder.statistics.hidden.mean)
    hs_only = shared(mode="hs", statistics=None)
    hs_only.statistics = None
    with hs_only.engine.observe(lambda forward_pass: pytest.fail("hs mode calibrated")):
        assert hs_only.ensure_statistics() is None and hs_only.statistics is None


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_non_finite_vectors_are_refused(shared):
    embedder = shared()
    stats = embedder.statistics
    bad = ChannelStatistics(stats.hidden.mean.copy(), stats.hidden.std.copy())
    bad.mean[0] = np.inf
    embedder.statistics = Statistics(bad, stats.routing, 2, "poisoned")
    with pytest.raises(FloatingPointError, match=r"vectors of inputs \[0, 1\].*not finite"):
        embedder.encode(["a", "b"])


# ---------------------------------------------------------------- per-call mode and alpha, padded tensors
@pytest.mark.parametrize(("mode", "alpha"), [("hs", None), ("rw", None), ("concat", None), ("sum", 0.25)])
def test_encode_mode_and_alpha_per_call(tiny_embedder, mode, alpha):
    parts = tiny_embedder.encode_parts(TEXTS)
    np.testing.assert_array_equal(tiny_embedder.encode(TEXTS, mode=mode, alpha=alpha),
                                  tiny_embedder.combine(parts, mode, alpha=alpha))


@pytest.mark.parametrize("mode", ["hs", "rw", "concat", "sum"])
def test_forward_on_padded_tensors_equals_encode(tiny_embedder, mode):
    input_ids, attention_mask = tiny_embedder.pad(tiny_embedder.tokenize(TEXTS))
    pooled = tiny_embedder.encode_features(input_ids, attention_mask)
    assert isinstance(pooled, torch.Tensor) and pooled.shape == (len(TEXTS), tiny_embedder.hidden_dim + 24)
    parts = tiny_embedder.encode_parts(TEXTS)
    np.testing.assert_allclose(pooled[:, :64].numpy(), parts.hidden, atol=1e-5)
    np.testing.assert_allclose(pooled[:, 64:].numpy(), parts.routing, atol=1e-5)
    on_device = tiny_embedder.combine_features(pooled, mode, alpha=0.5).numpy()
    np.testing.assert_allclose(on_device, tiny_embedder.combine(parts, mode, alpha=0.5), atol=1e-5)


def test_instruction_prompt_rule(tiny_embedder):
    template = tiny_embedder.prompt_for("query: ")
    assert template.prefix == "query: " + tiny_embedder.prompt.prefix and template.suffix == tiny_embedder.prompt.suffix
    assert tiny_embedder.prompt_for(None) is tiny_embedder.prompt and tiny_embedder.prompt_for("raw").name == "raw"
    with_prefix = tiny_embedder.encode(["moon"], prompt="query: ")
    assert np.abs(with_prefix - tiny_embedder.encode(["moon"])).max() > 1e-4


# ---------------------------------------------------------------- pickling, devices
def test_pickle_and_to_keep_vectors(shared):
    embedder = shared()
    expected = embedder.encode(TEXTS)
    clone = pickle.loads(pickle.dumps(embedder))
    assert clone.config == embedder.config
    np.testing.assert_array_equal(clone.encode(TEXTS), expected)
    assert embedder.to("cpu") is embedder and embedder.device == torch.device("cpu")
    np.testing.assert_array_equal(embedder.encode(TEXTS), expected)


# ---------------------------------------------------------------- portable folders
def test_save_pretrained_round_trip_in_a_fresh_process_after_moving_the_folder(shared, tmp_path):
    embedder = shared(mode="concat", alpha=0.5, max_length=128)
    expected = embedder.encode(TEXTS)
    saved = embedder.save_pretrained(tmp_path / "saved", include_weights=True)
    assert {"moee_config.json", "moee_statistics.json", "tokenizer.json"} <= {p.name for p in saved.iterdir()}
    moved = shutil.move(str(saved), str(tmp_path / "moved"))
    script = (
        "import sys, numpy as np, torch\n"
        "torch.set_num_threads(1)\n"
        "from moee_plugins import MoEEmbedder\n"
        f"emb = MoEEmbedder.from_pretrained({moved!r}, device='cpu')\n"
        "assert (emb.mode, emb.alpha, emb.max_length) == ('concat', 0.5, 128)\n"
        f"np.save(sys.argv[1], emb.encode({TEXTS!r}))\n"
    )
    out = tmp_path / "vectors.npy"
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=240)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


def test_saved_folder_without_weights_references_the_resolved_model(shared, tiny_model_dir, tmp_path):
    saved = shared().save_pretrained(tmp_path / "ref")
    config = json.loads((saved / "moee_config.json").read_text())
    assert config["weights"] is None and config["embedder"]["model"] == str(tiny_model_dir.resolve())


@pytest.mark.parametrize("weights", ["../elsewhere", "/abs/model", "moee_model/../../x"])
def test_weights_reference_outside_the_folder_is_refused(shared, tmp_path, weights):
    saved = shared().save_pretrained(tmp_path / "f")
    config_path = saved / "moee_config.json"
    config = json.loads(config_path.read_text())
    config["weights"] = weights
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="points outside the folder"):
        MoEEmbedder.from_pretrained(saved, device="cpu")


# ---------------------------------------------------------------- consent to run code
@pytest.fixture()
def hostile(hostile_model):
    return hostile_model


def test_hostile_folder_really_runs_code_when_trusted(hostile):
    """The control: the folder below is dangerous, so the refusals that follow can fail."""
    model_dir, marker = hostile
    MoEEmbedder.from_config({"model": str(model_dir), "mode": "hs"}, device="cpu", trust_remote_code=True)
    assert marker.exists()


def test_a_config_never_switches_remote_code_on(hostile, caplog):
    model_dir, marker = hostile
    config = {"model": str(model_dir), "mode": "hs", "trust_remote_code": True}
    embedder = MoEEmbedder.from_config(config, device="cpu")
    assert not marker.exists() and embedder.trust_remote_code is False
    assert "ignoring trust_remote_code=true" in caplog.text


def test_a_saved_folder_never_switches_remote_code_on(hostile, tmp_path):
    model_dir, marker = hostile
    folder = tmp_path / "folder"
    folder.mkdir()
    embedder_config = {"model": str(model_dir), "mode": "hs", "trust_remote_code": True}
    (folder / "moee_config.json").write_text(json.dumps({"format": "moee-plugins/embedder", "format_version": 1,
                                                         "weights": None, "embedder": embedder_config}))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(model_dir / name, folder / name)
    MoEEmbedder.from_pretrained(folder, device="cpu")
    assert not marker.exists()
