"""The ``moee:<alias>`` registry: short names for supported MoE checkpoints and their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PREFIX = "moee:"


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a checkpoint, with embedder defaults that suit it.

    ``defaults`` are keyword arguments of :class:`moee_plugins.MoEEmbedder` applied when the user
    did not pass them explicitly (e.g. the routing kind that reproduces the paper for that model).
    """

    name: str
    model_id: str
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    requires_remote_code: bool = False


_REGISTRY: dict[str, ModelAlias] = {}


def register_alias(
    name: str,
    model_id: str,
    *,
    description: str = "",
    defaults: dict[str, Any] | None = None,
    requires_remote_code: bool = False,
    overwrite: bool = False,
) -> ModelAlias:
    """Register ``moee:<name>`` for ``model_id`` (a hub id or a local directory)."""
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise ValueError(f"alias name must be a non-empty string without ':' or surrounding spaces, got {name!r}")
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"alias {name!r} is already registered (for {_REGISTRY[key].model_id}); pass overwrite=True")
    alias = ModelAlias(key, model_id, description, dict(defaults or {}), requires_remote_code)
    _REGISTRY[key] = alias
    return alias


def unregister_alias(name: str) -> None:
    """Remove a registered alias (no error if it is absent)."""
    _REGISTRY.pop(name.lower(), None)


def get_alias(name: str) -> ModelAlias | None:
    """The alias registered under ``name`` (case-insensitive), or ``None``."""
    return _REGISTRY.get(name.lower())


def list_aliases() -> list[ModelAlias]:
    """All registered aliases, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def builtin_aliases() -> list[ModelAlias]:
    """The aliases the package ships (whatever the user registered since), sorted by name."""
    return [ModelAlias(name, model_id, description, dict(defaults), remote)
            for name, model_id, description, defaults, remote in sorted(_BUILTIN)]


def strip_prefix(ref: str) -> str:
    """``"moee:olmoe"`` -> ``"olmoe"``; any other string unchanged."""
    return ref[len(PREFIX) :] if ref.startswith(PREFIX) else ref


_BUILTIN = [
    ("olmoe", "allenai/OLMoE-1B-7B-0924", "OLMoE-1B-7B (64 experts, top-8, 16 layers); the paper's main model.", {}, False),
    ("olmoe-instruct", "allenai/OLMoE-1B-7B-0924-Instruct", "OLMoE-1B-7B, instruction-tuned.", {}, False),
    ("qwen-moe", "Qwen/Qwen1.5-MoE-A2.7B", "Qwen1.5-MoE-A2.7B (60 experts + shared expert, 24 layers); in the paper.", {}, False),
    (
        "deepseek-moe",
        "deepseek-ai/deepseek-moe-16b-base",
        "DeepSeekMoE-16B (64 experts, first layer dense); in the paper. Its code is remote: needs trust_remote_code=True.",
        # the paper's code takes DeepSeekMoE's softmax gate scores, not raw logits
        {"routing": "probs"},
        True,
    ),
    ("mixtral", "mistralai/Mixtral-8x7B-v0.1", "Mixtral-8x7B (8 experts, top-2, 32 layers).", {}, False),
    ("qwen3-moe", "Qwen/Qwen3-30B-A3B-Base", "Qwen3-30B-A3B (128 experts, top-8, 48 layers).", {}, False),
    ("granite-moe", "ibm-granite/granite-3.1-3b-a800m-base", "Granite-3.1 3B-A800M MoE (40 experts).", {}, False),
    ("phi-moe", "microsoft/Phi-3.5-MoE-instruct", "Phi-3.5-MoE (16 experts, top-2, 32 layers).", {}, False),
    ("gpt-oss", "openai/gpt-oss-20b", "gpt-oss-20b (32 experts, top-4, 24 layers).", {}, False),
]

for _name, _model_id, _description, _defaults, _remote in _BUILTIN:
    register_alias(_name, _model_id, description=_description, defaults=_defaults, requires_remote_code=_remote)
