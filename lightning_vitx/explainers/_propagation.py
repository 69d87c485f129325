"""Rollout-type aggregation as a row vector propagated from the top block down.

With ``R = M_L ... M_s`` (later blocks on the left) and the readout row weights ``w``, the map is ``w R``.
Carrying ``v = w`` through ``v <- v M_l`` for ``l = L..s`` costs ``O(L N^2)`` instead of the ``O(L N^3)``
of the matrix chain, and gives the same numbers (tests keep the chain as an oracle). Each product runs in the
block's own layout (``adapters.geometry``): dense for ViT, per window for Swin, where the vector is also spread
from a merged stage's grid to the finer grid below it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from lightning_vitx._checks import check_choice
from lightning_vitx.adapters.geometry import AttentionGeometry, spread

__all__ = [
    "HEAD_FUSIONS",
    "HeadFusion",
    "discard_lowest",
    "fuse_heads",
    "propagate_additive",
    "propagate_rollout",
    "propagate_token_transformation",
]

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[str, ...] = get_args(HeadFusion)

Step = Callable[[Tensor, Tensor, AttentionGeometry, Tensor | None], Tensor]


def fuse_heads(attention: Tensor, how: str) -> Tensor:
    """Fuse ``[B, heads, ...]`` over heads with ``mean``, ``max`` or ``min``."""
    if how == "mean":
        return attention.mean(dim=1)
    if how == "max":
        return attention.amax(dim=1)
    if how == "min":
        return attention.amin(dim=1)
    check_choice("head_fusion", how, HEAD_FUSIONS)
    raise AssertionError("unreachable: every head fusion is handled above")


def _propagate(
    weights: Tensor,
    fused: Sequence[Tensor],
    geometries: Sequence[AttentionGeometry],
    step: Step,
    scales: Sequence[Tensor | None] | None = None,
    key_scales: Sequence[Tensor | None] | None = None,
) -> Tensor:
    vector, above = weights, None
    scales = scales if scales is not None else [None] * len(fused)
    key_scales = key_scales if key_scales is not None else [None] * len(fused)
    blocks = zip(reversed(fused), reversed(geometries), reversed(scales), reversed(key_scales), strict=True)
    for matrix, geometry, scale, key_scale in blocks:
        if above is not None and above.grid_size != geometry.grid_size:
            vector = spread(vector, above.grid_size, geometry.grid_size)
        vector, above = step(vector, matrix, geometry, key_scale), geometry
        if scale is not None:
            vector = vector * scale
    return vector


def _rollout_step(vector: Tensor, matrix: Tensor, geometry: AttentionGeometry, key_scale: Tensor | None) -> Tensor:
    scaled = vector / (geometry.row_sums(matrix) + 1.0)  # rows of A + I
    return geometry.times(scaled, matrix) + scaled


def _additive_step(vector: Tensor, matrix: Tensor, geometry: AttentionGeometry, key_scale: Tensor | None) -> Tensor:
    product = geometry.times(vector, matrix)
    return vector + (product if key_scale is None else product * key_scale)


def propagate_rollout(weights: Tensor, fused: Sequence[Tensor], geometries: Sequence[AttentionGeometry]) -> Tensor:
    """``w (A_L + I)' ... (A_s + I)'`` where ``'`` normalises rows to sum 1 (Abnar & Zuidema's code).

    For row-stochastic ``A`` (mean fusion, nothing discarded) this is the paper's ``0.5 A + 0.5 I``.
    ``fused`` lists the blocks' head-fused attention bottom-up, ``geometries`` their layouts; the result lives on
    the first listed block's tokens.
    """
    return _propagate(weights, fused, geometries, _rollout_step)


def propagate_additive(
    weights: Tensor,
    fused: Sequence[Tensor],
    geometries: Sequence[AttentionGeometry],
    scales: Sequence[Tensor | None] | None = None,
    key_scales: Sequence[Tensor | None] | None = None,
    drop_identity: bool = False,
) -> Tensor:
    """``w (I + A_L) ... (I + A_s)``: Chefer et al.'s unnormalised rule ``R <- R + A R``.

    ``key_scales[l]`` (``[B, N_l]`` or ``None``), when given, weighs block ``l``'s key columns:
    ``(I + A_l diag(key_scales[l]))``, done on the vector (``v + (v A_l) * s``), so the matrices are left as they
    are. ``scales[l]`` multiplies the vector token-wise right after block ``l``'s product, i.e.
    ``(I + A_l) diag(scales[l])``; before a merged stage's vector is spread to the grid below.

    ``drop_identity=True`` returns ``w R - w (I)...(I)``: the product without its identity-only path (``w``
    itself, spread to the first block's grid and scaled like the rest). Only that path reaches the patches when
    ``w`` weighs them (avg-pool heads, Swin): it adds the same ``1/N`` to every patch, a constant that dwarfs the
    attention terms (0.1 % of the value on a trained tiny Swin, below float32 rounding at random init). The
    difference is carried down directly (``D <- D + ((u + D) A) * s`` with ``u`` the identity path), so no
    cancellation eats it. With a class-token readout ``w`` is 0 on the patches and the identity path adds
    nothing there; callers keep ``drop_identity=False`` for them, so those maps stay bit for bit as they were.
    """
    if not drop_identity:
        return _propagate(weights, fused, geometries, _additive_step, scales, key_scales)
    identity, difference, above = weights, torch.zeros_like(weights), None
    scales = scales if scales is not None else [None] * len(fused)
    key_scales = key_scales if key_scales is not None else [None] * len(fused)
    blocks = zip(reversed(fused), reversed(geometries), reversed(scales), reversed(key_scales), strict=True)
    for matrix, geometry, scale, key_scale in blocks:
        if above is not None and above.grid_size != geometry.grid_size:
            identity = spread(identity, above.grid_size, geometry.grid_size)
            difference = spread(difference, above.grid_size, geometry.grid_size)
        product = geometry.times(identity + difference, matrix)
        difference, above = difference + (product if key_scale is None else product * key_scale), geometry
        if scale is not None:
            identity, difference = identity * scale, difference * scale
    return difference


def propagate_token_transformation(
    weights: Tensor,
    fused: Sequence[Tensor],
    attention_scales: Sequence[Tensor],
    mlp_scales: Sequence[Tensor],
    geometries: Sequence[AttentionGeometry],
) -> Tensor:
    """``w U_L ... U_s`` with TokenTM's ``U = (I + diag(m)) (I + M diag(a))`` per block (Wu et al. 2024).

    ``fused`` lists each block's ``M`` (head-fused attention, gradient-weighted), ``attention_scales`` and
    ``mlp_scales`` its per-token weights ``a`` and ``m`` (``[B, N]``), all bottom-up. Per block the vector is
    ``v <- v (1 + m)``, then ``v <- v + (v M) a``; between Swin stages it is spread to the finer grid.
    """
    vector, above = weights, None
    blocks = zip(reversed(fused), reversed(attention_scales), reversed(mlp_scales), reversed(geometries), strict=True)
    for matrix, attention, mlp, geometry in blocks:
        if above is not None and above.grid_size != geometry.grid_size:
            vector = spread(vector, above.grid_size, geometry.grid_size)
        vector = vector * (1.0 + mlp)
        vector, above = vector + geometry.times(vector, matrix) * attention, geometry
    return vector


def discard_lowest(fused: Tensor, ratio: float, num_prefix_tokens: int) -> Tensor:
    """Zero the ``ratio`` share of smallest entries of each sample's fused attention (``[B, ...]``).

    Rows and columns of prefix tokens are never discarded (the readout runs through them); ties break by
    position (stable sort), so a sample's result does not depend on the rest of its batch.
    """
    if ratio <= 0.0:
        return fused
    flat = fused.flatten(1)
    protected = torch.zeros(fused.shape[1:], dtype=torch.bool, device=fused.device)
    if num_prefix_tokens:
        protected[..., :num_prefix_tokens, :] = True
        protected[..., :num_prefix_tokens] = True
    protected = protected.flatten()
    count = int((flat.shape[1] - int(protected.sum())) * ratio)
    if count == 0:
        return fused
    lowest = flat.masked_fill(protected, float("inf")).argsort(dim=1, stable=True)[:, :count]
    return flat.scatter(1, lowest, 0.0).view_as(fused)
