"""One identity of "these weights + tokenizer + vector options": another checkpoint at the same path is another
model for the evaluation cache and for ``moee embed --resume``; the same files under another name are the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.cli import main
from moee_plugins.core.build import EmbedderOptionsError, build_embedder
from moee_plugins.core.persistence import content_identity, identity, identity_digest
from moee_plugins.evaluation import PartsStore

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["The hockey team won the final.", "Printers and graphics cards.", "A doctor treats the disease."]


@pytest.fixture
def own_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model, free to be changed in place."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def change_weights_in_place(model_dir: Path) -> None:
    """Other weights of the very same names, shapes and file size, written over the file at the same path."""
    from safetensors.numpy import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    name = next(n for n in sorted(tensors) if n.endswith("norm.weight"))
    tensors[name] = tensors[name] * np.float32(1.5) + np.float32(0.25)
    size = path.stat().st_size
    save_file(tensors, path, metadata={"format": "pt"})
    assert path.stat().st_size == size


def embedder_on(model_dir: Path) -> MoEEmbedder:
    return MoEEmbedder(str(model_dir), device="cpu", dtype="float32")


def test_changed_weights_at_the_same_path_miss_the_evaluation_cache(own_model, tmp_path):
    cache = tmp_path / "cache"
    first = PartsStore.for_embedder(embedder_on(own_model), cache)
    before = first.encode(embedder_on(own_model), TEXTS)
    assert first.forwarded == len(TEXTS)
    same = PartsStore.for_embedder(embedder_on(own_model), cache)
    same.encode(embedder_on(own_model), TEXTS)
    assert same.forwarded == 0 and same.reused == len(TEXTS)  # same weights: the cache answers

    change_weights_in_place(own_model)
    changed = embedder_on(own_model)
    store = PartsStore.for_embedder(changed, cache)
    after = store.encode(changed, TEXTS)
    assert store.forwarded == len(TEXTS) and store.reused == 0  # other weights: nothing stale is reused
    assert store.directory != first.directory
    assert np.abs(after.hidden - before.hidden).max() > 1e-3  # reusing the old parts would have been wrong


def test_resume_refuses_changed_weights_at_the_same_path_with_a_clear_message(own_model, tmp_path, monkeypatch,
                                                                             capsys):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(TEXTS * 3) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    calls = []
    real = MoEEmbedder.encode_parts

    def interrupted(embedder, texts, **kwargs):
        if list(texts) and all(t in TEXTS for t in texts):  # a shard, not the calibration sentences
            calls.append(len(texts))
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real(embedder, texts, **kwargs)

    argv = ["embed", str(corpus), "-o", str(out), "--model", str(own_model), "--shard-size", "3", "--device", "cpu",
            "-q"]
    with monkeypatch.context() as patch:
        patch.setattr(MoEEmbedder, "encode_parts", interrupted)
        assert main(argv) == 130
    change_weights_in_place(own_model)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "the model's files changed since the interrupted run" in err
    assert "model.safetensors" in err and "--overwrite" in err
    assert not out.exists()


def test_the_identity_hashes_the_files_and_ignores_the_name_of_the_same_files(tiny_embedder, own_model):
    described = identity(tiny_embedder)
    assert "model.safetensors" in described["files"]["model"] and described["statistics_sha256"]
    copy = MoEEmbedder.from_config(dict(tiny_embedder.config, model=str(own_model)))
    assert identity(copy)["model"] != described["model"]  # kept for people ...
    differences = {k: v for k, v in content_identity(identity(copy)).items() if content_identity(described).get(k) != v}
    assert not differences  # ... but the same files are the same model
    assert identity_digest(identity(copy)) == identity_digest(described)
    assert tiny_embedder.fingerprint("parts")["files"] == described["files"]


def test_one_builder_refuses_options_for_an_existing_embedder_the_same_way(tiny_embedder):
    for call in (lambda: build_embedder(tiny_embedder, mode="hs"),
                 lambda: build_embedder(embedder=tiny_embedder, owner="X", options_name="model_kwargs", mode="hs")):
        with pytest.raises(EmbedderOptionsError, match="only apply when loading a model") as caught:
            call()
        assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)
    assert build_embedder(tiny_embedder) is tiny_embedder
    with pytest.raises(TypeError, match="MoEEmbedder, got int"):
        build_embedder(3)
    with pytest.raises(ValueError, match="needs a model"):
        build_embedder(owner="X")
