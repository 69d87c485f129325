"""Colour scales for relevance maps: one documented range per explainer per pass, so rows and columns compare.

A :class:`MapScale` maps relevance values to ``[0, 1]`` colour positions. The default is one scale shared by all
maps of one explainer in one pass (``shared_scale``): the colour bar shows its range, and a map that is flat
(constant, or all zero) is drawn flat at its level instead of being stretched over the whole colormap. Signed maps
(LRP-family relevance) use a symmetric range, so zero is the middle of a diverging colormap, and a robust one: the
LRP rules do not conserve relevance (``lrp``'s per-image peaks vary 46-60x on a trained ViT), so the range is the
upper quartile of the maps' own high percentiles of ``|R|``; values beyond are clipped, and the colour bar says so
(arrows at both ends, the largest ``|R|`` in its label). ``per_map_scales``
scales every map to its own range, for those who want it (then maps no longer compare).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MapScale", "describe", "flat_maps", "map_states", "per_map_scales", "shared_scale", "signed_bound"]

UNSIGNED_CMAP = "inferno"  # perceptually ordered, dark where there is no relevance
SIGNED_CMAP = "RdBu_r"  # diverging: blue negative, white zero, red positive


@dataclass(frozen=True)
class MapScale:
    """Values ``low..high`` to colour positions ``0..1``; signed scales are symmetric (``low == -high``).

    Example::

        >>> scale = MapScale(-2.0, 2.0, signed=True)
        >>> scale.apply(torch.tensor([[[-2.0, 0.0, 2.0]]])).tolist()
        [[[0.0, 0.5, 1.0]]]
    """

    low: float
    high: float
    signed: bool = False
    clipped_from: float | None = None  # the largest |value| when values beyond low..high were clipped

    @property
    def flat(self) -> bool:
        """No spread: every map it covers is one constant value (all zero included)."""
        return not self.high > self.low

    @property
    def cmap(self) -> str:
        return SIGNED_CMAP if self.signed else UNSIGNED_CMAP

    def apply(self, maps: Tensor) -> Tensor:
        """``maps`` -> colour positions in ``[0, 1]``; NaN/inf go to the scale's zero (0, or 0.5 when signed).

        A flat scale draws every value at its zero position: nothing is stretched.
        """
        zero = 0.5 if self.signed else 0.0
        maps = maps.float()
        if self.flat:
            return torch.full_like(maps, zero)
        scaled = ((maps - self.low) / (self.high - self.low)).clamp(0.0, 1.0)
        return scaled.where(torch.isfinite(maps), torch.tensor(zero, device=maps.device))


def _finite_range(values: Tensor) -> tuple[float, float]:
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


SIGNED_PERCENTILE = 0.99  # of |R| within each map: a map's robust peak
SIGNED_QUANTILE_OF_PEAKS = 0.75  # of the maps' robust peaks: the shared signed bound


def signed_bound(maps: Tensor) -> float:
    """The robust symmetric bound of signed ``maps [B, h, w]``.

    The upper quartile over maps of each map's 99th percentile of ``|R|`` (finite values only; the largest ``|R|``
    when that is 0).
    """
    peaks = []
    for single in maps.float():
        values = single[torch.isfinite(single)].abs()
        if values.numel():
            peaks.append(torch.quantile(values, SIGNED_PERCENTILE, interpolation="higher"))
    if not peaks:
        return 0.0
    bound = float(torch.quantile(torch.stack(peaks), SIGNED_QUANTILE_OF_PEAKS))
    return bound if bound > 0 else max(abs(v) for v in _finite_range(maps))


def shared_scale(maps: Tensor, signed: bool = False, from_zero: bool = True) -> MapScale:
    """One scale for all of ``maps [B, h, w]``: ``0..max``, or, signed, ``-b..b``.

    Unsigned, the range starts at 0 (at the finite min if that is below 0; ``from_zero=False``: always at the min).
    Starting at 0, a map's colour says how much relevance it holds, not how it compares with the least relevant
    patch: a rollout spanning .0143-.0146 is drawn nearly flat, not stretched over the whole colormap. Maps that
    are all one value keep a flat scale (drawn at its zero colour). ``b`` is the robust bound of
    :func:`signed_bound`; values beyond are clipped, ``clipped_from`` keeps the largest ``|value|``.

    Example::

        >>> maps = torch.tensor([1.0, -2.0, 3.0, 4.0, -240.0])[:, None, None] * torch.ones(5, 2, 2)
        >>> scale = shared_scale(maps, signed=True)  # one map 60x the others does not blank them
        >>> scale.high, scale.clipped_from
        (4.0, 240.0)
    """
    low, high = _finite_range(maps)
    if signed:
        largest = max(abs(low), abs(high))
        bound = signed_bound(maps)
        return MapScale(-bound, bound, signed=True, clipped_from=largest if largest > bound else None)
    if from_zero and high > low:
        low = min(low, 0.0)
    return MapScale(low, high)


def per_map_scales(maps: Tensor, signed: bool = False, from_zero: bool = True) -> list[MapScale]:
    """One scale per map: each to its own range (maps then no longer compare)."""
    return [shared_scale(single[None], signed, from_zero) for single in maps]


def describe(scale: MapScale) -> str:
    """The scale in words, for a caption: ``"scale 0..0.0146"``, ``"scale ±3.2 (clipped at ±3.2, max 40)"``.

    Example::

        >>> describe(MapScale(0.0, 0.0146))
        'scale 0..0.0146'
    """
    if scale.signed:
        text = f"scale ±{scale.high:.3g}"
        return text + (f" (clipped, max |R| {scale.clipped_from:.3g})" if scale.clipped_from is not None else "")
    if scale.flat:
        return f"flat scale at {scale.low:.3g}"
    return f"scale {scale.low:.3g}..{scale.high:.3g}"


def map_states(maps: Tensor) -> list[str]:
    """Per map of ``[B, h, w]``: ``"NaN"`` (any non-finite value), ``"all zero"``, ``"flat"`` or ``""``.

    Example::

        >>> map_states(torch.stack([torch.zeros(2, 2), torch.ones(2, 2), torch.eye(2)]))
        ['all zero', 'flat', '']
    """
    constant, zero = flat_maps(maps)
    nonfinite = ~torch.isfinite(maps.float()).flatten(1).all(dim=1)
    states = []
    for bad, is_zero, is_flat in zip(nonfinite.tolist(), zero.tolist(), constant.tolist(), strict=True):
        states.append("NaN" if bad else "all zero" if is_zero else "flat" if is_flat else "")
    return states


def flat_maps(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Bool ``[B]`` pairs: maps that are constant over their finite values, and those that are all zero."""
    flat = maps.flatten(1).float()
    finite = torch.isfinite(flat)
    low = flat.where(finite, torch.inf).amin(dim=1)
    high = flat.where(finite, -torch.inf).amax(dim=1)
    constant = (high <= low) | ~finite.any(dim=1)
    zero = constant & ((low == 0) | ~finite.any(dim=1))
    return constant, zero
