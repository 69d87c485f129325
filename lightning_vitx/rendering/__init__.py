"""Rendering relevance maps: colour scales, overlays on the model's own view of the image, and panels."""

from lightning_vitx.rendering.curves import curve_auc, curves_figure
from lightning_vitx.rendering.heatmap import (
    colorize,
    denormalize,
    model_mean_std,
    normalize_maps,
    outline_masks,
    overlay,
    with_colour_bar,
)
from lightning_vitx.rendering.interactions import erf_figure, erf_size_figure
from lightning_vitx.rendering.panel import panel_figure
from lightning_vitx.rendering.picture import Picture, rasterize
from lightning_vitx.rendering.scale import MapScale, describe, flat_maps, map_states, per_map_scales, shared_scale

__all__ = [
    "MapScale",
    "Picture",
    "colorize",
    "curve_auc",
    "curves_figure",
    "describe",
    "denormalize",
    "erf_figure",
    "erf_size_figure",
    "flat_maps",
    "map_states",
    "model_mean_std",
    "normalize_maps",
    "outline_masks",
    "overlay",
    "panel_figure",
    "per_map_scales",
    "rasterize",
    "shared_scale",
    "with_colour_bar",
]
