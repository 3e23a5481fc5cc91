"""Label-free choice of alpha for MoEE(sum): the fused similarity that agrees best, in rank, with both parts.

Criterion (computed on the evaluated texts only, no labels): for text pairs (i, j) let
``s_HS = cos(HS_i, HS_j)`` and ``s_RW = cos(RW_i, RW_j)`` on standardised channels, and
``s_alpha = s_HS + alpha * s_RW``. The chosen alpha maximises

    J(alpha) = (spearman(s_alpha, s_HS) + spearman(s_alpha, s_RW)) / 2

over a log-spaced grid (0.01 to 100 by default); among equal maxima the alpha closest to 1 (in log scale)
wins. ``J`` tends to (1 + spearman(s_HS, s_RW)) / 2 at both ends (alpha -> 0 or infinity) and is largest
where the fused ranking shares the most with each part, i.e. where neither channel drowns the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..core.embedder import MoEEmbedder
from ..core.parts import MoEEParts

DEFAULT_GRID: tuple[float, ...] = tuple(float(f"{x:.4g}") for x in np.logspace(-2, 2, 41))
MIN_TEXTS = 3


@dataclass(frozen=True)
class AlphaChoice:
    """The chosen alpha and the rank agreements that chose it."""

    alpha: float
    agreement: float  # J(alpha): mean of the two Spearman correlations below
    spearman_hs: float  # spearman(s_alpha, s_HS)
    spearman_rw: float  # spearman(s_alpha, s_RW)
    spearman_hs_rw: float  # spearman(s_HS, s_RW): how much the two channels already agree
    num_texts: int
    num_pairs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    ranks = rankdata(values)
    return (ranks - ranks.mean()) / max(float(np.linalg.norm(ranks - ranks.mean())), np.finfo(np.float64).tiny)


def select_alpha(embedder: MoEEmbedder, parts: MoEEParts, *, grid: Sequence[float] = DEFAULT_GRID,
                 max_texts: int = 2000, max_pairs: int = 200_000, seed: int = 0) -> AlphaChoice:
    """Choose alpha for ``sum`` mode from the raw ``parts`` of the evaluated texts (see the module docstring).

    Uses the embedder's standardisation, so the similarities are exactly those the ``sum`` vectors fuse.
    At most ``max_texts`` texts and ``max_pairs`` pairs are drawn (seeded), which keeps it a second or two.
    """
    n = len(parts)
    if n < MIN_TEXTS:
        raise ValueError(f"choosing alpha needs at least {MIN_TEXTS} distinct texts, got {n}")
    grid = sorted({float(a) for a in grid})
    if not grid or any(not np.isfinite(a) or a < 0 for a in grid):
        raise ValueError(f"alpha grid must hold finite numbers >= 0, got {grid!r}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, max_texts), replace=False))
    vectors = embedder.combine(parts[rows], "sum", alpha=1.0).astype(np.float64)
    unit_hs, unit_rw = vectors[:, : embedder.hidden_dim], vectors[:, embedder.hidden_dim :]
    m = len(rows)
    if m * (m - 1) // 2 <= max_pairs:
        left, right = np.triu_indices(m, k=1)
    else:
        left = rng.integers(0, m, size=max_pairs)
        right = (left + rng.integers(1, m, size=max_pairs)) % m  # never a text with itself
    s_hs = np.einsum("ij,ij->i", unit_hs[left], unit_hs[right])
    s_rw = np.einsum("ij,ij->i", unit_rw[left], unit_rw[right])
    if np.ptp(s_hs) == 0 or np.ptp(s_rw) == 0:
        raise ValueError("all pairs have the same HS or RW similarity; alpha cannot be chosen from these texts")
    r_hs, r_rw = _ranks(s_hs), _ranks(s_rw)
    best: tuple[float, float, float, float] | None = None  # (J, -|log alpha|, rho_hs, rho_rw)
    best_alpha = 1.0
    for alpha in grid:
        r = _ranks(s_hs + alpha * s_rw)
        rho_hs, rho_rw = float(r @ r_hs), float(r @ r_rw)
        agreement = (rho_hs + rho_rw) / 2
        closeness = -abs(np.log(alpha)) if alpha > 0 else -np.inf
        candidate = (round(agreement, 12), closeness, rho_hs, rho_rw)
        if best is None or candidate[:2] > best[:2]:
            best, best_alpha = candidate, alpha
    assert best is not None
    return AlphaChoice(alpha=best_alpha, agreement=best[0], spearman_hs=best[2], spearman_rw=best[3],
                       spearman_hs_rw=float(r_hs @ r_rw), num_texts=m, num_pairs=len(left))
