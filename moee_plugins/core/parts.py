"""The raw channels of an encoding: what every mode is derived from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RouterBlock:
    """Which columns of ``MoEEParts.routing`` one router fills."""

    layer: int
    name: str
    num_experts: int
    start: int
    stop: int


@dataclass
class MoEEParts:
    """Raw (unstandardised) channels, row i for input i.

    ``hidden``: last-layer hidden state after the final norm, pooled, (N, H).
    ``routing``: router scores (logits or probabilities) of every selected router, pooled and
    concatenated in layer order, (N, R); ``layout`` says which columns belong to which router.
    ``num_tokens``: tokens each text took in the model (after the prompt and truncation).
    """

    hidden: np.ndarray
    routing: np.ndarray
    num_tokens: np.ndarray
    layout: list[RouterBlock] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hidden)

    def __getitem__(self, index: Any) -> MoEEParts:
        index = np.arange(len(self))[index]
        index = np.atleast_1d(index)
        return MoEEParts(self.hidden[index], self.routing[index], self.num_tokens[index], list(self.layout))

    def layer(self, layer: int) -> np.ndarray:
        """The routing columns of decoder layer ``layer`` (all its routers), (N, experts)."""
        blocks = [b for b in self.layout if b.layer == layer]
        if not blocks:
            raise KeyError(f"no router in layer {layer}; layers: {sorted({b.layer for b in self.layout})}")
        return np.concatenate([self.routing[:, b.start : b.stop] for b in blocks], axis=1)

    @staticmethod
    def concatenate(parts: list[MoEEParts]) -> MoEEParts:
        if not parts:
            raise ValueError("nothing to concatenate")
        return MoEEParts(
            np.concatenate([p.hidden for p in parts]),
            np.concatenate([p.routing for p in parts]),
            np.concatenate([p.num_tokens for p in parts]),
            list(parts[0].layout),
        )
