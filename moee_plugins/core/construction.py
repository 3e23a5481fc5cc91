"""What :class:`~moee_plugins.core.embedder.MoEEmbedder` is made of before it has options applied: the
checked arguments and the loaded model and tokenizer (no embedder here, so the builder and the facade never
import each other)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def check_arguments(model: Any, tokenizer: Any, statistics: Any) -> str:
    """Refuse what :class:`MoEEmbedder` cannot be built from, by name; returns the model's name."""
    from .standardize import Statistics

    if isinstance(model, str):
        name = model
    elif isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer: MoEEmbedder(model, tokenizer, ...)")
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    else:
        raise TypeError(
            f"model must be 'moee:<alias>', a hub id, a local directory or a PreTrainedModel, got {type(model).__name__}")
    if tokenizer is not None and not isinstance(tokenizer, str) and not callable(tokenizer):
        raise TypeError(f"tokenizer must be a tokenizer or a hub id / directory, got {type(tokenizer).__name__}")
    if statistics is not None and not isinstance(statistics, (Statistics, Mapping)):
        raise TypeError(f"statistics must be a Statistics, its dict (Statistics.to_dict()) or None, "
                        f"got {type(statistics).__name__}: {statistics!r:.80}")
    return name


def load_model_and_tokenizer(model: Any, reference: Any, tokenizer: Any, *, name: str, device: torch.device,
                             dtype: torch.dtype, options: Mapping[str, Any]) -> tuple[Any, str, Any]:
    """(base model, its path or ``name``, tokenizer): loaded from ``reference`` (a resolved name) or taken as given."""
    from .loading import IMPLEMENTATION_OPTIONS, base_model, load_model, load_tokenizer, set_implementations

    trust = options["trust_remote_code"]
    kernels = {k: options[k] for k in IMPLEMENTATION_OPTIONS}
    if reference is not None:
        loaded = load_model(reference, device=device, dtype=dtype, quantization=options["quantization"],
                            trust_remote_code=trust, model_kwargs=options["model_kwargs"], implementations=kernels)
        path = reference.path
    else:
        loaded, path = base_model(model).eval(), name
        set_implementations(loaded, kernels, device)
    if tokenizer is None or isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer or path, trust)
    return loaded, path, tokenizer
