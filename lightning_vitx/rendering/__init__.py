"""Rendering relevance maps: overlays on the model's own view of the image, and panels."""

from lightning_vitx.rendering.heatmap import (
    colorize,
    denormalize,
    model_mean_std,
    normalize_maps,
    overlay,
    panel_figure,
)

__all__ = ["colorize", "denormalize", "model_mean_std", "normalize_maps", "overlay", "panel_figure"]
