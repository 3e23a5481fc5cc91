"""Tiny random MoE checkpoints and an offline tokenizer, for tests, examples and demos that must not download
anything (``moee demo`` builds its model here).

Every model is built from its transformers config class with random weights, saved with ``save_pretrained``
and meant to be loaded back through the same path users use. What only this project's own checks need (the
conformance matrix, the security fixture) lives in ``scripts/`` and the tests, not in the package.
"""

from __future__ import annotations

from collections.abc import Iterator
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


# sizes a tiny model gets when its config has the key (applied to every nested sub-config too)
_SHRINK: dict[str, int] = {
    "hidden_size": 64, "d_model": 64, "n_embd": 64, "intermediate_size": 64, "ffn_hidden_size": 64,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "moe_shared_expert_intermediate_size": 32,
    "shared_intermediate_size": 32, "expert_intermediate_size": 32, "intermediate_size_mlp": 64,
    "num_attention_heads": 4, "n_heads": 4, "num_heads": 4, "num_key_value_heads": 2, "kv_n_heads": 2,
    "head_dim": 16, "kv_channels": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "kv_lora_rank": 16, "q_lora_rank": 16, "qk_head_dim": 16, "index_head_dim": 16, "index_n_heads": 2,
    "num_experts": 8, "num_local_experts": 8, "n_routed_experts": 8, "moe_num_experts": 8,
    "num_experts_per_tok": 2, "num_experts_per_token": 2, "moe_topk": 2, "moe_k": 2, "top_k": 2, "moe_top_k": 2,
    "n_shared_experts": 1, "num_shared_experts": 1, "moe_num_shared_experts": 1,
    "max_position_embeddings": 512, "first_k_dense_replace": 1, "moe_layer_start_index": 1,
    "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "mamba_d_state": 8, "ssm_state_size": 8, "mamba_num_heads": 4, "mamba_head_dim": 32, "mamba_n_heads": 4,
    "mamba_d_head": 32, "mamba_dt_rank": 8, "n_groups": 1, "mamba_n_groups": 1, "chunk_size": 16,
    "attention_chunk_size": 16, "sliding_window": 16, "num_nextn_predict_layers": 0, "moe_latent_size": 32,
    "linear_head_dim": 16, "linear_num_heads": 4, "top_k_experts": 2, "num_sliding_attention_heads": 4,
    "encoder_attention_heads": 4, "encoder_ffn_dim": 64,
}
# per-head widths that a config often ties together (rope head = head_dim in MLA, q/k/v heads alike):
# when two were equal in the full config they stay equal in the tiny one
_HEAD_DIMS = ("head_dim", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "kv_channels", "linear_key_head_dim",
              "linear_value_head_dim", "index_head_dim", "linear_head_dim", "mamba_head_dim")
_GROUP_KEYS = ("n_group", "num_expert_group", "moe_num_groups", "n_expert_groups")
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layers", "num_layers", "encoder_layers")
_TINY_LAYERS = 4
_VISION = ("vision", "audio", "encoder_config", "talker", "code2wav")


def _kept_layers(per_layer: list[list[Any]], old: int, n: int) -> list[int]:
    """Which ``n`` of the ``old`` layers a tiny model keeps: the first layer of every distinct combination of
    per-layer kinds (attention type, dense/sparse MLP, ...) first, then the earliest others, in order."""
    signatures = [tuple(str(values[i]) for values in per_layer) for i in range(old)]
    chosen: list[int] = []
    for i, signature in enumerate(signatures):
        if signature not in {signatures[j] for j in chosen} and len(chosen) < n:
            chosen.append(i)
    chosen += [i for i in range(old) if i not in chosen][: n - len(chosen)]
    return sorted(chosen)


def shrink_config_dict(data: dict[str, Any], layers: int = _TINY_LAYERS) -> dict[str, Any]:
    """Sizes of a (default, full-size) config dict cut to a tiny model of the same kind.

    Widths, heads, experts and state sizes take the small values of ``_SHRINK`` where present; per-layer
    lists are cut to ``layers`` entries keeping every layer kind (hybrid attention/recurrent stacks stay
    hybrid); layer-index lists keep the indices that still exist. Nested sub-configs shrink the same way
    (vision towers to one layer).
    """
    out = dict(data)
    old_layers = next((int(data[k]) for k in _LAYER_COUNT_KEYS if isinstance(data.get(k), int)), None)
    for key, value in data.items():
        if isinstance(value, dict) and ("model_type" in value or key.endswith("config")):
            is_side = any(word in key for word in _VISION)
            out[key] = shrink_config_dict(value, layers=1 if is_side else layers)
        elif key in _SHRINK and isinstance(value, int) and not isinstance(value, bool):
            out[key] = min(value, _SHRINK[key]) if value > 0 else value
        elif key in _LAYER_COUNT_KEYS and isinstance(value, int):
            out[key] = min(value, layers)
        elif key == "depth" and isinstance(value, int):
            out[key] = 1
    new_layers = next((int(out[k]) for k in _LAYER_COUNT_KEYS if isinstance(out.get(k), int)), None)
    if old_layers and new_layers:
        lists = [k for k, v in data.items() if isinstance(v, list) and len(v) == old_layers and k != "time_step_limit"]
        kept = _kept_layers([data[k] for k in lists], old_layers, new_layers)
        position = {old: new for new, old in enumerate(kept)}
        for key in lists:
            out[key] = [data[key][i] for i in kept]
        for key, value in data.items():
            if key not in lists and isinstance(value, list) and value and key.endswith(("_layers", "layers_idx", "layer_ids")) \
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                out[key] = [position[v] for v in value if v in position]
            elif key == "per_layer_config" and isinstance(value, dict):
                out[key] = {f"{position[int(k)]:02d}": shrink_config_dict(v, layers) for k, v in value.items()
                            if int(k) in position}
    for key, value in data.items():  # MoE that is optional and off by default (gemma4, dots1, doge) is switched on
        if value is None and ("expert" in key or "moe" in key):
            out[key] = _SHRINK.get(key, 2 if "top" in key or "per_tok" in key else 32 if "size" in key else 1)
        elif value is False and key.startswith(("enable_moe", "use_moe", "is_moe")):
            out[key] = True
    _keep_ties(data, out)
    _fit_mrope(out)
    heads, kv = out.get("num_attention_heads"), out.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and (kv > heads or heads % max(kv, 1)):
        out["num_key_value_heads"] = heads
    for key in _GROUP_KEYS:  # expert groups: 2 groups of 4 of the 8 experts, one group picked
        if isinstance(out.get(key), int) and out[key] > 1:
            out[key] = 2
            if isinstance(out.get("topk_group"), int):
                out["topk_group"] = 1
    return out


def _fit_mrope(out: dict[str, Any]) -> None:
    """Multimodal RoPE splits the rotary half-width into (time, height, width) sections: rescale them to the
    tiny head width, keeping their proportions."""
    for rope in (out.get("rope_parameters"), out.get("rope_scaling")):
        if not isinstance(rope, dict) or not isinstance(rope.get("mrope_section"), list):
            continue
        head_dim = out.get("head_dim") or out.get("hidden_size", 64) // out.get("num_attention_heads", 4)
        factor = rope.get("partial_rotary_factor", out.get("partial_rotary_factor", 1.0)) or 1.0
        half = max(len(rope["mrope_section"]), int(head_dim * factor) // 2)
        sections, total = rope["mrope_section"], sum(rope["mrope_section"])
        scaled = [max(1, round(half * v / total)) for v in sections]
        scaled[0] += half - sum(scaled)
        rope["mrope_section"] = scaled


def _keep_ties(data: dict[str, Any], out: dict[str, Any]) -> None:
    """Head widths equal in the full config stay equal; ``qk_head_dim`` stays nope + rope."""
    present = [k for k in _HEAD_DIMS if isinstance(data.get(k), int) and not isinstance(data.get(k), bool)]
    for key in present:
        tied = [k for k in present if data[k] == data[key]]
        smallest = min(out[k] for k in tied)
        for k in tied:
            out[k] = smallest
    for heads, kv in (("num_attention_heads", "num_key_value_heads"), ("n_heads", "kv_n_heads")):
        if isinstance(data.get(heads), int) and data.get(kv) == data[heads]:  # multi-head, not grouped, attention
            out[kv] = out[heads]
    parts = ("qk_nope_head_dim", "qk_rope_head_dim")
    if isinstance(data.get("qk_head_dim"), int) and all(isinstance(data.get(k), int) for k in parts) \
            and data["qk_head_dim"] == sum(data[k] for k in parts):
        out["qk_head_dim"] = sum(out[k] for k in parts)


_MODEL_WIDTHS = ("hidden_size", "d_model", "n_embd")


def _width_key(key: Any) -> bool:
    return isinstance(key, str) and key not in _SHRINK and not key.startswith(("num_", "n_")) \
        and ("hidden" in key or key.endswith(("_dim", "input_size", "output_size")))


def _keep_width_ties(default: dict[str, Any], out: dict[str, Any]) -> None:
    """A width that equals a model width of the full config (an adapter's input, a tower's output projected onto
    the text embeddings) is that width: it takes the tiny model width too, in every sub-config, so a multimodal
    config's "must match the text hidden size" checks still hold."""
    def walk(old: dict[str, Any], new: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        yield old, new
        for key, value in old.items():
            if isinstance(value, dict) and isinstance(new.get(key), dict):
                yield from walk(value, new[key])

    shrunk = {old[k]: new[k] for old, new in walk(default, out) for k in _MODEL_WIDTHS
              if isinstance(old.get(k), int) and isinstance(new.get(k), int) and old[k] != new[k]}
    if len(set(shrunk.values())) > 1:  # model widths shrunk to different sizes: a tie would be ambiguous
        return
    for old, new in walk(default, out):
        for key, value in old.items():
            if _width_key(key) and isinstance(value, int) and not isinstance(value, bool) and value in shrunk \
                    and new.get(key) == value:
                new[key] = shrunk[value]


def tiny_config(model_type: str, vocab_size: int = 600, **overrides: Any) -> Any:
    """A small config of ``model_type``: a hand-written one from :data:`TINY_CONFIGS`, or the type's default
    config shrunk by :func:`shrink_config_dict` (any model type the installed transformers knows)."""
    import transformers
    from transformers import AutoConfig

    if model_type in TINY_CONFIGS:
        class_name, specific = TINY_CONFIGS[model_type]
        kwargs = {**_COMMON, "vocab_size": vocab_size, **specific, **overrides}
        if model_type == "dbrx":
            for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                        "intermediate_size"):
                kwargs.pop(key, None)
        return getattr(transformers, class_name)(**kwargs)
    default = AutoConfig.for_model(model_type).to_dict()
    data = shrink_config_dict(default)
    _keep_width_ties(default, data)
    _apply_overrides(data, TINY_OVERRIDES.get(model_type, {}))
    _set_text_sizes(data, vocab_size)
    data.update(overrides)
    data.pop("transformers_version", None)
    config_class = type(AutoConfig.for_model(model_type))
    return config_class.from_dict(data)


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """``overrides`` laid over ``data``: a dict value updates the dict there (a sub-config's own sub-configs,
    ``*_config``, are updated the same way, one key at a time); anything else replaces it."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = dict(data[key])
            for inner, inner_value in value.items():
                if inner.endswith("_config") and isinstance(inner_value, dict) and isinstance(data[key].get(inner), dict):
                    _apply_overrides(data[key], {inner: inner_value})
                else:
                    data[key][inner] = inner_value
        else:
            data[key] = value


def _set_text_sizes(data: dict[str, Any], vocab_size: int) -> None:
    """Vocabulary and special tokens of the offline tokenizer, in the config and its text sub-config."""
    targets = [data] + [v for k, v in data.items() if isinstance(v, dict) and "text" in k]
    for target in targets:
        if "vocab_size" in target or target is not data:
            target["vocab_size"] = vocab_size
        if "unpadded_vocab_size" in target:  # the tokenizer's vocabulary, before padding to a multiple
            target["unpadded_vocab_size"] = vocab_size
        for key, value in (("pad_token_id", 0), ("bos_token_id", 1), ("eos_token_id", 1)):
            if key in target:
                target[key] = value
    placeholders = [k for k, v in data.items() if k.endswith("_token_id") and isinstance(v, int) and v >= vocab_size]
    for i, key in enumerate(placeholders):  # image/video placeholder ids must exist in the tiny vocabulary
        data[key] = vocab_size - 1 - i
    data["tie_word_embeddings"] = False


_QWEN4_INDEXER = {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": _SHRINK["head_dim"],
                  "indexer_budget": 8, "indexer_compress_ratio": 2}

# per-type corrections where the generic shrink is not a valid config
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    # attention before the MoE layers: a freshly initialised Mamba mixer passes almost nothing along the
    # sequence, so an all-Mamba tiny model routes every text alike and its invariance would prove nothing
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 0, "expert_layer_period": 2, "expert_layer_offset": 1},
    "nemotron_h": {"layers_block_type": ["full_attention", "moe", "linear_attention", "moe"]},
    # no default layer pattern: convolution and attention layers alternate in LFM2 checkpoints
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "conv", "full_attention"], "num_dense_layers": 1},
    # the modelling code's default (time, height, width) RoPE sections [8, 12, 12] fit a 64-wide rotary half only
    "glm4v_moe": {"text_config": {"rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                                      "rope_type": "default", "mrope_section": [2, 1, 1]}}},
    # its model builds a sliding-window mask whatever the layer types, so the window must be set (the default has
    # none); checkpoints interleave sliding and full attention layers, and so does the tiny one
    "step3p7": {"text_config": {"sliding_window": _SHRINK["sliding_window"],
                                "layer_types": ["sliding_attention", "full_attention"] * (_TINY_LAYERS // 2)}},
    # product-key routing: experts are indexed by pairs of sqrt(num_experts) keys, so their number is a square
    "doge": {"num_experts": 16},
    # its talker (speech) builds a shared expert and merges vision patches with sizes its default config lacks
    # (checkpoints set them); text embedding never runs it, but the whole checkpoint must load
    "qwen3_omni_moe": {"talker_config": {"spatial_merge_size": 2, "text_config": {"shared_expert_intermediate_size": 32}}},
    # the default text config has no MLP schedule (and no rule to derive one): dense first layer, then MoE,
    # as in DeepSeek-V2-style language models
    "deepseek_ocr2": {"text_config": {"mlp_layer_types": ["dense"] + ["sparse"] * (_TINY_LAYERS - 1)}},
    # the modelling code's default (height, width, time) RoPE sections [22, 22, 20] fit a 64-wide rotary half only:
    # the same proportions over the tiny head's 8
    "ernie4_5_vl_moe": {"text_config": {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default",
                                                            "mrope_section": [3, 3, 2]}}},
    # its default layers are indexed (QSA) attention, whose indexer has no default sizes: transformers' own tester
    # sets them; the index head holds the rotary width, the budget is a few compressed blocks
    "qwen4_exp": {"text_config": _QWEN4_INDEXER},
    "qwen4_exp_text": _QWEN4_INDEXER,
    "glm4v_moe_text": {"rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5, "rope_type": "default",
                                           "mrope_section": [2, 1, 1]}},
}


def checkpoint_class(model_type: str) -> Any:
    """The Auto class a hub checkpoint of this type is saved with: causal LM, else image-text-to-text
    (multimodal), else sequence-to-sequence, else multimodal LM (Qwen3-Omni), else the bare model."""
    import transformers
    from transformers.models.auto import modeling_auto

    for mapping, auto in (("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM"),
                          ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "AutoModelForImageTextToText"),
                          ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "AutoModelForSeq2SeqLM"),
                          ("MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES", "AutoModelForMultimodalLM"),
                          ("MODEL_MAPPING_NAMES", "AutoModel")):
        if model_type in getattr(modeling_auto, mapping, {}):
            return getattr(transformers, auto)
    raise ValueError(f"transformers maps no model class to model_type {model_type!r}")


def build_tiny_moe(directory: str | Path, model_type: str = "olmoe", *, seed: int = 0, router_std: float = 0.5,
                   with_lm_head: bool = True, **overrides: Any) -> Path:
    """Save a tiny random ``model_type`` checkpoint (with its head, as hub checkpoints: a CausalLM, or the
    whole multimodal model) and a tokenizer.

    Router weights get a larger std so routing is far from uniform, as in a trained model.
    """
    import torch
    from transformers import AutoModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    config = tiny_config(model_type, vocab_size=len(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = (checkpoint_class(config.model_type) if with_lm_head else AutoModel).from_config(config)
    from .core.routers import find_router_sites

    with torch.no_grad():
        for site in find_router_sites(model):
            for param in site.module.parameters():
                if param.ndim == 2:
                    param.normal_(0.0, router_std)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory
