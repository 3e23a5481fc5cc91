"""The vector rules: from raw parts (HS, RW) to the vectors of a mode, and what they need.

:class:`VectorRules` holds the fitted state of one embedder (standardisation statistics, a compact-vector
reduction) and applies the pure rules of :mod:`.combine`, :mod:`.standardize` and :mod:`.reduction`:
statistics (set / ensure / fit), standardisation, combination on the host or the device, reduction
(fit / set / size checks), similarity and the finite checks. It never runs the model: whoever fits
statistics hands it the parts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .combine import MODES, Standardizer, combine, combine_tensors, finite_rows, similarity, standardizer
from .options import check_alpha, needs_statistics
from .parts import MoEEParts
from .reduction import Reduction, check_dimensions
from .standardize import Statistics

logger = logging.getLogger("moee_plugins")

__all__ = ["MODES", "VectorRules", "check_model_output", "check_vectors", "similarity"]


def _bad_rows(finite: np.ndarray) -> str:
    bad = np.flatnonzero(~np.asarray(finite))
    return f"{bad[:10].tolist()}{' ...' if bad.size > 10 else ''}" if bad.size else ""


def check_model_output(hidden: np.ndarray | None = None, routing: np.ndarray | None = None, *,
                       finite: np.ndarray | None = None) -> None:
    """Refuse non-finite model output (parts, or a per-row ``finite`` mask), naming the inputs and the usual cause."""
    if finite is None:
        finite = finite_rows(hidden) & finite_rows(routing)
    bad = _bad_rows(finite)
    if bad:
        raise FloatingPointError(
            f"the model produced non-finite hidden states or router scores for inputs {bad}; this usually means "
            "float16 overflow: use dtype='bfloat16' or 'float32'")


def check_vectors(finite: np.ndarray) -> None:
    """Refuse vectors that became non-finite in standardisation or combination."""
    bad = _bad_rows(finite)
    if bad:
        raise FloatingPointError(
            f"the vectors of inputs {bad} are not finite after standardisation and combination; check the "
            "statistics (set_statistics / moee_statistics.json) and alpha")


def check_mode(mode: str | None, default: str) -> str:
    """``mode`` checked, ``default`` when ``None``."""
    if mode is None:
        return default
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


class VectorRules:
    """The statistics and reduction of an embedder whose parts are ``hidden_dim`` + ``routing_dim`` wide, and
    the rules that turn parts into vectors. Settings (mode, alpha, standardize, normalize) are passed per call:
    they are the facade's options."""

    def __init__(self, hidden_dim: int, routing_dim: int) -> None:
        self.hidden_dim, self.routing_dim = int(hidden_dim), int(routing_dim)
        self.statistics: Statistics | None = None
        self.reduction: Reduction | None = None
        self._on_device: dict[str, tuple[Statistics, Standardizer]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_on_device": {}}  # device tensors are rebuilt where the copy runs

    def dim_of(self, mode: str) -> int:
        """Length of the vectors of ``mode``."""
        return {"hs": self.hidden_dim, "rw": self.routing_dim}.get(mode, self.hidden_dim + self.routing_dim)

    # ------------------------------------------------------------------ statistics
    def needs_statistics(self, mode: str, standardize: str | None) -> bool:
        """Whether vectors of ``mode`` are standardised and no statistics are set yet."""
        return needs_statistics({"standardize": standardize, "mode": mode, "statistics": self.statistics})

    def ensure_statistics(self, mode: str, standardize: str | None,
                          fit: Callable[[], MoEEParts]) -> Statistics | None:
        """The statistics ``mode`` needs, fitted once on ``fit()``'s parts (the built-in calibration set) when none
        are set; ``None`` when the vectors are not standardised."""
        if not self.needs_statistics(mode, standardize):
            return self.statistics if standardize is not None else None
        if self.statistics is None:
            parts = fit()
            self.statistics = Statistics.fit(parts.hidden, parts.routing, source="built-in calibration set")
        return self.statistics

    def statistics_for(self, mode: str, standardize: str | None) -> Statistics | None:
        """The statistics vectors of ``mode`` are standardised with (None: not standardised); refuses when missing."""
        if standardize is None or mode == "hs":
            return None
        if self.statistics is None:
            raise RuntimeError(
                f"mode {mode!r} standardises with fixed statistics and none are set: call "
                "embedder.ensure_statistics() (built-in calibration sentences), embedder.calibrate(texts), or pass "
                "statistics=...; combine() never runs the model")
        return self.statistics

    def set_statistics(self, statistics: Statistics | Mapping[str, Any]) -> Statistics:
        """Install statistics (checked against the part shapes); a reduction fitted on others is dropped."""
        if isinstance(statistics, Statistics):
            stats = statistics
        elif isinstance(statistics, Mapping):
            stats = Statistics.from_dict(dict(statistics))
        else:
            raise TypeError(f"statistics must be a Statistics or its dict (Statistics.to_dict()), "
                            f"got {type(statistics).__name__}: {statistics!r:.80}")
        stats.check_dims(self.hidden_dim, self.routing_dim)
        self.statistics = stats
        self.drop_stale_reduction()
        return stats

    def fit_statistics(self, parts: MoEEParts, source: str) -> Statistics:
        """Fit statistics on ``parts`` and install them (a reduction fitted on earlier statistics is dropped)."""
        self.statistics = Statistics.fit(parts.hidden, parts.routing, source=source)
        self.drop_stale_reduction()
        return self.statistics

    def drop_stale_reduction(self) -> None:
        if self.reduction is not None:
            logger.warning("new standardisation statistics: the fitted reduction %s no longer applies and is "
                           "removed (fit it again with fit_reduction)", self.reduction.dimensions)
            self.reduction = None

    def standardizer_on(self, device: torch.device) -> Standardizer:
        """The statistics as tensors on ``device``, cached until the statistics change."""
        key = str(device)
        cached = self._on_device.get(key)
        if cached is None or cached[0] is not self.statistics:
            assert self.statistics is not None
            cached = (self.statistics, standardizer(self.statistics, device))
            self._on_device[key] = cached
        return cached[1]

    def forget_devices(self) -> None:
        """Drop the tensors cached per device (the model moved)."""
        self._on_device = {}

    # ------------------------------------------------------------------ combination
    def combine(self, parts: MoEEParts, mode: str, *, alpha: float, standardize: str | None, normalize: bool,
                dimensions: int | None = None) -> np.ndarray:
        """float32 vectors of ``mode`` from raw parts (``dimensions``: the fitted reduction's compact size)."""
        alpha = check_alpha(alpha)
        self.check_dimensions(dimensions, mode, alpha)
        vectors = combine(parts.hidden, parts.routing, mode, alpha=alpha,
                          statistics=self.statistics_for(mode, standardize), normalize=normalize)
        check_vectors(finite_rows(vectors))
        return vectors if dimensions is None else self.reduction.apply(vectors, dimensions)  # type: ignore[union-attr]

    def combine_features(self, pooled: torch.Tensor, mode: str, *, alpha: float, standardize: str | None,
                         normalize: bool, dimensions: int | None = None) -> torch.Tensor:
        """:meth:`combine` on the device, from pooled ``[HS | RW]`` rows; float32 out."""
        alpha = check_alpha(alpha)
        self.check_dimensions(dimensions, mode, alpha)
        statistics = self.statistics_for(mode, standardize)
        out = combine_tensors(pooled[:, : self.hidden_dim], pooled[:, self.hidden_dim :], mode, alpha=alpha,
                              standardize=None if statistics is None else self.standardizer_on(pooled.device),
                              normalize=normalize)
        finite = torch.isfinite(out).all(dim=1)
        if not bool(finite.all()):
            check_vectors(finite.cpu().numpy())
        if dimensions is not None:
            out = self.reduction.apply_tensor(out.float(), dimensions)  # type: ignore[union-attr]
        return out.float()

    # ------------------------------------------------------------------ reduction
    def set_reduction(self, reduction: Reduction | Mapping[str, Any] | None) -> None:
        """Install a fitted reduction (or its dict); ``None`` removes it."""
        if reduction is None:
            self.reduction = None
            return
        fitted = reduction if isinstance(reduction, Reduction) else Reduction.from_dict(dict(reduction))
        expected = self.dim_of(fitted.mode)
        if fitted.input_dim != expected:
            raise ValueError(f"the reduction takes {fitted.input_dim}-dimensional {fitted.mode} vectors but this "
                             f"embedder's are {expected}-dimensional; was it fitted with another model or layers?")
        self.reduction = fitted

    def check_reduction_request(self, dimensions: int | Sequence[int], num_texts: int, mode: str) -> None:
        """Refuse an impossible fit before any text is encoded."""
        largest = check_dimensions(dimensions)[-1]
        if largest >= self.dim_of(mode):
            raise ValueError(f"dimensions={largest} is not a reduction: {mode} vectors have {self.dim_of(mode)} "
                             "dimensions")
        if num_texts <= largest:
            raise ValueError(f"a {largest}-dimensional reduction needs more than {largest} calibration texts, "
                             f"got {num_texts}")

    def fit_reduction(self, vectors: np.ndarray, dimensions: int | Sequence[int], *, mode: str, alpha: float,
                      source: str) -> Reduction:
        """Fit and install the PCA behind compact vectors on ``vectors`` of ``mode``."""
        self.reduction = Reduction.fit(vectors, dimensions, mode=mode, alpha=alpha, source=source)
        return self.reduction

    def check_dimensions(self, dimensions: int | None, mode: str, alpha: float) -> None:
        """Refuse a compact size that cannot be produced for ``mode``/``alpha``, naming the problem."""
        if dimensions is None:
            return
        if isinstance(dimensions, bool) or not isinstance(dimensions, int):
            raise TypeError(f"dimensions must be None or an integer, got {type(dimensions).__name__}")
        if self.reduction is None:
            raise ValueError(f"dimensions={dimensions}: no reduction is fitted; call fit_reduction(texts, "
                             f"{dimensions}) or calibrate(texts, dimensions={dimensions}) first")
        if dimensions not in self.reduction.dimensions:
            raise ValueError(f"dimensions={dimensions} is not fitted; supported dimensions: {self.reduction.dimensions}")
        if mode != self.reduction.mode or (mode == "sum" and alpha != self.reduction.alpha):
            fitted = self.reduction.mode + (f" (alpha={self.reduction.alpha:g})" if self.reduction.mode == "sum" else "")
            raise ValueError(f"the reduction was fitted on {fitted} vectors, not {mode}"
                             f"{f' (alpha={alpha:g})' if mode == 'sum' else ''}; fit one for these with fit_reduction")

    def check_truncation(self, size: int | None, full_dim: int, name: str = "truncate_dim") -> None:
        """Refuse cutting vectors to their first ``size`` dimensions (a framework's ``truncate_dim``): that keeps
        hidden-state dimensions and drops every routing one, unless a fitted reduction of that size exists."""
        supported = tuple(self.reduction.dimensions) if self.reduction is not None else ()
        if size is not None and size != full_dim and size not in supported:
            raise ValueError(
                f"{name}={size} would cut an MoEE vector's routing dimensions off (its first {self.hidden_dim} "
                f"dimensions are the hidden state); fitted compact sizes: {list(supported) or 'none'}. "
                f"Use {name}=None, or fit a reduction of that size")
