"""Tiny random MoE checkpoints and an offline tokenizer, for tests that must not download anything.

Every model is built from its transformers config class with random weights, saved with
``save_pretrained`` and meant to be loaded back through the same path users use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .core.standardize import calibration_sentences

# small, valid configurations of every architecture the core is verified on
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "olmoe": ("OlmoeConfig", {"num_experts": 8, "num_experts_per_tok": 2}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": ("Qwen2MoeConfig", {"num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                                     "shared_expert_intermediate_size": 32, "decoder_sparse_step": 1,
                                     "mlp_only_layers": [1]}),
    "qwen3_moe": ("Qwen3MoeConfig", {"num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                                     "head_dim": 16, "decoder_sparse_step": 1}),
    "deepseek_v2": ("DeepseekV2Config", {"n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                                         "n_shared_experts": 1, "first_k_dense_replace": 1, "kv_lora_rank": 16,
                                         "q_lora_rank": None, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
                                         "v_head_dim": 16, "n_group": 1, "topk_group": 1}),
    "deepseek_v3": ("DeepseekV3Config", {"n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                                         "n_shared_experts": 1, "first_k_dense_replace": 1, "kv_lora_rank": 16,
                                         "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
                                         "v_head_dim": 16, "n_group": 2, "topk_group": 1}),
    "granitemoe": ("GraniteMoeConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "phimoe": ("PhimoeConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "jetmoe": ("JetMoeConfig", {"num_local_experts": 4, "num_experts_per_tok": 2, "kv_channels": 16,
                                "num_key_value_heads": 2}),
    "dbrx": ("DbrxConfig", {"d_model": 64, "n_heads": 4, "n_layers": 3,
                            "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
                            "ffn_config": {"moe_num_experts": 4, "moe_top_k": 2, "ffn_hidden_size": 32}}),
    "gpt_oss": ("GptOssConfig", {"num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 16,
                                 "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}),
    "glm4_moe": ("Glm4MoeConfig", {"n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                                   "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 2, "topk_group": 1,
                                   "head_dim": 16}),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", {"moe_num_experts": 4, "moe_k": 2, "moe_intermediate_size": 16,
                                            "moe_layer_start_index": 1, "moe_num_shared_experts": 0}),
    "hunyuan_v1_moe": ("HunYuanMoEV1Config", {"num_experts": 4, "moe_topk": 2, "head_dim": 16,
                                              "moe_intermediate_size": 16}),
    "llama4_text": ("Llama4TextConfig", {"num_local_experts": 4, "num_experts_per_tok": 1, "head_dim": 16,
                                         "intermediate_size_mlp": 64, "interleave_moe_layer_step": 2,
                                         "no_rope_layers": [1, 1, 1], "attention_chunk_size": 64}),
    "minimax": ("MiniMaxConfig", {"num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 16,
                                  "layer_types": ["linear_attention", "full_attention", "linear_attention"],
                                  "block_size": 16}),
}

_COMMON = {
    "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 4, "max_position_embeddings": 512, "pad_token_id": 0, "bos_token_id": 1,
    "eos_token_id": 1, "tie_word_embeddings": False,
}


def build_tokenizer(directory: str | Path, vocab_size: int = 600) -> Any:
    """A byte-level BPE tokenizer trained offline on the shipped calibration sentences, saved to ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|pad|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(list(calibration_sentences()), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", model_input_names=["input_ids", "attention_mask"])
    fast.save_pretrained(str(directory))
    return fast


def tiny_config(model_type: str, vocab_size: int = 600, **overrides: Any) -> Any:
    """A small config of ``model_type`` (one of :data:`TINY_CONFIGS`)."""
    import transformers

    if model_type not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {model_type!r}; known: {sorted(TINY_CONFIGS)}")
    class_name, specific = TINY_CONFIGS[model_type]
    kwargs = {**_COMMON, "vocab_size": vocab_size, **specific, **overrides}
    if model_type == "dbrx":
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size"):
            kwargs.pop(key, None)
    return getattr(transformers, class_name)(**kwargs)


def build_tiny_moe(directory: str | Path, model_type: str = "olmoe", *, seed: int = 0, router_std: float = 0.5,
                   with_lm_head: bool = True, **overrides: Any) -> Path:
    """Save a tiny random ``model_type`` checkpoint (as a CausalLM, like hub checkpoints) and a tokenizer.

    Router weights get a larger std so routing is far from uniform, as in a trained model.
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    config = tiny_config(model_type, vocab_size=len(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = (AutoModelForCausalLM if with_lm_head else AutoModel).from_config(config)
    from .core.routers import find_router_sites

    with torch.no_grad():
        for site in find_router_sites(model):
            for param in site.module.parameters():
                if param.ndim == 2:
                    param.normal_(0.0, router_std)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def hostile_model_dir(source: str | Path, target: str | Path, marker: str | Path) -> Path:
    """A copy of the checkpoint ``source`` whose ``config.json`` names its own code (``auto_map``): importing that
    code writes ``marker``. Loading it must never create ``marker`` unless the caller passed trust_remote_code=True."""
    import json
    import shutil

    target = Path(target)
    shutil.copytree(source, target)
    for path in target.iterdir():
        path.chmod(0o644)
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "hostile.HostileConfig", "AutoModel": "hostile.HostileModel"}
    (target / "config.json").write_text(json.dumps(config))
    (target / "hostile.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('the folder ran its own code')\n"
        "from transformers import OlmoeConfig, OlmoeModel\n\n\n"
        "class HostileConfig(OlmoeConfig):\n    pass\n\n\n"
        "class HostileModel(OlmoeModel):\n    config_class = HostileConfig\n"
    )
    return target
