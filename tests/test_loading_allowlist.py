"""What a config or folder from someone else may set: loading arguments from a file are an allowlist, and no file
of a saved folder may be a symlink leading outside it (docs/security.md)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.core import options
from moee_plugins.core.embedder import CONFIG_FILE, WEIGHTS_DIR

TEXTS = ["The hockey team won.", "moon"]


@pytest.mark.parametrize("kwargs", [
    {"weights_only": False}, {"code_revision": "main"}, {"device_map": {"": "meta"}}, {"offload_folder": "/tmp/x"},
    {"attn_implementation": "my_kernel"}, {"revision": 3},
])
def test_a_config_may_not_set_loading_arguments_off_the_allowlist(tiny_embedder, kwargs):
    config = dict(tiny_embedder.config, model_kwargs=kwargs)
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name) as info:
        MoEEmbedder.from_config(config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)
    assert "security" in str(info.value)


def test_the_allowlist_is_documented_and_allowed_values_load(tiny_embedder):
    documented = (Path(__file__).parent.parent / "docs" / "security.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in documented for name in options.FILE_MODEL_KWARGS)
    config = dict(tiny_embedder.config, model_kwargs={"attn_implementation": "eager", "low_cpu_mem_usage": True})
    rebuilt = MoEEmbedder.from_config(config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)
    assert rebuilt.config["model_kwargs"] == config["model_kwargs"]


def test_the_callers_own_loading_arguments_are_not_restricted(tiny_embedder, tiny_model_dir):
    config = dict(tiny_embedder.config, model=str(tiny_model_dir), model_kwargs={"weights_only": False})
    # the caller replaces the file's model_kwargs: theirs are not checked against the file allowlist
    rebuilt = MoEEmbedder.from_config(config, tokenizer=tiny_embedder.tokenizer, model_kwargs={"device_map": None})
    assert rebuilt.config["model_kwargs"] == {"device_map": None}
    assert rebuilt.encode(TEXTS).shape == tiny_embedder.encode(TEXTS).shape


def test_a_saved_folder_with_refused_model_kwargs_is_refused(tiny_embedder, tmp_path):
    folder = tiny_embedder.save_pretrained(tmp_path / "saved")
    saved = json.loads((folder / CONFIG_FILE).read_text())
    saved["embedder"]["model_kwargs"] = {"weights_only": False}
    (folder / CONFIG_FILE).write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="weights_only"):
        MoEEmbedder.from_pretrained(folder)


def _link_out(folder, name, outside):
    (folder / name).unlink()
    os.symlink(outside, folder / name)


def test_a_weights_file_linking_outside_the_folder_is_refused(tiny_embedder, tmp_path):
    folder = tiny_embedder.save_pretrained(tmp_path / "saved", include_weights=True)
    weights = next((folder / WEIGHTS_DIR).glob("*.safetensors"))
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(weights, outside)
    _link_out(folder / WEIGHTS_DIR, weights.name, outside)
    with pytest.raises(ValueError, match=r"symlink .* outside the saved folder"):
        MoEEmbedder.from_pretrained(folder)
    with pytest.raises(ValueError, match="symlink"):
        MoEEmbedder.read_folder(folder)


def test_a_tokenizer_file_linking_outside_the_folder_is_refused(tiny_embedder, tmp_path):
    folder = tiny_embedder.save_pretrained(tmp_path / "saved")
    outside = tmp_path / "secret.json"
    shutil.copy(folder / "tokenizer.json", outside)
    _link_out(folder, "tokenizer.json", outside)
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        MoEEmbedder.from_pretrained(folder)


def test_links_inside_the_folder_and_hub_cache_blobs_are_allowed(tiny_embedder, tmp_path):
    from moee_plugins.core.folders import check_symlinks

    folder = tiny_embedder.save_pretrained(tmp_path / "saved")
    (folder / "copy.json").write_text("{}")
    os.symlink(folder / "copy.json", folder / "inside.json")
    check_symlinks(folder)
    # the hub cache layout: repo/snapshots/<rev>/file -> repo/blobs/<sha>
    repo = tmp_path / "models--someone--model"
    snapshot = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "blobs" / "f00").write_text("{}")
    os.symlink(os.path.join("..", "..", "blobs", "f00"), snapshot / "moee_config.json")
    check_symlinks(snapshot)
    os.symlink(folder / "copy.json", snapshot / "tokenizer.json")  # another folder, not this repository's blobs
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        check_symlinks(snapshot)
