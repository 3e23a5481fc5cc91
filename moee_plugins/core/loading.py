"""Load the base model (never the LM head) and its tokenizer from an alias, a hub id or a local directory."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .._extras import require
from ..aliases import PREFIX, ModelAlias, get_alias, strip_prefix
from .routers import find_router_sites

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("4bit", "8bit")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelReference:
    """What a user's model string points at."""

    original: str
    path: str
    alias: ModelAlias | None


def resolve_reference(ref: str) -> ModelReference:
    """``moee:<alias>`` -> the alias's checkpoint; ``moee:<hub id or dir>`` and plain strings -> themselves."""
    if not isinstance(ref, str) or not ref.strip():
        raise TypeError(f"model must be 'moee:<alias>', a hub id, a local directory or a PreTrainedModel, got {ref!r}")
    name = strip_prefix(ref.strip())
    alias = get_alias(name) if ref.strip().startswith(PREFIX) and not os.path.isdir(name) else None
    if ref.strip().startswith(PREFIX) and alias is None and not name:
        raise ValueError(f"{ref!r} names no model after {PREFIX!r}")
    return ModelReference(ref, alias.model_id if alias else name, alias)


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


def router_module_names(config: Any, trust_remote_code: bool) -> list[str]:
    """Names of the router modules, found on a weightless (meta) copy of the model."""
    from transformers import AutoModel

    with torch.device("meta"), _quiet_transformers():
        skeleton = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
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
) -> Any:
    """The base model (``AutoModel``) in eval mode, on ``device`` unless a ``device_map`` places it."""
    from transformers import AutoConfig, AutoModel

    if ref.alias is not None and ref.alias.requires_remote_code and not trust_remote_code:
        raise _remote_code_error(ref)
    kwargs = dict(model_kwargs)
    try:
        config = AutoConfig.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise _remote_code_error(ref) from exc
        raise
    if quantization is not None:
        kwargs["quantization_config"] = quantization_config(quantization, config, trust_remote_code, dtype)
        kwargs.setdefault("device_map", {"": device.index or 0} if device.type == "cuda" else None)
    kwargs.setdefault("dtype", dtype)
    logger.info("loading base model %s (%s)", ref.path, kwargs["dtype"])
    with _quiet_transformers():
        model = AutoModel.from_pretrained(ref.path, config=config, trust_remote_code=trust_remote_code, **kwargs)
    if kwargs.get("device_map") is None and quantization is None:
        model = model.to(device)
    return model.eval()


def load_tokenizer(path: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def base_model(model: Any) -> Any:
    """The transformer body of a ``*ForCausalLM`` (or the model itself): we never run the LM head."""
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    return body if body is not None and body is not model else model


def input_device(model: Any, fallback: torch.device) -> torch.device:
    """Where input ids must go: the embedding layer's device (differs from ``fallback`` under a device_map)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return fallback
