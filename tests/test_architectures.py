"""Router capture on tiny random models of every supported architecture, loaded as users load them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moee_plugins import MoEEmbedder
from moee_plugins.testing import TINY_CONFIGS, build_tiny_moe

# decoder layers that carry a router in each tiny config (dense / interleaved layers excluded)
EXPECTED_MOE_LAYERS = {
    "olmoe": [0, 1, 2], "mixtral": [0, 1, 2], "qwen2_moe": [0, 2], "qwen3_moe": [0, 1, 2],
    "deepseek_v2": [1, 2], "deepseek_v3": [1, 2], "granitemoe": [0, 1, 2], "phimoe": [0, 1, 2],
    "jetmoe": [0, 1, 2], "dbrx": [0, 1, 2], "gpt_oss": [0, 1, 2], "glm4_moe": [1, 2], "ernie4_5_moe": [1, 2],
    "hunyuan_v1_moe": [0, 1, 2], "llama4_text": [1], "minimax": [0, 1, 2],
}
SIGMOID = {"deepseek_v3", "glm4_moe", "llama4_text"}
TEXT = "Graphics cards and printers are computer hardware."


def test_every_listed_architecture_is_covered():
    assert set(EXPECTED_MOE_LAYERS) == set(TINY_CONFIGS)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict[str, str] = {}

    def get(model_type: str) -> str:
        if model_type not in cache:
            cache[model_type] = str(build_tiny_moe(tmp_path_factory.mktemp(model_type), model_type))
        return cache[model_type]

    return get


def _recorded_router_logits(embedder: MoEEmbedder, text: str) -> list[np.ndarray]:
    """Last-token router logits as transformers' own recording returns them."""
    ids = torch.tensor([embedder.tokenize([text])[0]])
    with torch.inference_mode():
        out = embedder.model(input_ids=ids, output_router_logits=True, use_cache=False)
    recorded = out.router_logits
    return [r.reshape(1, ids.shape[1], -1)[0, -1].float().numpy() for r in recorded]


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_routers_are_found_per_layer_and_match_transformers_recording(built, model_type):
    embedder = MoEEmbedder(built(model_type), mode="rw", device="cpu")
    assert embedder.moe_layers == EXPECTED_MOE_LAYERS[model_type]
    assert all(site.scoring == ("sigmoid" if model_type in SIGMOID else "softmax") for site in embedder.sites)
    parts = embedder.encode_parts([TEXT])
    assert parts.routing.shape == (1, sum(site.num_experts for site in embedder.sites))
    assert parts.hidden.shape == (1, embedder.model.config.hidden_size)
    ours = [parts.routing[0, b.start : b.stop] for b in parts.layout]
    theirs: list[np.ndarray] = []
    for recorded in _recorded_router_logits(embedder, TEXT):  # jetmoe records its attention router twice
        if not any(r.shape == recorded.shape and np.array_equal(r, recorded) for r in theirs):
            theirs.append(recorded)
    assert len(ours) == len(theirs)
    for block in ours:  # every captured router equals one router transformers recorded
        assert min(np.abs(block - t).max() if t.shape == block.shape else np.inf for t in theirs) < 1e-5
    assert np.isfinite(embedder.encode([TEXT, "", "short"])).all()


@pytest.mark.parametrize("model_type", ["olmoe", "deepseek_v3"])
def test_probs_apply_the_models_own_scoring_over_all_experts(built, model_type):
    logits = MoEEmbedder(built(model_type), routing="logits", device="cpu").encode_parts([TEXT])
    probs = MoEEmbedder(built(model_type), routing="probs", device="cpu").encode_parts([TEXT])
    for block in logits.layout:
        raw = torch.from_numpy(logits.routing[:, block.start : block.stop])
        expected = torch.sigmoid(raw) if model_type in SIGMOID else torch.softmax(raw, dim=-1)
        np.testing.assert_allclose(probs.routing[:, block.start : block.stop], expected.numpy(), atol=1e-6)


def test_layers_selects_a_subset_of_moe_layers(built):
    path = built("deepseek_v2")
    full = MoEEmbedder(path, mode="rw", device="cpu")
    subset = MoEEmbedder(path, mode="rw", layers=[2], device="cpu")
    assert subset.routing_dim == 8 and full.routing_dim == 16
    np.testing.assert_allclose(subset.encode_parts([TEXT]).routing, full.encode_parts([TEXT]).layer(2), atol=1e-6)
    with pytest.raises(ValueError, match=r"layers \[0\] have no MoE router; MoE layers of this model: \[1, 2\]"):
        MoEEmbedder(path, layers=[0], device="cpu")


def test_a_dense_model_is_rejected_with_its_name(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from moee_plugins.testing import build_tokenizer

    build_tokenizer(tmp_path)
    config = LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type='llama'.*has no Mixture-of-Experts router"):
        MoEEmbedder(str(tmp_path), device="cpu")


def test_a_loaded_causal_lm_is_used_without_its_head(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = built("olmoe")
    causal = AutoModelForCausalLM.from_pretrained(path)
    embedder = MoEEmbedder(causal, AutoTokenizer.from_pretrained(path), device="cpu")
    assert type(embedder.model).__name__ == "OlmoeModel"
    from_path = MoEEmbedder(path, device="cpu")
    np.testing.assert_allclose(embedder.encode_parts([TEXT]).routing, from_path.encode_parts([TEXT]).routing, atol=1e-6)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        MoEEmbedder(causal)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_an_intermediate_hidden_layer_is_that_layers_output(built, model_type):
    """``hidden_layer=0``: the hook on the first decoder layer reads what transformers reports as its output."""
    embedder = MoEEmbedder(built(model_type), mode="hs", device="cpu", hidden_layer=0)
    ids = torch.tensor([embedder.tokenize([TEXT])[0]])
    with torch.inference_mode():
        states = embedder.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    np.testing.assert_allclose(embedder.encode_parts([TEXT]).hidden[0], states[1][0, -1].float().numpy(), atol=1e-5)
