"""Rollout-type aggregation as a row vector propagated from the top block down.

With ``R = M_L ... M_s`` (later blocks on the left) and the readout row weights ``w``, the map is ``w R``.
Carrying ``v = w`` through ``v <- v M_l`` for ``l = L..s`` costs ``O(L N^2)`` instead of the ``O(L N^3)``
of the matrix chain, and gives the same numbers (tests keep the chain as an oracle).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["discard_lowest", "fuse_heads", "propagate_additive", "propagate_rollout", "vector_times"]


def vector_times(vector: Tensor, matrix: Tensor) -> Tensor:
    """``[B, N] x [B, N, N] -> [B, N]``."""
    return torch.bmm(vector.unsqueeze(1), matrix).squeeze(1)


def fuse_heads(attention: Tensor, how: str) -> Tensor:
    """Fuse ``[B, heads, N, N]`` over heads with ``mean``, ``max`` or ``min``."""
    if how == "mean":
        return attention.mean(dim=1)
    if how == "max":
        return attention.amax(dim=1)
    if how == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head_fusion must be one of ['mean', 'max', 'min'], got {how!r}")


def propagate_rollout(weights: Tensor, fused: Sequence[Tensor]) -> Tensor:
    """``w (A_L + I)' ... (A_s + I)'`` where ``'`` normalises rows to sum 1 (Abnar & Zuidema's code).

    For row-stochastic ``A`` (mean fusion, nothing discarded) this is the paper's ``0.5 A + 0.5 I``.
    ``fused`` lists ``[B, N, N]`` matrices bottom-up.
    """
    vector = weights
    for matrix in reversed(fused):
        row_sums = matrix.sum(dim=-1) + 1.0  # rows of A + I
        scaled = vector / row_sums
        vector = vector_times(scaled, matrix) + scaled
    return vector


def propagate_additive(weights: Tensor, fused: Sequence[Tensor]) -> Tensor:
    """``w (I + A_L) ... (I + A_s)``: Chefer et al.'s unnormalised rule ``R <- R + A R``."""
    vector = weights
    for matrix in reversed(fused):
        vector = vector + vector_times(vector, matrix)
    return vector


def discard_lowest(fused: Tensor, ratio: float, num_prefix_tokens: int) -> Tensor:
    """Zero the ``ratio`` share of smallest entries of each ``[N, N]`` matrix, per sample.

    Rows and columns of prefix tokens are never discarded (the readout runs through them); ties break by
    position (stable sort), so a sample's result does not depend on the rest of its batch.
    """
    if ratio <= 0.0:
        return fused
    batch, n, _ = fused.shape
    protected = torch.zeros(n, n, dtype=torch.bool, device=fused.device)
    protected[:num_prefix_tokens, :] = True
    protected[:, :num_prefix_tokens] = True
    count = int((n * n - int(protected.sum())) * ratio)
    if count == 0:
        return fused
    candidates = fused.masked_fill(protected, float("inf")).flatten(1)
    lowest = candidates.argsort(dim=1, stable=True)[:, :count]
    return fused.flatten(1).scatter(1, lowest, 0.0).view(batch, n, n)
