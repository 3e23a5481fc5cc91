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
    count = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0)
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

    def _hook(self, index: int) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._states[index] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    @contextmanager
    def attached(self) -> Iterator[HiddenLayerCapture]:
        """Hooks live only inside this block (the user's model is left untouched afterwards)."""
        modules = decoder_layers(self.model)
        handles = [modules[i].register_forward_hook(self._hook(i)) for i in sorted({i for i in self.layers
                                                                                   if i is not None})]
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
