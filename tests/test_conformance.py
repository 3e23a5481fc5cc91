"""The conformance matrix: the committed result covers the installed transformers, the docs are generated
from it, and a fixed representative subset is re-run here (the full matrix: python scripts/architectures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.testing import build_tiny_moe
from scripts.conformance import conformance_check, render_matrix, router_model_types

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "docs" / "architectures.json"

# one of each kind: plain softmax/sigmoid MoE, hybrid recurrent/linear attention (the cases that broke with
# left padding or noise-amplifying standardisation), sliding window, MLA, multimodal checkpoints
REPRESENTATIVE = [
    "olmoe", "mixtral", "deepseek_v3", "deepseek_v4", "qwen3_next", "jamba", "nemotron_h", "granitemoehybrid",
    "gpt_oss", "minimax", "qwen3_vl_moe", "llama4",
]


@pytest.fixture(scope="module")
def matrix() -> dict:
    return json.loads(RESULT.read_text(encoding="utf-8"))


def test_the_committed_matrix_covers_every_router_model_type_of_the_installed_transformers(matrix):
    import transformers

    found = set(router_model_types())
    assert len(found) > 50  # the scan works: transformers ships dozens of MoE model types
    assert {row["model_type"] for row in matrix["rows"]} == found, "run python scripts/architectures.py"
    assert matrix["transformers"] == transformers.__version__
    for row in matrix["rows"]:  # nothing is skipped silently: every row that is not passing says why
        assert row["status"] == "supported" or row.get("reason"), row


def test_docs_architectures_is_generated_from_the_matrix(matrix):
    assert (ROOT / "docs" / "architectures.md").read_text(encoding="utf-8") == render_matrix(matrix), (
        "docs/architectures.md is stale: python scripts/architectures.py")


@pytest.mark.parametrize("model_type", REPRESENTATIVE)
def test_representative_architectures_embed_batch_invariantly_in_every_mode(model_type, tmp_path, one_thread):
    row = conformance_check(model_type, tmp_path)
    assert row["status"] == "supported", row
    assert row["routing_dim"] > 0 and row["informative_routing_dims"] > 0
    assert max(row["max_batch_difference"].values()) < 1e-4


def test_a_multimodal_checkpoint_embeds_text_through_its_language_model(tmp_path, one_thread):
    path = build_tiny_moe(tmp_path / "vl", "qwen3_vl_moe")
    config = json.loads((path / "config.json").read_text())
    assert "vision_config" in config and config["architectures"] == ["Qwen3VLMoeForConditionalGeneration"]
    embedder = MoEEmbedder(str(path), device="cpu")
    assert type(embedder.model).__name__ == "Qwen3VLMoeTextModel"
    assert not any("visual" in name for name, _ in embedder.model.named_modules())
    assert embedder.encode(["a text", "another text"]).shape == (2, embedder.dim)


def test_an_encoder_decoder_moe_is_refused_naming_its_kind(tmp_path):
    path = build_tiny_moe(tmp_path / "switch", "switch_transformers")
    with pytest.raises(ValueError, match=r"encoder-decoder MoE model \(model_type='switch_transformers'\).*decoder-only"):
        MoEEmbedder(str(path), device="cpu")


def test_a_moe_whose_router_mixes_the_batch_is_refused_naming_why(tmp_path):
    path = build_tiny_moe(tmp_path / "doge", "doge")
    assert json.loads((path / "config.json").read_text())["is_moe"] is True
    with pytest.raises(ValueError, match=r"Doge MoE model .*mixes the logits of every token in the batch"):
        MoEEmbedder(str(path), device="cpu")
