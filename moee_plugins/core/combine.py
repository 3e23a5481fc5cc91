"""From the two raw channels (HS, RW) to one vector per text, for each MoEE mode."""

from __future__ import annotations

import numpy as np

from .standardize import Statistics

MODES = ("hs", "rw", "concat", "sum")
_BLOCK_ROWS = 8192  # rows combined at a time: bounds the float64 working copies


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
    for start in range(0, len(hidden), _BLOCK_ROWS):
        block = slice(start, start + _BLOCK_ROWS)
        out[block] = _combine_block(hidden[block], routing[block], mode, alpha, statistics, normalize)
    return out


def _combine_block(hidden: np.ndarray, routing: np.ndarray, mode: str, alpha: float,
                   statistics: Statistics | None, normalize: bool) -> np.ndarray:
    hidden = np.asarray(hidden, dtype=np.float64)
    if mode == "hs":
        return _unit_rows(hidden) if normalize else hidden
    routing = np.asarray(routing, dtype=np.float64)
    z_routing = statistics.routing.apply(routing) if statistics is not None else routing
    if mode == "rw":
        return _unit_rows(z_routing) if normalize else z_routing
    z_hidden = statistics.hidden.apply(hidden) if statistics is not None else hidden
    if mode == "concat":
        out = np.concatenate([z_hidden, z_routing], axis=1)
        return _unit_rows(out) if normalize else out
    scale = 1.0 / np.sqrt(1.0 + alpha)
    return np.concatenate([scale * _unit_rows(z_hidden), (np.sqrt(alpha) * scale) * _unit_rows(z_routing)], axis=1)


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
