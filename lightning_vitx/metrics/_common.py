"""Input checks and patch geometry shared by the metrics."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vitx._registry import Registry

__all__ = ["METRICS", "MetricInfo", "PatchGeometry", "check_inputs", "expand_patches", "finite_maps"]


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of one registered metric."""

    name: str
    needs_masks: bool
    higher_is_better: bool
    description: str
    reference: str


METRICS: Registry[MetricInfo] = Registry("metric")


@dataclass(frozen=True)
class PatchGeometry:
    """How a ``[gh, gw]`` map tiles an ``[H, W]`` image."""

    grid: tuple[int, int]
    patch: tuple[int, int]
    image: tuple[int, int]


def _model_grid(model: nn.Module, images: Tensor) -> tuple[int, int] | None:
    from lightning_vitx.adapters import detect

    try:
        adapter = detect(model)
    except TypeError:
        return None  # any classifier works; the grid then comes from the maps
    return adapter.layout(images).grid_size


def check_inputs(model: nn.Module, images: Tensor, maps: Tensor, masks: Tensor | None = None) -> PatchGeometry:
    """Validate shapes; return the patch geometry. Maps must be at the model's patch grid."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [B, C, H, W], got {list(images.shape)}")
    if maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"expected maps of shape [{images.shape[0]}, gh, gw], got {list(maps.shape)}")
    height, width = images.shape[-2:]
    grid = (int(maps.shape[1]), int(maps.shape[2]))
    expected = _model_grid(model, images)
    if expected is not None and expected != grid:
        raise ValueError(
            f"maps have a {grid[0]}x{grid[1]} grid but the model's patch grid for {height}x{width} images is "
            f"{expected[0]}x{expected[1]}: pass the explainer's maps as they come, at the patch grid"
        )
    if expected is None and (height % grid[0] or width % grid[1]):
        raise ValueError(f"a {grid[0]}x{grid[1]} map does not tile {height}x{width} images evenly")
    if masks is not None:
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.shape != (images.shape[0], height, width):
            raise ValueError(
                f"expected masks of shape [{images.shape[0]}, {height}, {width}] (one per image, at image size), "
                f"got {list(masks.shape)}"
            )
    patch = (math.ceil(height / grid[0]), math.ceil(width / grid[1]))
    return PatchGeometry(grid=grid, patch=patch, image=(int(height), int(width)))


def as_masks(masks: Tensor) -> Tensor:
    """``[B, H, W]`` or ``[B, 1, H, W]``, bool or 0/1 -> bool ``[B, H, W]``."""
    if masks.ndim == 4:
        masks = masks[:, 0]
    return masks.bool() if masks.dtype == torch.bool else masks > 0.5


def expand_patches(patch_values: Tensor, geometry: PatchGeometry) -> Tensor:
    """``[B, gh, gw]`` -> ``[B, H, W]``: each patch's value over its pixels (nearest upsampling, cropped)."""
    ph, pw = geometry.patch
    pixels = patch_values.repeat_interleave(ph, dim=-2).repeat_interleave(pw, dim=-1)
    return pixels[..., : geometry.image[0], : geometry.image[1]]


def patch_fraction(masks: Tensor, geometry: PatchGeometry) -> Tensor:
    """Share of each patch's pixels inside the mask: ``[B, H, W]`` bool -> ``[B, gh, gw]``."""
    ph, pw = geometry.patch
    height, width = geometry.image
    padded = F.pad(masks.float()[:, None], (0, geometry.grid[1] * pw - width, 0, geometry.grid[0] * ph - height))
    return F.avg_pool2d(padded, kernel_size=(ph, pw))[:, 0]


def finite_maps(maps: Tensor, who: str) -> Tensor:
    """Boolean ``[B]``: maps without NaN or inf. Warns when some are not (those samples are skipped and counted)."""
    finite = torch.isfinite(maps).flatten(1).all(dim=1)
    bad = int((~finite).sum())
    if bad:
        warnings.warn(
            f"{who}: {bad} of {maps.shape[0]} maps contain NaN or inf; those samples are skipped", stacklevel=3
        )
    return finite


def resolve_metric_target(
    target: Tensor | int | None, logits_fn: Callable[[], Tensor], batch: int, device: torch.device
) -> Tensor:
    """``None`` -> the predicted class (one clean forward); an int -> for all; a tensor -> as ``LongTensor[B]``."""
    if target is None:
        return logits_fn().argmax(dim=1)
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    if target.shape != (batch,) or target.dtype.is_floating_point:
        raise ValueError(f"expected target as an int or LongTensor[{batch}], got {target.dtype} {list(target.shape)}")
    return target.to(device=device, dtype=torch.long)
