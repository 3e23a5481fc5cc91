"""Pooling over the sequence dimension. Inputs are left-padded, so the last position is the last real token."""

from __future__ import annotations

import torch

POOLINGS = ("last", "mean")


def last_token_pool(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``values[:, -1]``: with left padding the final position is every row's last real token."""
    del attention_mask  # left padding makes the mask unnecessary here; kept for a uniform signature
    return values[:, -1]


def mean_pool(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only. ``where`` (not a product) keeps NaN/inf at pad positions out."""
    mask = attention_mask.to(torch.bool).unsqueeze(-1)
    summed = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1).to(values.dtype)
    return summed / counts


def pool(values: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``values`` (batch, seq, dim) to (batch, dim) in float32 (selecting before casting: no full-size copy)."""
    if pooling == "last":
        return last_token_pool(values, attention_mask).float()
    if pooling == "mean":
        return mean_pool(values.float(), attention_mask)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
