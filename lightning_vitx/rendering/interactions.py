"""Pictures of patch interactions: receptive-field arrows over the image, and ERF size per block as a curve.

Both draw a ``lightning_vitx.analysis.patch_interactions`` result; the pass that makes it runs elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_vitx.rendering.heatmap import denormalize

if TYPE_CHECKING:  # drawing takes an analysis' result; it runs no pass of its own
    from lightning_vitx.analysis import PatchInteractions as Interactions

__all__ = ["erf_figure", "erf_size_figure"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def erf_figure(
    images: Tensor,
    result: Interactions,
    mean: Sequence[float],
    std: Sequence[float],
    layer: int = -1,
    captions: Sequence[str] | None = None,
) -> Any:
    """One panel per image: an arrow from each patch's centre along its tendency, coloured by its ERF size.

    Arrows are drawn in pixels (a tendency of one patch row is one patch height). The colour scale runs from 0 to
    the block's patch count, the same for every panel, so sizes compare across images and epochs.

    Args:
        images: ``[B, 3, H, W]`` normalised as the model takes them.
        result: ``patch_interactions`` of these images.
        mean: per-channel mean the images were normalised with.
        std: per-channel std.
        layer: which block's receptive fields to draw (negative counts from the last).
        captions: one line under each panel.

    Example::

        >>> import timm
        >>> from lightning_vitx.analysis import patch_interactions
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=2, img_size=64)
        >>> images = torch.randn(2, 3, 64, 64)
        >>> figure = erf_figure(images, patch_interactions(model, images), (0.5,) * 3, (0.5,) * 3, layer=0)
        >>> len(figure.axes)  # two panels and a colour bar
        3
    """
    plt = _pyplot()
    from matplotlib.colors import Normalize

    if images.shape[0] != result.target.shape[0]:
        raise ValueError(f"expected the {result.target.shape[0]} images analysed, got {images.shape[0]}")
    if not -result.num_layers <= layer < result.num_layers:
        raise ValueError(f"layer must lie in [{-result.num_layers}, {result.num_layers}), got {layer}")
    layer %= result.num_layers
    (gh, gw), (height, width) = result.grid_sizes[layer], images.shape[-2:]
    ph, pw = height / gh, width / gw
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    x, y = ((cols.flatten() + 0.5) * pw).numpy(), ((rows.flatten() + 0.5) * ph).numpy()
    pictures = denormalize(images.float(), mean, std).permute(0, 2, 3, 1).cpu().numpy()
    norm = Normalize(0.0, float(gh * gw))
    count = images.shape[0]
    figure, axes = plt.subplots(1, count, figsize=(2.6 * count, 3.0), squeeze=False)
    arrows = None
    for index, axis in enumerate(axes[0]):
        tendency = result.tendency[layer][index].cpu()
        size = result.erf_size[layer][index].float().cpu().numpy()
        axis.imshow(pictures[index])
        arrows = axis.quiver(
            x, y, (tendency[:, 1] * pw).numpy(), (tendency[:, 0] * ph).numpy(), size,
            cmap="viridis", norm=norm, angles="xy", scale_units="xy", scale=1.0, width=0.006,
        )  # fmt: skip
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_xticks([])
        axis.set_yticks([])
        if captions is not None:
            axis.set_xlabel(captions[index], fontsize=8)
    bar = figure.colorbar(arrows, ax=list(axes[0]), fraction=0.03, pad=0.02)
    bar.set_label("ERF size (patches)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    figure.suptitle(f"block {layer}: tendency (arrows), ERF size (colour); {result.indicator}", fontsize=8)
    return figure


def erf_size_figure(result: Interactions, captions: Sequence[str] | None = None) -> Any:
    """Mean ERF size per block (in first-grid patches): one thin line per image and their mean in black.

    Example::

        >>> import timm
        >>> from lightning_vitx.analysis import patch_interactions
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=3, img_size=64)
        >>> figure = erf_size_figure(patch_interactions(model, torch.randn(2, 3, 64, 64)))
        >>> len(figure.axes[0].lines)  # two images and the mean
        3
    """
    plt = _pyplot()
    sizes = result.mean_erf_size().cpu()
    blocks = list(range(result.num_layers))
    figure, axis = plt.subplots(figsize=(4.0, 3.0))
    for index, row in enumerate(sizes):
        label = captions[index] if captions is not None else None
        axis.plot(blocks, row.numpy(), alpha=0.4, linewidth=1.0, label=label)
    axis.plot(blocks, sizes.mean(dim=0).numpy(), color="black", linewidth=2.0, label="mean")
    axis.set_xlabel("block")
    axis.set_ylabel("mean ERF size (patches)")
    axis.set_xticks(blocks)
    axis.set_title(f"ERF size per block ({result.indicator}, {result.mass:.0%} of the mass)", fontsize=8)
    axis.legend(fontsize=6)
    figure.tight_layout()
    return figure
