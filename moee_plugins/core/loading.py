"""Load the base model (never the LM head) and its tokenizer from an alias, a hub id or a local directory."""

from __future__ import annotations

import difflib
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .aliases import PREFIX, ModelAlias, get_alias, list_aliases, strip_prefix
from .extras import require
from .routers import find_router_sites

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("4bit", "8bit")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(OSError):
    """A model or tokenizer could not be loaded; the message says what was tried and why it failed."""


@dataclass(frozen=True)
class ModelReference:
    """What a user's model string points at."""

    original: str
    path: str
    alias: ModelAlias | None

    def describe(self) -> str:
        """``moee:olmoe (alias for hub id allenai/OLMoE-1B-7B-0924)``, ``local directory /x``, ``hub id a/b``."""
        local = os.path.isdir(self.path) or looks_like_local_path(self.path)
        what = f"local directory {self.path}" if local else f"hub id {self.path}"
        if self.alias is not None:
            return f"{self.original} (alias for {what})"
        return what if self.original.strip() == self.path else f"{self.original} ({what})"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def looks_like_local_path(path: str) -> bool:
    """A string that cannot be a hub id (``/abs``, ``./rel``, ``~``, ``a/b/c``, Windows paths) must be a directory."""
    return (path.startswith(("/", ".", "~")) or "\\" in path or path.count("/") > 1 or not _HUB_ID.match(path)
            or os.path.isabs(path))


def _unknown_alias_error(name: str) -> ValueError:
    known = [alias.name for alias in list_aliases()]
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.5)
    hint = f" Did you mean {PREFIX}{close[0]}?" if close else ""
    return ValueError(
        f"unknown alias {PREFIX}{name}.{hint} Known aliases: {', '.join(PREFIX + k for k in known)}. "
        f"For a hub id or a local directory, pass it without the {PREFIX!r} prefix (or as {PREFIX}<namespace>/<name>)."
    )


def resolve_reference(ref: str) -> ModelReference:
    """``moee:<alias>`` -> the alias's checkpoint; ``moee:<hub id or dir>`` and plain strings -> themselves.

    ``moee:<name>`` that is neither a registered alias, an existing directory nor a ``namespace/name``
    hub id is a mistyped alias: refused with the known aliases and the closest one.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise TypeError(f"model must be 'moee:<alias>', a hub id, a local directory or a PreTrainedModel, got {ref!r}")
    name = strip_prefix(ref.strip())
    prefixed = ref.strip().startswith(PREFIX)
    if prefixed and not name:
        raise ValueError(f"{ref!r} names no model after {PREFIX!r}")
    alias = get_alias(name) if prefixed and not os.path.isdir(name) else None
    if prefixed and alias is None and not os.path.isdir(name) and "/" not in name and "\\" not in name:
        raise _unknown_alias_error(name)
    return ModelReference(ref, alias.model_id if alias else name, alias)


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def not_found_error(path: str, what: str, exc: BaseException | None = None, *, maybe_local: bool = True) -> OSError:
    """Why ``path`` could not be read: a missing directory, an unreachable Hub, or what the Hub said.
    ``maybe_local``: the user may have meant a local directory (not so for an alias's hub id)."""
    if os.path.isdir(path):
        return ModelLoadError(f"could not load {what}: {_first_line(exc) if exc else 'unreadable directory'}")
    if looks_like_local_path(path):
        return FileNotFoundError(f"could not load {what}: the directory {path} does not exist "
                                 f"(absolute: {os.path.abspath(os.path.expanduser(path))})")
    local = f"; it is not a local directory either ({os.path.abspath(path)} does not exist)" if maybe_local else ""
    if _offline():
        return ModelLoadError(f"could not load {what}: the Hugging Face Hub is unreachable (offline mode: "
                              f"HF_HUB_OFFLINE=1) and it is not in the local cache{local}")
    said = _first_line(exc) if exc else "not found"
    if "connect" in said.lower() or "connection" in said.lower():
        return ModelLoadError(f"could not load {what}: the Hugging Face Hub is unreachable and it is not in the "
                              f"local cache{local}")
    return ModelLoadError(f"could not load {what}: the Hub has no such model or it needs a login "
                          f"(Hugging Face said: {said}){local}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA (fast, range-safe), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be 'auto', one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")


def dtype_name(dtype: str | torch.dtype) -> str:
    return str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype


@contextmanager
def _quiet_transformers():
    """The base model's load report lists the LM head as 'unexpected': expected here, so hide it."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


# Auto classes tried, in order, for a checkpoint type that AutoModel does not map (Qwen3-Omni's whole model is
# mapped only as a multimodal LM): the one that loads it keeps its heads, which base_model() then drops
_AUTO_CLASSES = ("AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForMultimodalLM")


def auto_class_for(config: Any) -> Any:
    """The transformers Auto class that can build this config's model (AutoModel whenever it can)."""
    import transformers

    for name in _AUTO_CLASSES:
        auto = getattr(transformers, name, None)
        if auto is not None and type(config) in auto._model_mapping:
            return auto
    return transformers.AutoModel  # remote code (auto_map) or an unknown type: AutoModel says what is wrong


def router_module_names(config: Any, trust_remote_code: bool) -> list[str]:
    """Names of the router modules, found on a weightless (meta) copy of the model."""
    with torch.device("meta"), _quiet_transformers():
        skeleton = auto_class_for(config).from_config(config, trust_remote_code=trust_remote_code)
    return [site.name for site in find_router_sites(skeleton)]


def quantization_config(kind: str, config: Any, trust_remote_code: bool, compute_dtype: torch.dtype) -> Any:
    """bitsandbytes settings that keep every router in full precision: a quantised router changes the signal we read."""
    if kind not in QUANTIZATIONS:
        raise ValueError(f"quantization must be None or one of {QUANTIZATIONS}, got {kind!r}")
    require("bitsandbytes", "quantization", feature=f'quantization="{kind}"')
    from transformers import BitsAndBytesConfig

    keep = router_module_names(config, trust_remote_code)
    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                                  llm_int8_skip_modules=keep)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)


# ------------------------------------------------------------------ kernels (experts / attention implementations)
IMPLEMENTATION_OPTIONS = ("experts_implementation", "attn_implementation")
_CUDA_ONLY_EXPERTS = ("deepgemm", "sonicmoe")  # Hopper kernels fetched through the `kernels` package


def implementation_choices(model: Any) -> dict[str, tuple[str, ...]]:
    """The experts and attention implementations transformers offers for ``model`` (a model class or instance):
    its registered kernels, filtered by what the model's code declares it supports."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    can_set = getattr(model, "_can_set_experts_implementation", None)
    experts = ("eager", *sorted(ALL_EXPERTS_FUNCTIONS.keys())) if callable(can_set) and can_set() else ()
    supports = {"sdpa": "_supports_sdpa", "flex_attention": "_supports_flex_attn", "flash_attention": "_supports_flash_attn"}
    attention = ["eager"]
    for key in ALL_ATTENTION_FUNCTIONS.valid_keys():
        flag = next((f for prefix, f in supports.items() if key.startswith(prefix)), None)
        if flag is not None and getattr(model, flag, False):
            attention.append(key)
    return {"experts_implementation": experts, "attn_implementation": tuple(sorted(set(attention)))}


def check_implementations(model: Any, requested: dict[str, str | None], device: torch.device) -> dict[str, str]:
    """The requested implementations that are set (None means transformers' default), each checked against what
    ``model`` offers; a wrong one is refused with the choices listed."""
    chosen = {name: value for name, value in requested.items() if value is not None}
    if not chosen:
        return {}
    choices = implementation_choices(model)
    name_of = getattr(model, "__name__", None) or type(model).__name__
    for name, value in chosen.items():
        offered = choices[name]
        if not offered:
            raise ValueError(f"{name}={value!r}: {name_of} has one experts implementation (its modelling code does not "
                             "use transformers' experts interface); leave experts_implementation unset")
        if value not in offered:
            raise ValueError(f"{name}={value!r} is not offered for {name_of}; choose one of {list(offered)} "
                             f"(or None for transformers' default)")
        if name == "experts_implementation" and value in _CUDA_ONLY_EXPERTS and device.type != "cuda":
            raise ValueError(f"experts_implementation={value!r} runs only on a CUDA GPU (Hopper or newer, with the "
                             f"'kernels' package); on {device.type} choose one of "
                             f"{[c for c in offered if c not in _CUDA_ONLY_EXPERTS]}")
    return chosen


def _model_class(config: Any) -> Any:
    """The class :func:`load_model` will build for ``config`` (None for remote code: transformers checks it then)."""
    auto = auto_class_for(config)
    return auto._model_mapping.get(type(config), None)


def set_implementations(model: Any, requested: dict[str, str | None], device: torch.device) -> None:
    """Switch an already loaded model to the requested kernels with transformers' own setters (None: leave it)."""
    chosen = check_implementations(model, requested, device)
    setters = {"experts_implementation": "set_experts_implementation", "attn_implementation": "set_attn_implementation"}
    for name, value in chosen.items():
        try:
            getattr(model, setters[name])(value)
        except (ValueError, ImportError, RuntimeError, AttributeError) as exc:
            raise ValueError(f"{name}={value!r} cannot be used with this model here: {_first_line(exc)}") from None
        if _current_implementation(model, name) != value:  # transformers only warns when a class cannot switch
            raise ValueError(f"{name}={value!r}: {type(model).__name__} cannot switch kernels once loaded; load it "
                             f"by name or directory with {name}={value!r} instead")


def _current_implementation(model: Any, name: str) -> str | None:
    if name == "experts_implementation":
        return model.get_experts_implementation().get("")
    return getattr(model.config, "_attn_implementation", None)


def _remote_code_error(ref: ModelReference) -> ValueError:
    return ValueError(
        f"{ref.original} ({ref.path}) ships its own modelling code, which runs on your machine. "
        "Pass trust_remote_code=True if you trust it (e.g. MoEEmbedder(..., trust_remote_code=True))."
    )


def load_model(
    ref: ModelReference,
    *,
    device: torch.device,
    dtype: torch.dtype,
    quantization: str | None,
    trust_remote_code: bool,
    model_kwargs: dict[str, Any],
    implementations: dict[str, str | None] | None = None,
) -> Any:
    """The base model (``AutoModel``) in eval mode, on ``device`` unless a ``device_map`` places it;
    ``implementations`` (experts / attention kernels, None: transformers' default) go to ``from_pretrained``."""
    from transformers import AutoConfig

    if ref.alias is not None and ref.alias.requires_remote_code and not trust_remote_code:
        raise _remote_code_error(ref)
    kwargs = dict(model_kwargs)
    if not os.path.isdir(ref.path) and looks_like_local_path(ref.path):
        raise not_found_error(ref.path, ref.describe())
    try:
        config = AutoConfig.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise _remote_code_error(ref) from None
        if os.path.isdir(ref.path) and not os.path.exists(os.path.join(ref.path, "config.json")):
            raise ModelLoadError(f"could not load {ref.describe()}: the directory has no config.json "
                                 "(is it a saved model?)") from None
        if os.path.isdir(ref.path):
            raise ModelLoadError(f"could not load {ref.describe()}: its config.json is not a transformers model "
                                 f"config ({_first_line(exc)})") from None
        raise
    except OSError as exc:
        if os.path.isdir(ref.path) and not os.path.exists(os.path.join(ref.path, "config.json")):
            raise ModelLoadError(f"could not load {ref.describe()}: the directory has no config.json "
                                 "(is it a saved model?)") from None
        raise not_found_error(ref.path, ref.describe(), exc, maybe_local=ref.alias is None) from None
    check_decoder(config)
    model_class = _model_class(config)
    requested = dict(implementations or {})
    chosen = check_implementations(model_class, requested, device) if model_class is not None else \
        {k: v for k, v in requested.items() if v is not None}
    for name, value in chosen.items():
        if kwargs.get(name, value) != value:
            raise ValueError(f"{name} is given twice with different values ({value!r} and model_kwargs' "
                             f"{kwargs[name]!r}); give it once, as the {name} option")
        kwargs[name] = value
    if quantization is not None:
        kwargs["quantization_config"] = quantization_config(quantization, config, trust_remote_code, dtype)
        kwargs.setdefault("device_map", {"": device.index or 0} if device.type == "cuda" else None)
    kwargs.setdefault("dtype", dtype)
    logger.info("loading base model %s (%s)", ref.path, kwargs["dtype"])
    with _quiet_transformers():
        if getattr(config, "enable_audio_output", False):  # Qwen3-Omni: text embeddings never need its speech half
            config.enable_audio_output = False
        model = auto_class_for(config).from_pretrained(ref.path, config=config, trust_remote_code=trust_remote_code,
                                                       **kwargs)
    model = base_model(model)  # a multimodal checkpoint loads whole; only its language model is kept
    if kwargs.get("device_map") is None and quantization is None:
        model = model.to(device)
    return model.eval()


# files of which a saved tokenizer has at least one
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model", "merges.txt", "tekken.json")


def load_tokenizer(path: str, trust_remote_code: bool) -> Any:
    """The tokenizer saved at ``path``; a directory without one is refused, never replaced by an empty one
    (transformers 5 otherwise builds a tokenizer with no vocabulary from config.json alone)."""
    from transformers import AutoTokenizer

    what = f"the tokenizer of {path}"
    if os.path.isdir(path):
        if not any(os.path.exists(os.path.join(path, name)) for name in TOKENIZER_FILES):
            raise ModelLoadError(f"the model directory {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                                 "save one there (tokenizer.save_pretrained) or pass tokenizer=...")
    elif looks_like_local_path(path):
        raise not_found_error(path, what)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise not_found_error(path, what, exc) from None
    if len(tokenizer) < 3:
        raise ModelLoadError(f"{what} has an empty vocabulary ({len(tokenizer)} tokens): pass tokenizer=...")
    return tokenizer


def check_decoder(config: Any) -> None:
    """Refuse encoder-decoder MoE models (switch_transformers, nllb_moe) by kind, before anything runs.

    MoEE reads a causal decoder's last token, which has seen the whole text; an encoder-decoder's
    decoder sees no text without a target, and its routers drop tokens over an expert capacity that
    depends on the batch, so neither half gives a batch-independent embedding of the text.
    """
    if getattr(config, "is_encoder_decoder", False):
        model_type = getattr(config, "model_type", "?")
        raise ValueError(
            f"{getattr(config, '_name_or_path', '') or model_type} is an encoder-decoder MoE model "
            f"(model_type={model_type!r}); MoEE embeds with decoder-only (causal) MoE language models"
        )
    check_batch_independent_routing(config)


def check_batch_independent_routing(config: Any) -> None:
    """Refuse MoE models whose modelling code routes a token by looking at the other tokens of the batch.

    Doge's MoE (``is_moe=True``, transformers' ``DogeCDMoE``) reshapes its router logits over all tokens of the
    batch before picking experts (kept so existing checkpoints give the same outputs), so a text's experts, hence
    its hidden state, change with the other texts and the padding beside it: no fixed embedding exists.
    """
    if getattr(config, "model_type", None) == "doge" and getattr(config, "is_moe", False):
        raise ValueError(
            f"{getattr(config, '_name_or_path', '') or 'doge'} is a Doge MoE model (model_type='doge', is_moe=True): "
            "its router mixes the logits of every token in the batch before choosing experts (transformers' "
            "DogeCDMoE, kept for checkpoint compatibility), so a text's embedding would depend on its batch"
        )


def base_model(model: Any) -> Any:
    """The text decoder body we run: never the LM head, and for a multimodal checkpoint (Qwen3-VL-MoE,
    Llama 4, GLM-4.5V, ...) its language model, so text is embedded without touching the vision tower."""
    check_decoder(getattr(model, "config", None))
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        thinker = getattr(model, "thinker", None)  # Qwen3-Omni: the thinker writes the text, the talker speaks it
        if isinstance(thinker, torch.nn.Module) and thinker is not model:
            model = thinker
            continue
        language = getattr(model, "language_model", None)
        if isinstance(language, torch.nn.Module) and language is not model:
            model = language
            continue
        encoder = getattr(model, "encoder", None)  # DiffusionGemma: a causal prompt encoder, read by a diffusion decoder
        if isinstance(getattr(encoder, "language_model", None), torch.nn.Module) and encoder is not model:
            model = encoder
            continue
        prefix = getattr(model, "base_model_prefix", "")
        body = getattr(model, prefix, None) if prefix else None
        if isinstance(body, torch.nn.Module) and body is not model:
            model = body
    return model


def input_device(model: Any, fallback: torch.device) -> torch.device:
    """Where input ids must go: the embedding layer's device (differs from ``fallback`` under a device_map)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return fallback
