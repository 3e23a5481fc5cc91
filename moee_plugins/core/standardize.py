"""Fixed per-dimension standardisation, so an embedding never depends on the rest of its batch."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

logger = logging.getLogger("moee_plugins")

# the paper's code divides by (std + 1e-8); kept so calibrated results match it exactly
EPSILON = 1e-8
MIN_CALIBRATION_TEXTS = 2
# A dimension is standardised only if its calibration spread is above both floors, else it contributes 0:
# - RELATIVE_FLOOR x the channel's typical spread (root-mean-square std): a dimension 1000x flatter than
#   the others carries no signal they lack, and dividing by its tiny std turns float noise into z-values;
# - NOISE_FLOOR x its magnitude (the larger of |mean| and the channel's root-mean-square mean): a spread
#   under 0.1% of the values is what batch-dependent kernels (~1e-6 relative in float32) or bfloat16
#   rounding (~4e-3) can produce, not data. Identical calibration texts give exactly 0 in every dimension.
# Healthy dimensions are far above both (the parity fixture's flattest: 0.34 and 0.07), and keep the
# paper's (x - mean) / (std + 1e-8) unchanged.
RELATIVE_FLOOR = 1e-3
NOISE_FLOOR = 1e-3


def _vector(data: Any, name: str) -> np.ndarray:
    try:
        values = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"statistics {name} must be a list of numbers, got {type(data).__name__}") from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"statistics {name} must be a non-empty 1-D list of numbers, got shape {values.shape}")
    return values


@dataclass(frozen=True)
class ChannelStatistics:
    """Mean and standard deviation (ddof=1, as ``torch.std``) of every dimension of one channel.

    Dimensions whose spread is below the floors (``RELATIVE_FLOOR``, ``NOISE_FLOOR``) are *flat*: they
    standardise to 0 rather than to float noise divided by ~0, so they never make an embedding depend on
    its batch.
    """

    mean: np.ndarray
    std: np.ndarray
    _scale: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        mean = _vector(self.mean, "mean")
        std = _vector(self.std, "std")
        if mean.shape != std.shape:
            raise ValueError(f"statistics mean/std must have equal length, got {mean.size} and {std.size}")
        for name, values in (("mean", mean), ("std", std)):
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise ValueError(f"statistics {name} is not finite at dimensions {bad[:10].tolist()} "
                                 f"(e.g. {values[bad[0]]}); recalibrate")
        negative = np.flatnonzero(std < 0)
        if negative.size:
            raise ValueError(f"statistics std is negative at dimensions {negative[:10].tolist()} "
                             f"(e.g. {std[negative[0]]}); a standard deviation is >= 0")
        object.__setattr__(self, "mean", mean.astype(np.float32))
        object.__setattr__(self, "std", std.astype(np.float32))
        object.__setattr__(self, "_scale", self._informative_scale())

    def _informative_scale(self) -> np.ndarray:
        std = self.std.astype(np.float64)
        mean = np.abs(self.mean.astype(np.float64))
        magnitude = np.maximum(mean, float(np.sqrt(np.mean(mean**2))))
        floor = np.maximum(RELATIVE_FLOOR * float(np.sqrt(np.mean(std**2))), NOISE_FLOOR * magnitude)
        return np.where((std <= 0) | (std < floor), 0.0, 1.0 / (std + EPSILON))

    @classmethod
    def fit(cls, values: np.ndarray) -> ChannelStatistics:
        values = np.asarray(values, dtype=np.float64)
        return cls(values.mean(axis=0).astype(np.float32), values.std(axis=0, ddof=1).astype(np.float32))

    @property
    def flat(self) -> np.ndarray:
        """Boolean mask of the dimensions that standardise to 0 (spread below the floors)."""
        return self._scale == 0

    @property
    def scale(self) -> np.ndarray:
        """``1 / (std + 1e-8)`` (the paper's rule) for informative dimensions, 0 for flat ones."""
        return self._scale

    def apply(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.mean) * self.scale

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelStatistics:
        if not isinstance(data, dict) or "mean" not in data or "std" not in data:
            raise ValueError(f"channel statistics must be a dict with 'mean' and 'std', got {data!r:.80}")
        return cls(_vector(data["mean"], "mean"), _vector(data["std"], "std"))


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
        if len(hidden) != len(routing):
            raise ValueError(f"calibration got {len(hidden)} hidden rows but {len(routing)} routing rows")
        for name, values in (("hidden", hidden), ("routing", routing)):
            if not np.isfinite(values).all():
                raise ValueError(f"calibration {name} values are not all finite: cannot fit statistics")
        stats = cls(ChannelStatistics.fit(hidden), ChannelStatistics.fit(routing), len(hidden), source)
        stats.warn_if_degenerate(routing)
        return stats

    def warn_if_degenerate(self, routing: np.ndarray) -> None:
        """Log what makes a calibration unable to tell texts apart (identical texts, dead routers)."""
        if self.hidden.flat.all():
            logger.warning("calibration on %s: all %d texts gave the same hidden state (identical texts?); "
                           "every dimension is flat and standardises to 0: calibrate on varied texts",
                           self.source, self.num_texts)
            return
        if not np.any(routing):
            logger.warning("calibration on %s: every router score is 0 (all-zero router weights?); routing "
                           "vectors (rw, and the RW half of concat/sum) will be all zero", self.source)
        for name, channel in (("hidden-state", self.hidden), ("routing", self.routing)):
            flat = int(channel.flat.sum())
            if flat:
                logger.warning("calibration on %s: %d of %d %s dimensions have (near-)zero spread and are "
                               "ignored (standardised to 0)", self.source, flat, channel.flat.size, name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden.to_dict(),
            "routing": self.routing.to_dict(),
            "num_texts": self.num_texts,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Statistics:
        if not isinstance(data, dict):
            raise ValueError(f"statistics must be a Statistics or its dict, got {type(data).__name__}")
        missing = [key for key in ("hidden", "routing") if key not in data]
        if missing:
            raise ValueError(f"statistics dict lacks {missing}; expected keys 'hidden' and 'routing' "
                             "(each with 'mean' and 'std')")
        try:
            num_texts = int(data.get("num_texts", 0))
        except (TypeError, ValueError):
            raise ValueError(f"statistics num_texts must be an integer, got {data.get('num_texts')!r}") from None
        return cls(
            ChannelStatistics.from_dict(data["hidden"]),
            ChannelStatistics.from_dict(data["routing"]),
            num_texts,
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
