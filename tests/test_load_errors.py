"""Load errors say what was tried: the alias and the hub id or path it resolved to, and why it failed."""

from __future__ import annotations

import shutil
import traceback

import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.core.loading import ModelLoadError, resolve_reference


def _short(exc_info) -> None:
    """The error arrives without a chained Hugging Face traceback."""
    error = exc_info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert len(traceback.format_exception(exc_info.value)) < 15


def test_an_alias_that_cannot_be_reached_offline_names_the_hub_id(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"moee:olmoe \(alias for hub id allenai/OLMoE-1B-7B-0924\).*"
                                             r"Hub is unreachable \(offline mode") as info:
        MoEEmbedder("moee:olmoe", device="cpu")
    _short(info)


def test_a_hub_id_that_cannot_be_reached_says_so_and_that_it_is_no_local_directory(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"hub id someone/no-such-moe: the Hugging Face Hub is unreachable.*"
                                             r"not a local directory either \(.*someone/no-such-moe does not exist\)"):
        MoEEmbedder("someone/no-such-moe", device="cpu")


@pytest.mark.parametrize(("typo", "suggestion"), [("olmo", "moee:olmoe"), ("mixtrl", "moee:mixtral"),
                                                  ("qwen3moe", "moee:qwen3-moe")])
def test_a_mistyped_alias_lists_the_known_aliases_and_suggests_the_closest(typo, suggestion):
    with pytest.raises(ValueError, match=rf"unknown alias moee:{typo}\. Did you mean {suggestion}\? "
                                         r"Known aliases: .*moee:deepseek-moe, .*moee:olmoe,"):
        resolve_reference(f"moee:{typo}")


def test_prefixed_hub_ids_and_directories_still_resolve(tiny_model_dir):
    assert resolve_reference("moee:allenai/OLMoE-1B-7B-0924").path == "allenai/OLMoE-1B-7B-0924"
    assert resolve_reference(f"moee:{tiny_model_dir}").path == str(tiny_model_dir)


@pytest.mark.parametrize("path", ["/no/such/model-dir", "./no-such-dir", "../elsewhere/model"])
def test_a_missing_local_directory_names_the_path(path):
    with pytest.raises(FileNotFoundError, match=rf"local directory {path}: the directory {path} does not exist") as info:
        MoEEmbedder(path, device="cpu")
    _short(info)


def test_a_directory_without_config_or_tokenizer_says_which_is_missing(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=rf"local directory {empty}: the directory has no config.json"):
        MoEEmbedder(str(empty), device="cpu")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, no_tokenizer / name)
    with pytest.raises(ModelLoadError, match=rf"model directory {no_tokenizer} has no tokenizer .*pass tokenizer="):
        MoEEmbedder(str(no_tokenizer), device="cpu")
    # with the tokenizer given explicitly the same directory loads
    assert MoEEmbedder(str(no_tokenizer), tokenizer=str(tiny_model_dir), device="cpu").routing_dim == 24


def test_a_missing_tokenizer_path_is_named(tiny_model_dir):
    with pytest.raises(FileNotFoundError, match=r"the tokenizer of /no/such/tokenizer: the directory .* does not exist"):
        MoEEmbedder(str(tiny_model_dir), tokenizer="/no/such/tokenizer", device="cpu")
