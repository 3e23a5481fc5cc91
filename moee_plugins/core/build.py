"""The one builder of "a name or an embedder, plus options": every adapter, reader and command calls
:func:`build_embedder`, so each refuses the same mistakes with the same words."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .embedder import MoEEmbedder


class EmbedderOptionsError(TypeError, ValueError):
    """Options given together with an existing embedder: they would silently not apply to it. Both a TypeError
    (the wrong kind of argument for an embedder) and a ValueError (a bad combination of values), so callers
    catching either see it."""


def build_embedder(model: Any = None, *, embedder: Any = None, config: Mapping[str, Any] | None = None,
                   owner: str = "MoEEmbedder", options_name: str = "embedder options",
                   reserved: tuple[str, ...] = (), **options: Any) -> Any:
    """An existing embedder shared as is, or a new one.

    Args:
        model: ``"moee:<alias>"``, a hub id, a local directory, a loaded ``PreTrainedModel`` (give its
            ``tokenizer`` in ``options``), or an existing :class:`MoEEmbedder` (same as ``embedder=``).
        embedder: an existing embedder to share (one loaded model can serve several adapters); ``model``,
            if given too, must name the same model.
        config: an :attr:`MoEEmbedder.config` to rebuild from (``options`` override its fields; ``model`` is
            then not used).
        owner: who is asking, named in every error (``"MoEEmbeddings"``, ``"moee embed"``).
        options_name: what the caller calls its options (``"model_kwargs"``), named in errors.
        reserved: option names that are the caller's own fields, refused inside ``options``.
        **options: :class:`MoEEmbedder` options for a new embedder.
    """
    if isinstance(model, MoEEmbedder):
        model, embedder = None, model
    if embedder is not None:
        if not isinstance(embedder, MoEEmbedder):
            raise TypeError(f"{owner}: embedder must be a moee_plugins.MoEEmbedder, got {type(embedder).__name__}")
        if options or config is not None:
            given = sorted(options) if options else ["config"]
            raise EmbedderOptionsError(
                f"{owner} got an existing MoEEmbedder and {options_name} {given}: {options_name} only apply when "
                "loading a model and cannot change the embedder; configure the embedder itself, or pass a model "
                "name instead")
        if model is not None and model != embedder.config["model"]:
            raise ValueError(f"{owner}: model={model!r} disagrees with the wrapped embedder's model "
                             f"{embedder.config['model']!r}; pass only one of them")
        return embedder
    clash = sorted(set(options) & set(reserved))
    if clash:
        raise ValueError(f"{owner}: set {clash} as the adapter's own fields, not inside {options_name}")
    if config is not None:
        # the caller's own config (e.g. a driver's embedder sent to its actors), not a file: its loading
        # arguments are the caller's, so they pass as the caller's own (not through the file allowlist)
        return MoEEmbedder.from_config(dict(config), **{"model_kwargs": config.get("model_kwargs"), **options})
    if model is None:
        raise ValueError(f"{owner} needs a model ('moee:<alias>', a hub id or a local directory), a config, or an "
                         "existing embedder=MoEEmbedder(...)")
    if not isinstance(model, (str, torch.nn.Module)):
        raise TypeError(f"{owner}: model must be 'moee:<alias>', a hub id, a local directory or a MoEEmbedder, "
                        f"got {type(model).__name__}; wrap a loaded model with embedder=MoEEmbedder(model, tokenizer)")
    return MoEEmbedder(model, **options)
