"""Tiny random MoE checkpoints and an offline tokenizer, for tests that must not download anything.

Every model is built from its transformers config class with random weights, saved with
``save_pretrained`` and meant to be loaded back through the same path users use.
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


# ---------------------------------------------------------------------------- conformance matrix
_SIDE_SUFFIXES = ("_vision", "_vision_model", "_vision_encoder", "_audio", "_audio_encoder", "_encoder",
                  "_sam_vision_model", "_talker_code_predictor", "_talker_text", "_thinker", "_mm_model")


def router_model_types() -> dict[str, str]:
    """Every ``model_type`` of the installed transformers whose modelling code records router logits,
    mapped to its modelling module (found by reading ``_can_record_outputs`` in the source: no import)."""
    import re

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES, model_type_to_module_name

    root = Path(transformers.__file__).parent / "models"
    folders: set[str] = set()
    for path in root.glob("*/modeling_*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"_can_record_outputs\s*=\s*\{(.*?)\n\s*\}", text, re.S):
            if "router_logits" in match.group(1):
                folders.add(path.parent.name)
    return {t: model_type_to_module_name(t) for t in sorted(CONFIG_MAPPING_NAMES)
            if model_type_to_module_name(t) in folders}


def side_model_reason(model_type: str) -> str | None:
    """Why a model type is not a text checkpoint of its own (a vision/audio tower or sub-model config), or None."""
    for suffix in _SIDE_SUFFIXES:
        if model_type.endswith(suffix):
            return f"sub-model config ({suffix.strip('_').replace('_', ' ')}) of a multimodal checkpoint, not a text model"
    return None


CONFORMANCE_TEXTS = (
    "moon",
    "The hockey team won the final game of the season after a long playoff run.",
    "GPUs and printers",
    "Encryption keys protect private messages from everyone who might try to read them.",
    "Doctors study disease!",
)
CONFORMANCE_TOLERANCE = 1e-4


def conformance_check(model_type: str, directory: str | Path) -> dict[str, Any]:
    """Build a tiny ``model_type``, load it by path through :class:`MoEEmbedder` and check it as users use it.

    Returns a row of the conformance matrix: ``status`` is ``supported`` (finite vectors, routing dim > 0,
    every mode batch-invariant within 1e-4), ``unsupported`` (a clear refusal, with ``reason``), ``not built``
    (the tiny config cannot be instantiated) or ``failed``.
    """
    import numpy as np
    import torch

    from .core.embedder import MoEEmbedder

    row: dict[str, Any] = {"model_type": model_type}
    side = side_model_reason(model_type)
    if side:
        return {**row, "status": "unsupported", "stage": "classify", "reason": side}
    try:
        checkpoint_class(model_type)
    except ValueError:
        return {**row, "status": "unsupported", "stage": "classify", "reason": _no_model_class_reason(model_type)}
    try:
        path = build_tiny_moe(Path(directory) / model_type, model_type)
    except Exception as exc:
        return {**row, "status": "not built", "stage": "build", "reason": _reason(exc)}
    torch.manual_seed(0)
    try:
        embedder = MoEEmbedder(str(path), device="cpu", batch_size=len(CONFORMANCE_TEXTS))
    except ValueError as exc:  # a deliberate refusal (encoder-decoder, no router): the message is the reason
        reason = _reason(exc).replace(str(path), "the tiny checkpoint")
        return {**row, "status": "unsupported", "stage": "load", "reason": reason}
    except Exception as exc:
        return {**row, "status": "failed", "stage": "load", "reason": _reason(exc)}
    row.update(
        model_class=type(embedder.model).__name__,
        moe_layers=embedder.moe_layers,
        routers=sorted({site.name.split(".")[-1] for site in embedder.sites}),
        experts=sorted({site.num_experts for site in embedder.sites}),
        scoring=sorted({site.scoring for site in embedder.sites}),
        routing_dim=embedder.routing_dim,
    )
    try:
        embedder.calibrate(list(calibration_sentences()[:24]))
        batched = embedder.encode_parts(list(CONFORMANCE_TEXTS))
        alone = [embedder.encode_parts([text]) for text in CONFORMANCE_TEXTS]
    except Exception as exc:
        return {**row, "status": "failed", "stage": "forward", "reason": _reason(exc)}
    differences: dict[str, float] = {}
    for mode in ("hs", "rw", "concat", "sum"):
        together = embedder.combine(batched, mode)
        single = np.concatenate([embedder.combine(parts, mode) for parts in alone])
        if not (np.isfinite(together).all() and np.isfinite(single).all()):
            return {**row, "status": "failed", "stage": "check", "reason": f"non-finite {mode} vectors"}
        differences[mode] = float(np.abs(together - single).max())
    row["max_batch_difference"] = differences
    statistics = embedder.statistics
    row["informative_routing_dims"] = int((~statistics.routing.flat).sum())
    row["informative_hidden_dims"] = int((~statistics.hidden.flat).sum())
    problems = [f"{mode} differs by {d:.2g} with the batch" for mode, d in differences.items() if d > CONFORMANCE_TOLERANCE]
    if embedder.routing_dim <= 0:
        problems.append("routing dimension is 0")
    elif row["informative_routing_dims"] == 0:  # invariance of constant vectors would prove nothing
        problems.append("router scores do not vary across texts in the tiny model (untestable as built)")
    if problems:
        return {**row, "status": "failed", "stage": "check", "reason": "; ".join(problems)}
    return {**row, "status": "supported"}


def _no_model_class_reason(model_type: str) -> str:
    """Why a type with no model class is not a checkpoint of its own: which composite config holds it."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES, model_type_to_module_name

    config_class, module = CONFIG_MAPPING[model_type], model_type_to_module_name(model_type)
    holders = [f"`{key}` of `{parent}`" for parent in CONFIG_MAPPING_NAMES
               if parent != model_type and model_type_to_module_name(parent) == module
               for key, sub in (getattr(CONFIG_MAPPING[parent], "sub_configs", None) or {}).items() if sub is config_class]
    where = f"the {', '.join(holders)} ({config_class.__name__})" if holders else config_class.__name__
    return (f"transformers maps no model class to it: its config is {where}, built and embedded through the "
            "checkpoint type that holds it; no Auto class loads it on its own")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


def render_matrix(result: dict[str, Any]) -> str:
    """docs/architectures.md from a matrix result (the JSON ``scripts/architectures.py`` writes)."""
    rows = result["rows"]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    built = sum(1 for row in rows if row["status"] in ("supported", "failed") or row.get("stage") == "load")
    lines = [
        "# Supported architectures",
        "",
        "<!-- generated by scripts/architectures.py from docs/architectures.json: do not edit by hand -->",
        "",
        f"Every `model_type` of transformers {result['transformers']} whose modelling code records router logits,",
        "built as a tiny random checkpoint from its config class, saved, loaded by path through `MoEEmbedder`",
        "and checked: finite vectors, routing dimension > 0, and all four modes batch-invariant within 1e-4",
        "(each text alone vs. inside a mixed-length batch). Regenerate with `python scripts/architectures.py`.",
        "",
        f"**{len(rows)} types found, {built} built, {counts.get('supported', 0)} passing, "
        f"{counts.get('unsupported', 0)} unsupported (reason given), {counts.get('not built', 0)} not built, "
        f"{counts.get('failed', 0)} failing.**",
        "",
        "| `model_type` | status | model run for text | MoE layers | routers read | scoring | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        layers = row.get("moe_layers")
        lines.append("| `{}` | {} | {} | {} | {} | {} | {} |".format(
            row["model_type"], row["status"], f"`{row['model_class']}`" if row.get("model_class") else "",
            ", ".join(map(str, layers)) if layers else "",
            ", ".join(f"`{r}`" for r in row.get("routers", [])), ", ".join(row.get("scoring", [])),
            row.get("reason", "").replace("|", "\\|").replace("\n", " "),
        ))
    from .aliases import builtin_aliases

    lines += ["", "## Aliases", "", "| alias | checkpoint | |", "|---|---|---|"]
    lines += [f"| `moee:{a.name}` | {a.model_id} | {a.description} |" for a in builtin_aliases()]
    lines += ["", _MATRIX_NOTES]
    return "\n".join(lines) + "\n"


_MATRIX_NOTES = """## Notes

- **Padding.** Inputs are padded on the right and the last real token is gathered by index, so in a causal
  decoder no real token ever sees a pad, whatever its attention, recurrence or sliding window does with
  masks. No architecture here needs left padding.
- **Multimodal checkpoints** (e.g. `qwen3_vl_moe`, `llama4`, `glm4v_moe`) load whole by path; text is embedded
  through their language model, the vision tower never runs.
- **Encoder-decoder MoE** (`switch_transformers`, `nllb-moe`) is refused with a `ValueError` naming the model kind:
  MoEE reads a causal decoder's last token, and their routers drop tokens over a batch-dependent capacity.
- **Doge MoE** (`doge` with `is_moe=True`) is refused with a `ValueError`: its router mixes the logits of every
  token in the batch before choosing experts (transformers keeps this for checkpoint compatibility).
- **Qwen3-Omni** loads whole and embeds through its thinker's language model (the speech half is not loaded);
  **DiffusionGemma** through its causal prompt encoder (the diffusion decoder never runs).
- **Router sizes** come from the logits each router returns on a two-token probe, not its weight rows (Inkling's
  weight also scores shared experts; Zaya's logits add a skip expert).
- **Sub-model configs** (a multimodal checkpoint's vision or audio tower) are listed, not skipped: they are not
  text models of their own.
- **Scoring**: `softmax` or `sigmoid`, what `routing="probs"` applies; `routing="logits"` reads raw scores.
- **DeepSeekMoE-16B** (`moee:deepseek-moe`, remote code) needs `trust_remote_code=True`; its `MoEGate` returns no
  logits, so the router input is captured and the logits recomputed from the gate's weight.
"""
