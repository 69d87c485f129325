"""The corner artifact: how much of a map's relevance sits in the image corners, and how peaked attention is there.

Nguyen, Lee & Kim 2023 (arXiv 2311.11378) report that Chefer-style attention aggregation on Swin lights up the image
corners. :func:`corner_share` measures it on any maps, against what a uniform map (:func:`corner_region`'s area)
and the object mask (:func:`object_share`) would put there; :func:`attention_sharpness` reads the attention rows
themselves, to test the shifted-window hypothesis of docs/methods.md §7 (the cyclic shift leaves the wrapped corner
windows' queries few keys, so their rows are peaked). ``benchmarks/corners.py`` runs them on the trained fixtures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vitx.adapters import Capture

__all__ = ["attention_sharpness", "corner_region", "corner_share", "object_share"]


def corner_region(
    grid_size: tuple[int, int], fraction: float = 0.2, device: torch.device | str | None = None
) -> Tensor:
    """``[gh, gw]`` bool: the four corner squares, each ``round(fraction * side)`` cells (at least 1) a side.

    Example::

        >>> corner_region((5, 5), fraction=0.2).int()
        tensor([[1, 0, 0, 0, 1],
                [0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0],
                [1, 0, 0, 0, 1]], dtype=torch.int32)
    """
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"fraction must lie in (0, 0.5], got {fraction}")
    rows, cols = (max(1, round(fraction * side)) for side in grid_size)
    region = torch.zeros(grid_size, dtype=torch.bool, device=device)
    for r in (slice(0, rows), slice(grid_size[0] - rows, grid_size[0])):
        for c in (slice(0, cols), slice(grid_size[1] - cols, grid_size[1])):
            region[r, c] = True
    return region


def _shares(maps: Tensor, regions: Tensor) -> Tensor:
    mass = maps.clamp(min=0).flatten(1)
    total = mass.sum(dim=1)
    inside = (mass * regions.flatten(1).to(mass.dtype)).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(mass.dtype).tiny), torch.nan)


def corner_share(maps: Tensor, fraction: float = 0.2) -> Tensor:
    """``[B]``: the share of each map's positive relevance inside :func:`corner_region` (NaN for an all-zero map).

    A uniform map gives the region's area share, ``corner_region(grid, fraction).float().mean()``.

    Example::

        >>> maps = torch.zeros(1, 5, 5)
        >>> maps[0, 0, 0], maps[0, 2, 2] = 3.0, 1.0
        >>> corner_share(maps)
        tensor([0.7500])
    """
    return _shares(
        maps.float(), corner_region((int(maps.shape[-2]), int(maps.shape[-1])), fraction, maps.device).expand_as(maps)
    )


def object_share(maps: Tensor, masks: Tensor) -> Tensor:
    """``[B]``: the share of each map's positive relevance on the object, with ``masks [B, H, W]`` at image size.

    The masks are brought to the map's grid as the fraction of each cell the object covers (area pooling), so a
    map equal to the object mask scores its own mass on the object. Together with :func:`corner_share` applied
    to those pooled masks, it says how much corner relevance the object alone would explain.
    """
    pooled = object_fraction(masks, (int(maps.shape[-2]), int(maps.shape[-1])))
    return _shares(maps.float(), pooled)


def object_fraction(masks: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """``[B, gh, gw]``: the share of each grid cell the mask covers (area pooling of ``masks [B, H, W]``)."""
    return F.adaptive_avg_pool2d(masks.float()[:, None], grid_size)[:, 0]


def attention_sharpness(record: Capture) -> list[Tensor]:
    """Per block, ``[B, N_block]``: each query token's attention peakedness, ``sum_j a_j^2`` (mean over heads).

    ``1 / sharpness`` is the effective number of keys a query reads. Tokens are in the block's own grid (row-major),
    so a map of it shows where, e.g., the shifted-window mask leaves queries few keys.
    """
    out = []
    for attention, geometry in zip(record.attentions, record.geometries, strict=True):
        squared = attention.square().sum(dim=-1).mean(dim=1)  # [B, N] dense or [B, windows, w]
        out.append(geometry.from_windows(squared) if hasattr(geometry, "from_windows") else squared)
    return out
