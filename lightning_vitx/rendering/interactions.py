"""Pictures of patch interactions: a few patches' receptive fields over the image, and ERF size per block.

Both draw a ``lightning_vitx.analysis.patch_interactions`` result; the pass that makes it runs elsewhere.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from lightning_vitx.rendering.heatmap import denormalize

if TYPE_CHECKING:  # drawing takes an analysis' result; it runs no pass of its own
    from lightning_vitx.analysis import PatchInteractions as Interactions

__all__ = ["erf_figure", "erf_size_figure", "pick_queries"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


QUERY_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
NO_INTERACTION = "no patch-to-patch interaction reaches the output from this block"


def pick_queries(interactions: Tensor, grid_size: tuple[int, int], count: int) -> list[int]:
    """Up to ``count`` query patches to show: the largest interaction mass first, each two patches from the others.

    ``interactions``: one image's ``[P, P]`` (row = query). Patches with no mass are never picked.

    Example::

        >>> import torch
        >>> mass = torch.zeros(16, 16)
        >>> mass[5, 0], mass[6, 0], mass[15, 0] = 3.0, 2.0, 1.0  # patches 5 and 6 are neighbours on a 4x4 grid
        >>> pick_queries(mass, (4, 4), 3)
        [5, 15]
    """
    totals = interactions.float().clamp(min=0).sum(dim=-1)
    width = grid_size[1]
    picked: list[int] = []
    for index in totals.argsort(descending=True, stable=True).tolist():
        if len(picked) == count or totals[index] <= 0:
            break
        row, column = divmod(index, width)
        if all(max(abs(row - r), abs(column - c)) >= 2 for r, c in (divmod(p, width) for p in picked)):
            picked.append(index)
    return picked


def erf_figure(
    images: Tensor,
    result: Interactions,
    mean: Sequence[float],
    std: Sequence[float],
    layer: int = -1,
    captions: Sequence[str] | None = None,
    queries: int = 3,
) -> Any:
    """One panel per image: a few patches (stars) and their effective receptive fields (the tinted patches).

    A patch's ERF at a block is the smallest set of patches that carries ``result.mass`` of its interaction (what
    it takes in from the others, by the indicator). Each shown patch has its own colour; the number beside its
    star is its ERF size in patches. ``pick_queries`` chooses the patches with the most interaction, spread out. A
    block where no patch interacts (the last block of a class-token model, whose patch outputs the head never
    reads) says so in the panel.

    Args:
        images: ``[B, 3, H, W]`` normalised as the model takes them.
        result: ``patch_interactions`` of these images.
        mean: per-channel mean the images were normalised with.
        std: per-channel std.
        layer: which block's receptive fields to draw (negative counts from the last).
        captions: one line under each panel.
        queries: how many patches per image to show (at most six).

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.analysis import patch_interactions
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=2, img_size=64)
        >>> images = torch.randn(2, 3, 64, 64)
        >>> figure = erf_figure(images, patch_interactions(model, images), (0.5,) * 3, (0.5,) * 3, layer=0)
        >>> len(figure.axes)  # two panels
        2
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    if images.shape[0] != result.target.shape[0]:
        raise ValueError(f"expected the {result.target.shape[0]} images analysed, got {images.shape[0]}")
    if not -result.num_layers <= layer < result.num_layers:
        raise ValueError(f"layer must lie in [{-result.num_layers}, {result.num_layers}), got {layer}")
    if not 1 <= queries <= len(QUERY_COLOURS):
        raise ValueError(f"queries must lie in [1, {len(QUERY_COLOURS)}], got {queries}")
    layer %= result.num_layers
    (gh, gw), (height, width) = result.grid_sizes[layer], images.shape[-2:]
    ph, pw = height / gh, width / gw
    pictures = denormalize(images.float(), mean, std).permute(0, 2, 3, 1).cpu().numpy()
    count = images.shape[0]
    figure, axes = plt.subplots(1, count, figsize=(2.4 * count + 0.6, 3.4), squeeze=False)
    for index, axis in enumerate(axes[0]):
        axis.imshow(0.45 + 0.55 * pictures[index], extent=(0, width, height, 0))  # faded: the fields show
        interactions = result.interactions[layer][index].cpu()
        shown = pick_queries(interactions, (gh, gw), queries)
        erf, sizes = result.erf[layer][index].cpu(), result.erf_size[layer][index].cpu()
        for colour, query in zip(QUERY_COLOURS, shown, strict=False):
            for key in erf[query].nonzero()[:, 0].tolist():
                row, column = divmod(key, gw)
                axis.add_patch(Rectangle((column * pw, row * ph), pw, ph, color=colour, alpha=0.5, linewidth=0))
            row, column = divmod(query, gw)
            axis.add_patch(Rectangle((column * pw, row * ph), pw, ph, fill=False, edgecolor=colour, linewidth=2))
            centre = ((column + 0.5) * pw, (row + 0.5) * ph)
            axis.plot(*centre, marker="*", markersize=11, color=colour, markeredgecolor="white", markeredgewidth=0.8)
            axis.annotate(
                str(int(sizes[query])), centre, xytext=(5, 4), textcoords="offset points", fontsize=7,
                color="white", fontweight="bold", bbox={"facecolor": colour, "pad": 1.0, "linewidth": 0},
            )  # fmt: skip
        if not shown:
            box = {"facecolor": "black", "alpha": 0.65, "pad": 2.0, "linewidth": 0}
            axis.text(0.5, 0.5, textwrap.fill(NO_INTERACTION, 24), transform=axis.transAxes, ha="center",
                      va="center", fontsize=7, color="white", bbox=box)  # fmt: skip
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_xticks([])
        axis.set_yticks([])
        if captions is not None:
            axis.set_xlabel(textwrap.fill(captions[index], 30), fontsize=7)
    title = (
        f"Effective receptive field (ERF) at block {layer + 1} of {result.num_layers}: for up to {queries} patches "
        f"(stars) per image, the patches that carry {result.mass:.0%} of what each takes in ({result.indicator} "
        "indicator); the number is the ERF's size in patches"
    )
    figure.suptitle(textwrap.fill(title, max(60, int(14 * figure.get_figwidth()))), fontsize=8)
    figure.tight_layout()
    return figure


def erf_size_figure(result: Interactions, captions: Sequence[str] | None = None) -> Any:
    """Mean ERF size per block (in first-grid patches): one thin line per image and their mean in black.

    Blocks are numbered from 1. A block whose mean size is 0 is labelled: no patch's interaction there reaches the
    output (the last block of a class-token model).

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.analysis import patch_interactions
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=3, img_size=64)
        >>> figure = erf_size_figure(patch_interactions(model, torch.randn(2, 3, 64, 64)))
        >>> len(figure.axes[0].lines)  # two images and the mean
        3
    """
    plt = _pyplot()
    sizes = result.mean_erf_size().cpu()
    blocks = list(range(1, result.num_layers + 1))
    figure, axis = plt.subplots(figsize=(4.4, 3.2))
    for index, row in enumerate(sizes):
        label = textwrap.shorten(captions[index], 28) if captions is not None else None
        axis.plot(blocks, row.numpy(), alpha=0.4, linewidth=1.0, label=label)
    means = sizes.mean(dim=0)
    axis.plot(blocks, means.numpy(), color="black", linewidth=2.0, label="mean")
    for block, value in zip(blocks, means.tolist(), strict=True):
        if value == 0:
            axis.annotate(
                textwrap.fill("0: " + NO_INTERACTION, 24), (block, 0.0), xytext=(-50, 8), textcoords="offset points",
                ha="right", va="bottom", fontsize=6, arrowprops={"arrowstyle": "-", "linewidth": 0.6},
                bbox={"facecolor": "white", "alpha": 0.85, "pad": 1.0, "linewidth": 0},
            )  # fmt: skip
    axis.set_xlabel("block")
    axis.set_ylabel("mean ERF size (patches of the first grid)", fontsize=8)
    axis.set_xticks(blocks)
    axis.set_ylim(bottom=0)
    title = f"How far each patch looks, per block: mean ERF size ({result.mass:.0%} of the {result.indicator} mass)"
    axis.set_title(textwrap.fill(title, 52), fontsize=8)
    axis.legend(fontsize=6, loc="best")
    figure.tight_layout()
    return figure
