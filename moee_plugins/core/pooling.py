"""Pooling over the sequence dimension, reading real tokens by the attention mask (inputs are right-padded)."""

from __future__ import annotations

import torch

POOLINGS = ("last", "mean")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (the last 1 in its mask), for right- or left-padded rows alike."""
    mask = attention_mask.to(torch.bool)
    width = mask.shape[-1]
    return (width - 1 - mask.flip(-1).to(torch.int8).argmax(dim=-1)).clamp(min=0)


def last_token_pool(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``values`` at each row's last real token, gathered by index: (batch, seq, dim) -> (batch, dim)."""
    index = last_token_index(attention_mask).to(values.device)
    return values[torch.arange(values.shape[0], device=values.device), index]


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
