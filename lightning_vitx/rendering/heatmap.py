"""Relevance map -> RGB: upsampling, colormaps, overlays on the model's own view of the image, panels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["colorize", "denormalize", "model_mean_std", "normalize_maps", "overlay", "panel_figure"]


def model_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation the model was trained with, from timm's ``pretrained_cfg`` (ImageNet stats if absent)."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    return tuple(config["mean"]), tuple(config["std"])


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``(x - mean) / std``: ``[B, 3, H, W]`` -> RGB in ``[0, 1]``."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images * std_t + mean_t).clamp(0.0, 1.0)


def normalize_maps(maps: Tensor) -> Tensor:
    """Per-map min-max to ``[0, 1]`` over the finite values (a constant map becomes 0, NaN and inf become 0).

    ``[B, h, w]`` -> ``[B, h, w]``.
    """
    flat = maps.flatten(1).float()
    finite = torch.isfinite(flat)
    low = flat.where(finite, torch.inf).amin(dim=1, keepdim=True)
    high = flat.where(finite, -torch.inf).amax(dim=1, keepdim=True)
    low, span = low.where(finite.any(dim=1, keepdim=True), 0.0), (high - low).nan_to_num(0.0, 0.0, 0.0)
    scaled = (flat - low) / span.where(span > 0, torch.ones_like(span))
    return scaled.where(finite, 0.0).view_as(maps)


def colorize(maps01: Tensor, cmap: str = "jet") -> Tensor:
    """``[B, H, W]`` in ``[0, 1]`` -> RGB ``[B, 3, H, W]`` through a matplotlib colormap."""
    import matplotlib

    lut = torch.as_tensor(matplotlib.colormaps[cmap](torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)
    index = (maps01.clamp(0, 1) * 255).round().long()
    return lut.to(maps01.device)[index].permute(0, 3, 1, 2)


def overlay(
    images: Tensor, maps: Tensor, mean: Sequence[float], std: Sequence[float], alpha: float = 0.5, cmap: str = "jet"
) -> Tensor:
    """Blend each map, upsampled bilinearly to the image size and min-max scaled, over the image.

    Args:
        images: ``[B, 3, H, W]`` normalised as the model takes them.
        maps: ``[B, gh, gw]`` relevance at the patch grid.
        mean: per-channel mean the images were normalised with (see ``model_mean_std``).
        std: per-channel std.
        alpha: weight of the heatmap.
        cmap: a matplotlib colormap name.

    Returns:
        RGB ``[B, 3, H, W]`` float in ``[0, 1]``.

    Example::

        >>> overlay(torch.zeros(2, 3, 32, 32), torch.rand(2, 4, 4), (0.5,) * 3, (0.5,) * 3).shape
        torch.Size([2, 3, 32, 32])
    """
    upsampled = F.interpolate(maps[:, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    heat = colorize(normalize_maps(upsampled[:, 0]), cmap)
    return (1 - alpha) * denormalize(images.float(), mean, std) + alpha * heat


def panel_figure(
    images: Tensor,
    maps: Mapping[str, Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    captions: Sequence[str] | None = None,
    cmap: str = "jet",
) -> Any:
    """A matplotlib figure: one row per sample, the image then one overlay per explainer, titled."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows, columns = images.shape[0], 1 + len(maps)
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.0 * rows), squeeze=False)
    overlays = [overlay(images, explanation, mean, std, cmap=cmap) for explanation in maps.values()]
    pictures = [denormalize(images.float(), mean, std), *overlays]
    titles = ["image", *maps]
    for row in range(rows):
        for column in range(columns):
            axis = axes[row][column]
            axis.imshow(pictures[column][row].permute(1, 2, 0).cpu().numpy())
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=9)
        if captions is not None:
            axes[row][0].set_ylabel(captions[row], fontsize=8)
    figure.tight_layout()
    return figure
