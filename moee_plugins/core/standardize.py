"""Fixed per-dimension standardisation, so an embedding never depends on the rest of its batch."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

# the paper's code divides by (std + 1e-8); kept so calibrated results match it exactly
EPSILON = 1e-8
MIN_CALIBRATION_TEXTS = 2


@dataclass(frozen=True)
class ChannelStatistics:
    """Mean and standard deviation (ddof=1, as ``torch.std``) of every dimension of one channel."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> ChannelStatistics:
        values = np.asarray(values, dtype=np.float64)
        return cls(values.mean(axis=0).astype(np.float32), values.std(axis=0, ddof=1).astype(np.float32))

    def apply(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.mean) / (self.std.astype(np.float64) + EPSILON)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelStatistics:
        mean = np.asarray(data["mean"], dtype=np.float32)
        std = np.asarray(data["std"], dtype=np.float32)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"statistics mean/std must be 1-D of equal length, got {mean.shape} and {std.shape}")
        return cls(mean, std)


@dataclass(frozen=True)
class Statistics:
    """Standardisation statistics for the hidden-state and routing channels."""

    hidden: ChannelStatistics
    routing: ChannelStatistics
    num_texts: int
    source: str

    @classmethod
    def fit(cls, hidden: np.ndarray, routing: np.ndarray, source: str) -> Statistics:
        if len(hidden) < MIN_CALIBRATION_TEXTS:
            raise ValueError(f"calibration needs at least {MIN_CALIBRATION_TEXTS} texts, got {len(hidden)}")
        return cls(ChannelStatistics.fit(hidden), ChannelStatistics.fit(routing), len(hidden), source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden.to_dict(),
            "routing": self.routing.to_dict(),
            "num_texts": self.num_texts,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Statistics:
        return cls(
            ChannelStatistics.from_dict(data["hidden"]),
            ChannelStatistics.from_dict(data["routing"]),
            int(data.get("num_texts", 0)),
            str(data.get("source", "config")),
        )

    def check_dims(self, hidden_dim: int, routing_dim: int) -> None:
        got = (len(self.hidden.mean), len(self.routing.mean))
        if got != (hidden_dim, routing_dim):
            raise ValueError(
                f"statistics are for (hidden={got[0]}, routing={got[1]}) dimensions but this embedder produces "
                f"(hidden={hidden_dim}, routing={routing_dim}); were they computed with another model or layer selection?"
            )


@lru_cache(maxsize=1)
def calibration_sentences() -> tuple[str, ...]:
    """The varied English sentences shipped with the package, used when the user does not calibrate."""
    text = resources.files("moee_plugins.core.data").joinpath("calibration_sentences.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line.strip())
