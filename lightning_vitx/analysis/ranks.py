"""Spearman's rank correlation, the one implementation every score and analysis uses (ties share their mean rank)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rank_correlation", "ranks"]


def ranks(values: Tensor) -> Tensor:
    """Ranks ``0 .. n-1`` along the last dimension, tied values given their mean rank; no loop, no host sync.

    Example::

        >>> ranks(torch.tensor([3.0, 1.0, 3.0, 2.0]))
        tensor([2.5000, 0.0000, 2.5000, 1.0000])
    """
    n = values.shape[-1]
    flat = values.reshape(-1, n)
    ordered, order = flat.sort(dim=-1, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(dim=-1) - 1  # the tie group of each sorted position
    positions = torch.arange(n, dtype=flat.dtype, device=flat.device).expand_as(flat)
    sums = torch.zeros_like(flat).scatter_add_(-1, group, positions)
    counts = torch.zeros_like(flat).scatter_add_(-1, group, torch.ones_like(flat))
    mean = (sums / counts.clamp_min(1)).gather(-1, group)
    return torch.empty_like(flat).scatter_(-1, order, mean).view_as(values)


def rank_correlation(x: Tensor, y: Tensor) -> Tensor:
    """Spearman's rank correlation along the last dimension (ties get their mean rank): ``[..., n]`` -> ``[...]``.

    Computed in float64, returned as float32; NaN where either side is constant (no ranking to compare).

    Example::

        >>> rank_correlation(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 4.0, 9.0, 16.0]))
        tensor(1.)
    """
    if x.shape != y.shape or x.shape[-1] < 2:
        raise ValueError(f"expected two tensors of one shape [..., n >= 2], got {list(x.shape)} and {list(y.shape)}")
    rx, ry = ranks(x.double()), ranks(y.double())
    rx, ry = rx - rx.mean(dim=-1, keepdim=True), ry - ry.mean(dim=-1, keepdim=True)
    denominator = (rx.square().sum(dim=-1) * ry.square().sum(dim=-1)).sqrt()
    return ((rx * ry).sum(dim=-1) / denominator).float()
