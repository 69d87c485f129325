"""Relevance map -> RGB: upsampling, colormaps, overlays on the model's own view of the image, colour strips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vitx.adapters.normalization import model_mean_std
from lightning_vitx.rendering.scale import UNSIGNED_CMAP, MapScale, per_map_scales, shared_scale

__all__ = [
    "colorize",
    "denormalize",
    "model_mean_std",
    "normalize_maps",
    "outline_masks",
    "overlay",
    "with_colour_bar",
]

MASK_COLOUR = (0.2, 1.0, 0.4)  # the ground-truth outline: a green that none of the heat colormaps uses


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``(x - mean) / std``: ``[B, 3, H, W]`` -> RGB in ``[0, 1]``."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images * std_t + mean_t).clamp(0.0, 1.0)


def normalize_maps(maps: Tensor) -> Tensor:
    """Each map stretched to its own ``[0, 1]`` (``per_map_scales``): a constant map becomes 0, NaN and inf 0.

    ``[B, h, w]`` -> ``[B, h, w]``.
    """
    scales = per_map_scales(maps, from_zero=False)
    return torch.stack([scale.apply(single) for scale, single in zip(scales, maps, strict=True)])


def colorize(maps01: Tensor, cmap: str = UNSIGNED_CMAP) -> Tensor:
    """``[B, H, W]`` in ``[0, 1]`` -> RGB ``[B, 3, H, W]`` through a matplotlib colormap."""
    import matplotlib

    lut = torch.as_tensor(matplotlib.colormaps[cmap](torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)
    index = (maps01.clamp(0, 1) * 255).round().long()
    return lut.to(maps01.device)[index].permute(0, 3, 1, 2)


def overlay(
    images: Tensor,
    maps: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    alpha: float | None = None,
    cmap: str | None = None,
    scale: MapScale | Sequence[MapScale] | None = None,
    signed: bool = False,
) -> Tensor:
    """Blend each map, upsampled bilinearly to the image size, over the image, on a stated colour scale.

    The heat's opacity grows with its strength (``alpha`` times the square root of the colour position, or of its
    distance from the middle for signed maps), so the image stays visible where there is little relevance. Signed
    maps (sparse, thin, on a blue-white-red scale) are drawn over a light grey copy of the image, fully opaque at
    the scale's ends: over the image's own colours their faint ends could not be told apart.

    Args:
        images: ``[B, 3, H, W]`` normalised as the model takes them.
        maps: ``[B, gh, gw]`` relevance at the patch grid.
        mean: per-channel mean the images were normalised with (see ``model_mean_std``).
        std: per-channel std.
        alpha: weight of the strongest heat (default 0.7, signed maps 1.0).
        cmap: a matplotlib colormap name; default ``inferno``, or ``RdBu_r`` for signed maps.
        scale: one ``MapScale`` for all maps, one per map, or None: one scale shared by the batch
            (``shared_scale(maps, signed)``), so the maps compare.
        signed: whether the maps have a sign (zero in the middle of a diverging colormap).

    Returns:
        RGB ``[B, 3, H, W]`` float in ``[0, 1]``.

    Example::

        >>> overlay(torch.zeros(2, 3, 32, 32), torch.rand(2, 4, 4), (0.5,) * 3, (0.5,) * 3).shape
        torch.Size([2, 3, 32, 32])
    """
    scales = scale if isinstance(scale, Sequence) else [scale or shared_scale(maps, signed)] * maps.shape[0]
    if len(scales) != maps.shape[0]:
        raise ValueError(f"expected one scale or {maps.shape[0]} scales, got {len(scales)}")
    upsampled = F.interpolate(maps[:, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    positions = torch.stack([s.apply(m) for s, m in zip(scales, upsampled[:, 0], strict=True)])
    heat = colorize(positions, cmap or scales[0].cmap)
    is_signed = scales[0].signed
    strength = (2 * positions - 1).abs() if is_signed else positions
    alpha = (1.0 if is_signed else 0.7) if alpha is None else alpha
    weight = alpha * strength.sqrt()[:, None]  # opacity only: the colour still encodes the value linearly
    base = denormalize(images.float(), mean, std)
    if is_signed:  # a light grey copy: luminance (ITU-R 601 weights), half-way to white
        luminance = torch.tensor([0.299, 0.587, 0.114], device=base.device)[None, :, None, None]
        base = (0.5 + 0.5 * (base * luminance).sum(dim=1, keepdim=True)).expand_as(base)
    return (1 - weight) * base + weight * heat


BAR_SHARE = 0.08  # the colour-bar strip's height, as a share of the picture's (at least 3 rows)


def with_colour_bar(rgb: Tensor, scale: MapScale) -> Tensor:
    """Each picture with its colour scale as a strip below it, so an image logged on its own says its colours.

    The strip runs through the colormap from the scale's low end (left) to its high end (right). ``[B, 3, H, W]`` ->
    ``[B, 3, H + strip, W]`` (a one-row white gap, then the strip); the range is the caption's to state
    (``describe(scale)``). A flat scale's strip is one colour: its zero's.

    Example::

        >>> with_colour_bar(torch.zeros(2, 3, 32, 32), MapScale(0.0, 1.0)).shape
        torch.Size([2, 3, 35, 32])
    """
    batch, _, height, width = rgb.shape
    rows = max(3, round(height * BAR_SHARE))
    positions = torch.linspace(0.0, 1.0, width, device=rgb.device)
    if scale.flat:
        positions = torch.full_like(positions, 0.5 if scale.signed else 0.0)
    strip = colorize(positions.expand(rows - 1, width)[None], scale.cmap)[0].to(rgb)  # [3, rows - 1, W]
    gap = torch.ones(3, 1, width, dtype=rgb.dtype, device=rgb.device)
    bar = torch.cat([gap, strip], dim=1).expand(batch, -1, -1, -1)
    return torch.cat([rgb, bar], dim=2)


def outline_masks(rgb: Tensor, masks: Tensor, colour: Sequence[float] = MASK_COLOUR) -> Tensor:
    """Draw the outline of each object mask on its picture: ``[B, 3, H, W]`` RGB in ``[0, 1]``, masks ``[B, H, W]``.

    A mask pixel is on the outline when one of its 8 neighbours is outside the mask (or outside the image).

    Example::

        >>> masks = torch.zeros(1, 6, 6, dtype=torch.bool)
        >>> masks[0, 1:5, 1:5] = True
        >>> drawn = outline_masks(torch.zeros(1, 3, 6, 6), masks)
        >>> int((drawn[0, 1] > 0).sum())  # the 4x4 square's 12 border pixels; its 2x2 inside stays as it was
        12
    """
    inside = masks.bool()[:, None].float()
    eroded = -F.max_pool2d(-F.pad(inside, (1, 1, 1, 1), value=0.0), kernel_size=3, stride=1)
    edge = (inside - eroded).clamp(0, 1)
    paint = torch.as_tensor(colour, dtype=rgb.dtype, device=rgb.device)[None, :, None, None]
    return rgb * (1 - edge) + paint * edge
