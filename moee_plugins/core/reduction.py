"""Compact vectors: a PCA of one mode's vectors, fitted once at calibration (like the standardisation statistics).

Plain truncation is meaningless for MoEE (a sum or concat vector starts with the hidden state and ends with the
routing weights: keeping the first dimensions drops every router). The paper's code reduced dimensions with PCA;
here the projection is fixed at calibration, so a reduced vector, like a full one, never depends on its batch.
Components are nested: the first ``d`` of them are the best ``d``-dimensional projection for every ``d``, so
one fit serves every size up to the largest requested.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .combine import block_rows


def _encode_array(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def _decode_array(text: str, shape: tuple[int, ...]) -> np.ndarray:
    values = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype="<f4")
    if values.size != int(np.prod(shape)):
        raise ValueError(f"reduction data holds {values.size} values, expected {shape}")
    return values.reshape(shape).astype(np.float32)


def check_dimensions(dimensions: int | Sequence[int]) -> tuple[int, ...]:
    """Requested sizes as a sorted tuple of distinct positive integers; anything else is refused by name."""
    items = [dimensions] if isinstance(dimensions, int) and not isinstance(dimensions, bool) else dimensions
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise TypeError(f"dimensions must be a positive integer or a non-empty sequence of them, got {dimensions!r}")
    for value in items:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"dimensions must be positive integers, got {value!r}")
    return tuple(sorted({int(v) for v in items}))


def _unit_rows(values: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.maximum(norms, np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class Reduction:
    """A fitted PCA of ``mode`` vectors (of ``alpha``, for ``sum``): ``mean`` (D,) and ``components`` (k, D),
    rows sorted by explained variance. Reduced vectors are L2-normalised, so dot = cosine as for full ones."""

    mode: str
    alpha: float
    dimensions: tuple[int, ...]
    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    num_texts: int
    source: str

    @property
    def input_dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit(cls, vectors: np.ndarray, dimensions: int | Sequence[int], *, mode: str, alpha: float,
            source: str) -> Reduction:
        dims = check_dimensions(dimensions)
        values = np.asarray(vectors, dtype=np.float64)
        n, width = values.shape
        largest = dims[-1]
        if largest >= width:
            raise ValueError(f"dimensions={largest} is not a reduction: {mode} vectors have {width} dimensions")
        if n <= largest:
            raise ValueError(f"a {largest}-dimensional reduction needs more than {largest} calibration texts, got {n}")
        mean = values.mean(axis=0)
        _, singular, vt = np.linalg.svd(values - mean, full_matrices=False)
        components = vt[:largest]
        # a deterministic sign per component: its largest-magnitude coefficient is positive
        signs = np.sign(components[np.arange(largest), np.abs(components).argmax(axis=1)])
        components = components * np.where(signs == 0, 1.0, signs)[:, None]
        variance = singular**2
        ratio = variance[:largest] / max(float(variance.sum()), np.finfo(np.float64).tiny)
        return cls(mode, float(alpha), dims, mean.astype(np.float32), components.astype(np.float32),
                   ratio.astype(np.float32), n, source)

    def apply(self, vectors: np.ndarray, dimensions: int) -> np.ndarray:
        """``vectors`` projected on the first ``dimensions`` components, L2-normalised, float32."""
        values = np.asarray(vectors)
        self._check_request(values.shape, dimensions)
        out = np.empty((len(values), dimensions), dtype=np.float32)
        step = block_rows(self.input_dim)  # bounded float64 working copies, as in combine
        for start in range(0, len(values), step):
            block = torch.from_numpy(np.asarray(values[start : start + step], dtype=np.float64))
            out[start : start + step] = self.apply_tensor(block, dimensions).numpy()
        return out

    def apply_tensor(self, vectors: torch.Tensor, dimensions: int) -> torch.Tensor:
        """:meth:`apply` on a tensor (any device), float64 out: the one implementation, also used by adapters
        that keep their vectors on the device (sentence-transformers' ``truncate_dim``)."""
        self._check_request(tuple(vectors.shape), dimensions)
        mean = torch.as_tensor(self.mean, dtype=torch.float64, device=vectors.device)
        basis = torch.as_tensor(self.components[:dimensions], dtype=torch.float64, device=vectors.device)
        projected = (vectors.double() - mean) @ basis.T
        return projected / projected.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)

    def _check_request(self, shape: tuple[int, ...], dimensions: int) -> None:
        if dimensions not in self.dimensions:
            raise ValueError(f"dimensions={dimensions!r} is not fitted; supported dimensions: {self.dimensions}")
        if len(shape) != 2 or shape[1] != self.input_dim:
            raise ValueError(f"the reduction takes {self.input_dim}-dimensional {self.mode} vectors, got shape "
                             f"{tuple(shape)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; the arrays as base64 of little-endian float32 (exact, a quarter of a list's size)."""
        return {
            "method": "pca",
            "mode": self.mode,
            "alpha": self.alpha,
            "dimensions": list(self.dimensions),
            "input_dim": self.input_dim,
            "mean": _encode_array(self.mean),
            "components": _encode_array(self.components),
            "explained_variance_ratio": [float(v) for v in self.explained_variance_ratio],
            "num_texts": self.num_texts,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reduction:
        if not isinstance(data, dict) or data.get("method") != "pca":
            raise ValueError(f"a reduction must be a dict with method 'pca', got {str(data)[:80]!r}")
        dims = check_dimensions(data["dimensions"])
        width = int(data["input_dim"])
        ratio = np.asarray(data["explained_variance_ratio"], dtype=np.float32)
        if ratio.shape != (dims[-1],):
            raise ValueError(f"reduction has {ratio.size} explained variances for {dims[-1]} components")
        return cls(str(data["mode"]), float(data["alpha"]), dims, _decode_array(data["mean"], (width,)),
                   _decode_array(data["components"], (dims[-1], width)), ratio, int(data.get("num_texts", 0)),
                   str(data.get("source", "config")))
