"""Pictures of patch interactions: a few patches' receptive fields over the image, and ERF size per block.

Both draw a ``lightning_vitx.analysis.patch_interactions`` result; the pass that makes it runs elsewhere. The
receptive fields are composed as a tensor (no matplotlib figure); the size curve is a matplotlib plot.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vitx.rendering._canvas import (
    BLACK,
    CELL,
    GAP,
    MARGIN,
    WHITE,
    Canvas,
    hex_colour,
    pixels,
    text_size,
    wrap,
)
from lightning_vitx.rendering.heatmap import denormalize
from lightning_vitx.rendering.picture import Picture

if TYPE_CHECKING:  # drawing takes an analysis' result; it runs no pass of its own
    from lightning_vitx.analysis import PatchInteractions as Interactions

__all__ = ["erf_figure", "erf_size_figure", "pick_queries", "star"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


QUERY_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
NO_INTERACTION = "no patch-to-patch interaction reaches the output from this block"
TITLE_POINTS, CAPTION_POINTS, MARK_POINTS = 8, 7, 7


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
) -> Picture:
    """One panel per image: a few patches (stars) and their effective receptive fields (the tinted patches).

    A patch's ERF at a block is the smallest set of patches that carries ``result.mass`` of its interaction (what
    it takes in from the others, by the indicator). Each shown patch has its own colour (its field tinted half
    way to it over a faded image, the patch outlined); the number beside its star is its ERF size in patches.
    ``pick_queries`` chooses the patches with the most interaction, spread out. A block where no patch interacts
    (the last block of a class-token model, whose patch outputs the head never reads) says so in the panel.
    Composed as a tensor with its words written by PIL: a :class:`~lightning_vitx.rendering.picture.Picture`.

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
        >>> picture = erf_figure(images, patch_interactions(model, images), (0.5,) * 3, (0.5,) * 3, layer=0)
        >>> sorted(picture.boxes)  # two panels
        ['image 0', 'image 1']
    """
    if images.shape[0] != result.target.shape[0]:
        raise ValueError(f"expected the {result.target.shape[0]} images analysed, got {images.shape[0]}")
    if not -result.num_layers <= layer < result.num_layers:
        raise ValueError(f"layer must lie in [{-result.num_layers}, {result.num_layers}), got {layer}")
    if not 1 <= queries <= len(QUERY_COLOURS):
        raise ValueError(f"queries must lie in [1, {len(QUERY_COLOURS)}], got {queries}")
    layer %= result.num_layers
    (gh, gw), count = result.grid_sizes[layer], images.shape[0]
    factor = max(1, round(CELL / max(images.shape[-2:])))
    height, width = images.shape[-2] * factor, images.shape[-1] * factor
    faded = 0.45 + 0.55 * denormalize(images.float(), mean, std).cpu()  # faded: the fields show
    faded = faded.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    tints = [torch.tensor(hex_colour(colour), dtype=torch.float32)[:, None, None] / 255 for colour in QUERY_COLOURS]

    full_width = 2 * MARGIN + count * width + (count - 1) * GAP
    title = (
        f"Effective receptive field (ERF) at block {layer + 1} of {result.num_layers}: for up to {queries} patches "
        f"(stars) per image, the patches that carry {result.mass:.0%} of what each takes in ({result.indicator} "
        "indicator); the number is the ERF's size in patches"
    )
    title_lines = wrap(title, TITLE_POINTS, full_width - 2 * MARGIN)
    line = text_size("Ag", CAPTION_POINTS)[1]
    caption_lines = [wrap(caption, CAPTION_POINTS, width)[:3] for caption in captions or []]
    top = MARGIN + len(title_lines) * text_size("Ag", TITLE_POINTS)[1] + GAP
    below = max((len(lines) for lines in caption_lines), default=0) * line
    canvas = Canvas(top + height + (GAP + below if below else 0) + MARGIN, full_width)

    shown_queries = []
    for index in range(count):
        shown = pick_queries(result.interactions[layer][index].cpu(), (gh, gw), queries)
        erf = result.erf[layer][index].cpu().reshape(-1, gh, gw)
        picture = faded[index]
        for tint, query in zip(tints, shown, strict=False):
            field = F.interpolate(erf[query][None, None].float(), size=(height, width), mode="nearest")[0] > 0
            picture = torch.where(field, 0.5 * tint + 0.5 * picture, picture)
        canvas.paste(picture, top, MARGIN + index * (width + GAP), name=f"image {index}")
        shown_queries.append(shown)
    canvas.begin_marks()
    canvas.text((full_width / 2, MARGIN), "\n".join(title_lines), TITLE_POINTS, anchor="ma")
    ph, pw = height / gh, width / gw
    for index, shown in enumerate(shown_queries):
        left = MARGIN + index * (width + GAP)
        sizes = result.erf_size[layer][index].cpu()
        for colour, query in zip(QUERY_COLOURS, shown, strict=False):
            row, column = divmod(query, gw)
            box = (top + round(row * ph), left + round(column * pw), round(ph), round(pw))
            canvas.rectangle(box, hex_colour(colour), width=pixels(2))
        for colour, query in zip(QUERY_COLOURS, shown, strict=False):
            row, column = divmod(query, gw)
            centre = (left + (column + 0.5) * pw, top + (row + 0.5) * ph)
            canvas.polygon(star(centre, pixels(5.5)), hex_colour(colour), outline=WHITE)
            label = (centre[0] + pixels(5), centre[1] - pixels(4))
            canvas.text(label, str(int(sizes[query])), MARK_POINTS, WHITE, anchor="ld", bold=True,
                        box=hex_colour(colour), pad=1)  # fmt: skip
        if not shown:
            centre = (left + width / 2, top + height / 2)
            message = "\n".join(textwrap.wrap(NO_INTERACTION, 24))
            canvas.text(centre, message, MARK_POINTS, WHITE, anchor="mm", box=BLACK, box_alpha=0.65)
        if caption_lines:
            canvas.text((left + width / 2, top + height + GAP), "\n".join(caption_lines[index]), CAPTION_POINTS,
                        anchor="ma")  # fmt: skip
    return canvas.picture()


def star(centre: tuple[float, float], radius: float) -> list[tuple[float, float]]:
    """A five-pointed star's ten corners around ``centre`` (``(x, y)``, pixels), its tips ``radius`` away."""
    x, y = centre
    corners = []
    for corner in range(10):
        angle = math.pi / 2 + corner * math.pi / 5
        distance = radius if corner % 2 == 0 else 0.4 * radius
        corners.append((x + distance * math.cos(angle), y - distance * math.sin(angle)))
    return corners


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
    # fixed margins (inches) for the fixed font sizes: tight_layout measured every text with one more draw
    figure.subplots_adjust(left=0.62 / 4.4, right=1 - 0.12 / 4.4, bottom=0.45 / 3.2, top=1 - 0.42 / 3.2)
    return figure
