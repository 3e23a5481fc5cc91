"""config is a plain dict that rebuilds an identical embedder; aliases; secure and explicit loading."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import moee_plugins
from moee_plugins import MoEEmbedder, get_alias, list_aliases, register_alias, unregister_alias
from moee_plugins.core.loading import resolve_reference

TEXTS = ["The hockey team won.", "GPUs and printers", "moon"]


def test_config_is_json_and_rebuilds_identical_vectors_in_a_fresh_process(tiny_embedder, tmp_path):
    config = tiny_embedder.config
    assert config["statistics"] is not None and config["mode"] == "sum" and config["prompt"] == "prompteol"
    path = tmp_path / "moee_config.json"
    path.write_text(json.dumps(config))
    expected = tiny_embedder.encode(TEXTS)
    script = (
        "import json, sys, numpy as np\n"
        "from moee_plugins import MoEEmbedder\n"
        f"emb = MoEEmbedder.from_config(json.load(open({str(path)!r})))\n"
        f"np.save(sys.argv[1], emb.encode({TEXTS!r}))\n"
    )
    out = tmp_path / "vectors.npy"
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=120)
    assert np.abs(np.load(out) - expected).max() == 0.0


def test_statistics_survive_the_config_round_trip_without_recalibration(tiny_embedder, monkeypatch):
    rebuilt = MoEEmbedder.from_config(json.loads(json.dumps(tiny_embedder.config)), model=tiny_embedder.model,
                                      tokenizer=tiny_embedder.tokenizer)
    monkeypatch.setattr("moee_plugins.core.embedder.calibration_sentences", lambda: pytest.fail("recalibrated"))
    np.testing.assert_array_equal(rebuilt.encode(TEXTS), tiny_embedder.encode(TEXTS))


def test_calibrate_changes_statistics_and_config(tiny_embedder):
    embedder = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model,
                                       tokenizer=tiny_embedder.tokenizer)
    before = embedder.encode(TEXTS)
    stats = embedder.calibrate(["one text", "another text", "a third, longer text about printers"])
    assert stats.num_texts == 3 and embedder.config["statistics"]["num_texts"] == 3
    assert np.abs(embedder.encode(TEXTS) - before).max() > 1e-3
    with pytest.raises(ValueError, match="at least 2"):
        embedder.calibrate(["only one"])
    with pytest.raises(TypeError, match="sequence of texts"):
        embedder.calibrate("a single string")


def test_statistics_of_another_shape_are_rejected(tiny_embedder):
    config = dict(tiny_embedder.config, layers=[0, 1])
    with pytest.raises(ValueError, match=r"statistics are for \(hidden=64, routing=24\)"):
        MoEEmbedder.from_config(config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)


def test_unknown_config_keys_are_rejected(tiny_embedder):
    with pytest.raises(ValueError, match="unknown MoEEmbedder config keys"):
        MoEEmbedder.from_config(dict(tiny_embedder.config, colour="red"))


def test_standardize_none_uses_raw_channels(tiny_embedder):
    raw = MoEEmbedder.from_config(dict(tiny_embedder.config, statistics=None, mode="concat", standardize=None),
                                  model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)
    parts = raw.encode_parts(TEXTS)
    manual = np.concatenate([parts.hidden, parts.routing], axis=1)
    manual /= np.linalg.norm(manual, axis=1, keepdims=True)
    np.testing.assert_allclose(raw.encode(TEXTS), manual, atol=1e-6)
    assert raw.statistics is None and raw.config["statistics"] is None


# ---------------------------------------------------------------- aliases
def test_builtin_aliases():
    names = {alias.name for alias in list_aliases()}
    assert {"olmoe", "qwen-moe", "deepseek-moe", "mixtral", "qwen3-moe", "granite-moe", "phi-moe", "gpt-oss"} <= names
    assert get_alias("olmoe").model_id == "allenai/OLMoE-1B-7B-0924"
    assert get_alias("deepseek-moe").defaults == {"routing": "probs"}


def test_reference_resolution(tmp_path):
    assert resolve_reference("moee:olmoe").path == "allenai/OLMoE-1B-7B-0924"
    assert resolve_reference("moee:OLMoE").alias.name == "olmoe"
    assert resolve_reference("moee:org/some-model").path == "org/some-model"
    assert resolve_reference(f"moee:{tmp_path}").path == str(tmp_path)
    assert resolve_reference("org/model").alias is None
    with pytest.raises(ValueError, match="names no model"):
        resolve_reference("moee:")


def test_user_aliases_load_through_the_moee_prefix(tiny_model_dir):
    register_alias("my-tiny", str(tiny_model_dir), defaults={"routing": "probs"})
    try:
        assert "my-tiny" in {a.name for a in list_aliases()}
        with pytest.raises(ValueError, match="already registered"):
            register_alias("my-tiny", "other/model")
        embedder = MoEEmbedder("moee:my-tiny", device="cpu")
        assert embedder.routing == "probs" and embedder.config["model"] == "moee:my-tiny"
        assert MoEEmbedder("moee:my-tiny", routing="logits", device="cpu").routing == "logits"
    finally:
        unregister_alias("my-tiny")
    assert get_alias("my-tiny") is None


def test_alias_names_are_validated():
    with pytest.raises(ValueError, match="alias name"):
        register_alias("bad:name", "x/y")


def test_remote_code_alias_needs_explicit_trust():
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        MoEEmbedder("moee:deepseek-moe")


def test_trust_remote_code_is_off_by_default(tiny_embedder):
    assert tiny_embedder.trust_remote_code is False and tiny_embedder.config["trust_remote_code"] is False


def test_quantization_without_bitsandbytes_names_the_extra(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # simulates a missing package
    with pytest.raises(ImportError, match=r'pip install "moee-plugins\[quantization\]"'):
        MoEEmbedder(str(tiny_model_dir), quantization="4bit", device="cpu")


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_quantization_tells_bitsandbytes_to_skip_every_router(tiny_model_dir, monkeypatch, kind):
    """What from_pretrained receives: a BitsAndBytesConfig whose skip list is exactly the model's routers."""
    import transformers

    import moee_plugins.core.loading as loading

    monkeypatch.setattr(loading, "require", lambda *args, **kwargs: None)  # no bitsandbytes on CPU machines
    received = {}

    def capture(path, **kwargs):
        received.update(kwargs)
        raise RuntimeError("stop before loading")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", capture)
    with pytest.raises(RuntimeError, match="stop before loading"):
        MoEEmbedder(str(tiny_model_dir), quantization=kind, device="cpu")
    config = received["quantization_config"]
    assert config.llm_int8_skip_modules == ["layers.0.mlp.gate", "layers.1.mlp.gate", "layers.2.mlp.gate"]
    assert (config.load_in_4bit, config.load_in_8bit) == (kind == "4bit", kind == "8bit")


def test_importing_the_package_imports_no_framework():
    code = (
        "import sys, moee_plugins\n"
        "bad = [m for m in ('sentence_transformers', 'langchain_core', 'llama_index', 'bertopic', 'mteb', 'ray')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_lists_aliases():
    out = subprocess.run([sys.executable, "-m", "moee_plugins.cli", "models"], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert "moee:olmoe" in out and "allenai/OLMoE-1B-7B-0924" in out and "moee:deepseek-moe" in out


def test_version_is_exposed():
    assert isinstance(moee_plugins.__version__, str) and moee_plugins.__version__
