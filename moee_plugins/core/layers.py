"""``hidden_layer``: which decoder layer's hidden state the HS channel reads, captured by a forward hook on that
layer (the model is never asked for ``output_hidden_states``, which would keep every layer's states).

The last layer (``-1``, the default, or its non-negative index) is the model's output AFTER the final norm:
exactly what MoEE has always read, so parity with the paper's code holds. An intermediate layer's state is
the residual stream as that layer writes it, WITHOUT the final norm: the norm's learned gains are fitted to
the last layer's output, not to an intermediate one's, and the ``Layer by Layer`` study (ICML 2025) that
finds intermediate layers stronger measures them raw. Standardisation (``rw``/``concat``/``sum``) and the
L2 normalisation of every mode take care of the scale.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from .pooling import pool


def check_hidden_layer(value: Any) -> int:
    """A decoder-layer index: 0 is the first, -1 (default) the last; checked against the model when loaded."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"hidden_layer must be an integer decoder-layer index (-1: the last), got {value!r}")
    return int(value)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers: the ``ModuleList`` as long as ``config.num_hidden_layers`` (the first one
    found in module order, i.e. the language model's, not a vision tower's)."""
    config = getattr(model, "config", None)
    count = int(getattr(config, "num_hidden_layers", 0) or getattr(getattr(config, "text_config", None),
                                                                    "num_hidden_layers", 0) or 0)
    lists = [m for _, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    for modules in lists:
        if len(modules) == count:
            return modules
    if lists:
        return max(lists, key=len)
    raise ValueError(f"{type(model).__name__} has no list of decoder layers to read a hidden state from")


def resolve_hidden_layer(model: nn.Module, hidden_layer: int) -> int | None:
    """The non-negative index of an intermediate layer, or ``None`` for the last layer (the model's output)."""
    count = len(decoder_layers(model))
    if not -count <= hidden_layer < count:
        raise ValueError(f"hidden_layer={hidden_layer} is out of range: this model has {count} decoder layers "
                         f"(0..{count - 1}, or -1..-{count} from the end)")
    index = hidden_layer % count
    return None if index == count - 1 else index


class HiddenLayerCapture:
    """Forward hooks keeping the output state of chosen decoder layers during one forward pass.

    ``pooled`` reads, per requested layer, the state pooled like HS (``None``: the model's output)."""

    def __init__(self, model: nn.Module, layers: Sequence[int | None]) -> None:
        self.model = model
        self.layers = list(layers)
        self._states: dict[int, torch.Tensor] = {}
        self._modules: nn.ModuleList | None = None

    def _hook(self, index: int) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._states[index] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    @contextmanager
    def attached(self) -> Iterator[HiddenLayerCapture]:
        """Hooks live only inside this block (the user's model is left untouched afterwards)."""
        wanted = sorted({i for i in self.layers if i is not None})
        if wanted and self._modules is None:
            self._modules = decoder_layers(self.model)  # found once: the default (last layer) never looks
        handles = [self._modules[i].register_forward_hook(self._hook(i)) for i in wanted] if wanted else []
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._states = {}

    def state(self, layer: int | None, last_hidden: torch.Tensor) -> torch.Tensor:
        """The (batch, seq, hidden) state of ``layer`` from the pass that just ran (``None``: ``last_hidden``)."""
        if layer is None:
            return last_hidden
        if layer not in self._states:
            raise RuntimeError(f"decoder layer {layer} did not run during the forward pass")
        return self._states[layer]

    def pooled(self, last_hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> list[torch.Tensor]:
        """Each requested layer's state pooled over the real tokens, float32 (batch, hidden); states released."""
        out = []
        for layer in self.layers:
            values = self.state(layer, last_hidden)
            out.append(pool(values, attention_mask.to(values.device), pooling))
        self._states = {}
        return out


class LayerStatesCapture:
    """Pools the output state of several decoder layers for every forward pass of a model, in pass order
    (a pre-hook on the model reads each pass's attention mask), so one pass serves several ``hidden_layer``s.
    A pass that fails (e.g. out of memory, then retried in halves) leaves nothing behind."""

    def __init__(self, model: nn.Module, layers: Sequence[int], pooling: str) -> None:
        self.model, self.layers, self.pooling = model, list(layers), pooling
        self.rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self.passes = 0
        self._mask: torch.Tensor | None = None
        self._pending: dict[int, torch.Tensor] = {}

    def _before(self, _module: nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        self._mask = kwargs.get("attention_mask")
        self._pending = {}

    def _after(self, _module: nn.Module, _args: Any, _output: Any) -> None:
        for layer, rows in self._pending.items():
            self.rows[layer].append(rows)
        self._pending = {}
        self.passes += 1

    def _hook(self, layer: int) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self._mask is None:
                raise RuntimeError("a decoder layer ran without the model's attention mask (MoEE always passes one)")
            state = output[0] if isinstance(output, (tuple, list)) else output
            self._pending[layer] = pool(state, self._mask.to(state.device), self.pooling).cpu()

        return hook

    @contextmanager
    def attached(self) -> Iterator[LayerStatesCapture]:
        modules = decoder_layers(self.model)
        handles = [self.model.register_forward_pre_hook(self._before, with_kwargs=True),
                   self.model.register_forward_hook(self._after)]
        handles += [modules[layer].register_forward_hook(self._hook(layer)) for layer in self.layers]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._mask = None

    def take(self) -> dict[int, np.ndarray]:
        """Every layer's pooled rows since the last call, (rows, hidden) float32 in pass order."""
        out = {layer: torch.cat(rows).numpy() if rows else np.empty((0, 0), np.float32)
               for layer, rows in self.rows.items()}
        self.rows = {layer: [] for layer in self.layers}
        return out


def encode_layers(embedder: Any, texts: Sequence[str], hidden_layers: Sequence[int], *, prompt: Any = None
                  ) -> tuple[dict[int, Any], int]:
    """``({hidden_layer: MoEEParts}, forward passes)`` of ``texts``: the parts each ``hidden_layer`` would give,
    all from ONE forward pass per text. ``embedder`` must read the last layer (``hidden_layer=-1``); its
    routing, token counts and batches (the same token-budget plan) serve every layer."""
    from .parts import MoEEParts

    if resolve_hidden_layer(embedder.model, embedder.hidden_layer) is not None:
        raise ValueError("encode_layers needs an embedder of the last layer (hidden_layer=-1)")
    resolved = {layer: resolve_hidden_layer(embedder.model, layer) for layer in hidden_layers}
    if len(set(resolved.values())) != len(resolved):
        raise ValueError(f"hidden layers {list(hidden_layers)} name the same decoder layer twice")
    if getattr(embedder, "long_texts", "truncate") != "truncate":
        raise ValueError("several hidden layers from one pass need long_texts='truncate' (one row per text)")
    ids = embedder.tokenize(list(texts), prompt=prompt)
    batches = embedder.engine.plan([len(row) for row in ids], embedder.batch_size,
                                   embedder.max_tokens_per_batch) if ids else []
    n = len(ids)
    hidden = {layer: np.empty((n, embedder.hidden_dim), np.float32) for layer in hidden_layers}
    routing = np.empty((n, embedder.routing_dim), np.float32)
    num_tokens = np.zeros(n, np.int64)
    capture = LayerStatesCapture(embedder.model, sorted({i for i in resolved.values() if i is not None}),
                                 embedder.pooling)
    with capture.attached():
        for batch in batches:
            parts = embedder.encode_batch([ids[i] for i in batch])
            states = capture.take()
            routing[batch], num_tokens[batch] = parts.routing, parts.num_tokens
            for layer, index in resolved.items():
                hidden[layer][batch] = parts.hidden if index is None else states[index]
    out = {layer: MoEEParts(hidden[layer], routing, num_tokens, list(embedder.layout)) for layer in hidden_layers}
    return out, capture.passes
