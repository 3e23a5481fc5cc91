"""From the two raw channels (HS, RW) to one vector per text, for each MoEE mode."""

from __future__ import annotations

import numpy as np

from .standardize import Statistics

MODES = ("hs", "rw", "concat", "sum")


def _unit_rows(values: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.maximum(norms, np.finfo(np.float64).tiny)


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
    - ``sum``: ``[z(HS)/|z(HS)|, sqrt(alpha) z(RW)/|z(RW)|]``, so that a dot product of two such
      vectors is exactly cos(HS) + alpha cos(RW), the paper's MoEE(sum), indexable by any vector store.

    ``normalize`` L2-normalises hs/rw/concat vectors (dot = cosine). Sum vectors are built from
    unit-length parts and are never rescaled: that would break the exact fused score.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if alpha < 0 or not np.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    hidden = np.asarray(hidden, dtype=np.float64)
    routing = np.asarray(routing, dtype=np.float64)
    z_hidden = statistics.hidden.apply(hidden) if statistics is not None else hidden
    z_routing = statistics.routing.apply(routing) if statistics is not None else routing
    if mode == "hs":
        out = hidden
    elif mode == "rw":
        out = z_routing
    elif mode == "concat":
        out = np.concatenate([z_hidden, z_routing], axis=1)
    else:
        return np.concatenate([_unit_rows(z_hidden), np.sqrt(alpha) * _unit_rows(z_routing)], axis=1).astype(np.float32)
    return (_unit_rows(out) if normalize else out).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray, mode: str) -> np.ndarray:
    """The similarity each mode is defined with: dot product for ``sum`` (exact fused score), else cosine."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"cannot compare vectors of dimension {a.shape[1]} and {b.shape[1]}")
    if mode == "sum":
        return (a @ b.T).astype(np.float32)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return (_unit_rows(a) @ _unit_rows(b).T).astype(np.float32)
