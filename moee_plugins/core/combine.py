"""From the two raw channels (HS, RW) to one vector per text, for each MoEE mode."""

from __future__ import annotations

import numpy as np
import torch

from .standardize import Statistics

MODES = ("hs", "rw", "concat", "sum")
# rows combined at a time: each float64 working copy of a block holds at most BLOCK_BYTES (682 rows of a
# 768-dimensional vector, 170 of OLMoE's 3,072), so the working memory stays small and flat at any corpus size
BLOCK_BYTES = 4 * 1024 * 1024
MAX_BLOCK_ROWS = 8192


def block_rows(width: int) -> int:
    """Rows per block for ``width``-dimensional float64 working copies (see :data:`BLOCK_BYTES`)."""
    return max(1, min(MAX_BLOCK_ROWS, BLOCK_BYTES // (8 * max(1, width))))


def _unit_rows(values: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.maximum(norms, np.finfo(np.float64).tiny)


def _unit_tensor_rows(values: torch.Tensor) -> torch.Tensor:
    return values / values.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


Standardizer = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""(hidden mean, hidden scale, routing mean, routing scale) as float64 tensors: z = (x - mean) * scale."""


def standardizer(statistics: Statistics, device: torch.device | str = "cpu") -> Standardizer:
    """The statistics as tensors on ``device`` (flat dimensions have scale 0, see :mod:`.standardize`)."""
    return tuple(torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)  # type: ignore[return-value]
                 for a in (statistics.hidden.mean, statistics.hidden.scale, statistics.routing.mean,
                           statistics.routing.scale))


def combine_tensors(hidden: torch.Tensor, routing: torch.Tensor, mode: str, *, alpha: float = 1.0,
                    standardize: Standardizer | None = None, normalize: bool = True) -> torch.Tensor:
    """:func:`combine` on tensors (any device), float64 in and out: the one implementation of every mode,
    used by the numpy path and by adapters that keep their vectors on the device."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    hidden, routing = hidden.double(), routing.double()
    if mode == "hs":
        return _unit_tensor_rows(hidden) if normalize else hidden
    mean_h, scale_h, mean_r, scale_r = standardize if standardize is not None else (0.0, 1.0, 0.0, 1.0)
    z_routing = (routing - mean_r) * scale_r
    if mode == "rw":
        return _unit_tensor_rows(z_routing) if normalize else z_routing
    z_hidden = (hidden - mean_h) * scale_h
    if mode == "concat":
        out = torch.cat([z_hidden, z_routing], dim=1)
        return _unit_tensor_rows(out) if normalize else out
    scale = 1.0 / (1.0 + alpha) ** 0.5
    return torch.cat([scale * _unit_tensor_rows(z_hidden), (alpha**0.5 * scale) * _unit_tensor_rows(z_routing)], dim=1)


def combine(
    hidden: np.ndarray,
    routing: np.ndarray,
    mode: str,
    *,
    alpha: float = 1.0,
    statistics: Statistics | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """One float32 vector per row.

    - ``hs``: the hidden state as is (the paper standardises nothing in HS-only mode).
    - ``rw``: z(RW). ``concat``: [z(HS); z(RW)].
    - ``sum``: ``[z(HS)/|z(HS)|, sqrt(alpha) z(RW)/|z(RW)|] / sqrt(1 + alpha)``: unit length, and a dot
      product of two such vectors is exactly (cos(HS) + alpha cos(RW)) / (1 + alpha), the paper's MoEE(sum)
      divided by a constant (same ranking), in [-1, 1] like any cosine, so every cosine/L2 store and score
      threshold behaves.

    ``normalize`` L2-normalises hs/rw/concat vectors (dot = cosine). Sum vectors are unit length by
    construction, whatever ``normalize`` says. Rows are processed in blocks, so the float64 working
    copies stay small however many rows come in.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if alpha < 0 or not np.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    hidden, routing = np.asarray(hidden), np.asarray(routing)
    width = {"hs": hidden.shape[1], "rw": routing.shape[1]}.get(mode, hidden.shape[1] + routing.shape[1])
    out = np.empty((len(hidden), width), dtype=np.float32)
    standardize = standardizer(statistics) if statistics is not None else None
    step = block_rows(hidden.shape[1] + routing.shape[1])
    for start in range(0, len(hidden), step):
        block = slice(start, start + step)
        out[block] = combine_tensors(torch.from_numpy(np.ascontiguousarray(hidden[block])),
                                     torch.from_numpy(np.ascontiguousarray(routing[block])), mode, alpha=alpha,
                                     standardize=standardize, normalize=normalize).numpy()
    return out


def finite_rows(vectors: np.ndarray) -> np.ndarray:
    """Whether each row is all finite, checked a block at a time (no N x dim temporary, so the check's memory does
    not grow with the corpus)."""
    out = np.empty(len(vectors), dtype=bool)
    step = block_rows(vectors.shape[1] if vectors.ndim == 2 else 1)
    for start in range(0, len(vectors), step):
        out[start : start + step] = np.isfinite(vectors[start : start + step]).all(axis=1)
    return out


def similarity(a: np.ndarray, b: np.ndarray, mode: str) -> np.ndarray:
    """The similarity each mode is defined with: for ``sum`` the dot product, i.e. the paper's fused score
    (cos(HS) + alpha cos(RW)) / (1 + alpha) (self-similarity 1); cosine for the other modes."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"cannot compare vectors of dimension {a.shape[1]} and {b.shape[1]}")
    if mode == "sum":
        return (a @ b.T).astype(np.float32)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return (_unit_rows(a) @ _unit_rows(b).T).astype(np.float32)
