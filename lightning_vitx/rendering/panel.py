"""The composite panel: one row per sample, the image then one overlay per explainer, a colour bar per column.

Composed as one tensor (the cells enlarged by a whole factor, nearest neighbour, so patches stay sharp; the colour
strips from the colormap) with its words written by PIL: no matplotlib figure, one PNG encode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_vitx.rendering._canvas import BLACK, CELL, GAP, MARGIN, WHITE, Canvas, text_size, to_uint8, wrap
from lightning_vitx.rendering.heatmap import colorize, denormalize, outline_masks, overlay
from lightning_vitx.rendering.picture import Picture
from lightning_vitx.rendering.scale import MapScale, map_states, per_map_scales, shared_scale

__all__ = ["panel_figure", "tick_values"]

TITLE_POINTS, CAPTION_POINTS, MARK_POINTS, BAR_POINTS = 9, 8, 7, 7
BAR_SHARE, BAR_ROWS, ARROW = 0.8, 10, 8  # the bar's share of the column width; its height; an end arrow's length


def panel_figure(
    images: Tensor,
    maps: Mapping[str, Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    captions: Sequence[str] | None = None,
    signed: Mapping[str, bool] | None = None,
    per_map: bool = False,
    title: str | None = None,
    masks: Tensor | None = None,
) -> Picture:
    """The panel as a :class:`~lightning_vitx.rendering.picture.Picture` (``.savefig(path)`` writes the PNG).

    One row per sample: the image, then one overlay per explainer (``maps``: ``{name: [B, gh, gw]}``). Each
    explainer column has one colour scale for all its rows (``shared_scale``), shown by a colour bar under the
    column (arrows at its ends when values beyond it were clipped); ``per_map=True`` scales each map to its own
    range instead (the bar then reads that range, 0..1, or -1..1 signed). Flat maps (constant, or all zero) are
    drawn flat and marked in their cell ("flat <value>", "all zero", "NaN"). ``signed`` names the explainers whose
    maps have a sign (diverging colormap centred at zero). ``masks`` (``[B, H, W]``, the ground-truth objects) are
    outlined in every cell of their row. ``captions`` label the rows, ``title`` tops the panel.

    Example::

        >>> panel = panel_figure(torch.zeros(2, 3, 16, 16), {"a": torch.rand(2, 2, 2)}, (0.5,) * 3, (0.5,) * 3)
        >>> panel.boxes["cell 1 1"][2:]  # row 1, column 1 (the first explainer): 16 px enlarged 12 times
        (192, 192)
    """
    signed = signed or {}
    pictures = [denormalize(images.float(), mean, std).cpu()]
    scales: list[MapScale | list[MapScale]] = []
    for name, explanation in maps.items():
        is_signed = bool(signed.get(name, False))
        scale = per_map_scales(explanation, is_signed) if per_map else shared_scale(explanation, is_signed)
        pictures.append(overlay(images, explanation, mean, std, scale=scale, signed=is_signed).cpu())
        scales.append(scale)
    if masks is not None:
        pictures = [outline_masks(picture, masks.cpu()) for picture in pictures]
    factor = max(1, round(CELL / max(images.shape[-2:])))
    height, width = images.shape[-2] * factor, images.shape[-1] * factor
    rows, columns = images.shape[0], len(pictures)

    line = text_size("Ag", TITLE_POINTS)[1]
    caption_lines = [wrap(caption, CAPTION_POINTS, height)[:3] for caption in captions or []]
    caption_width = max((len(lines) for lines in caption_lines), default=0) * text_size("Ag", CAPTION_POINTS)[1]
    left = MARGIN + (caption_width + 4 if caption_lines else 0)
    full_width = left + columns * width + (columns - 1) * GAP + MARGIN
    title_lines = wrap(title, TITLE_POINTS, full_width - 2 * MARGIN) if title else []
    top = MARGIN + len(title_lines) * line + (4 if title_lines else 0) + line + 4
    grid_bottom = top + rows * height + (rows - 1) * GAP
    bar_line = text_size("Ag", BAR_POINTS)[1]
    bar_top = grid_bottom + GAP
    full_height = bar_top + (BAR_ROWS + 3 + 3 * bar_line + MARGIN if maps else MARGIN - GAP)

    canvas = Canvas(full_height, full_width)
    x = [left + column * (width + GAP) for column in range(columns)]
    y = [top + row * (height + GAP) for row in range(rows)]
    for column, picture in enumerate(pictures):
        enlarged = to_uint8(picture).repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
        for row in range(rows):
            canvas.paste(enlarged[row], y[row], x[column], name=f"cell {row} {column}")
    bar_width = max(8, round(width * BAR_SHARE))
    bar_left = [x[column] + (width - bar_width) // 2 for column in range(columns)]
    for column, scale in enumerate(scales, start=1):
        canvas.paste(_strip(scale, bar_width), bar_top, bar_left[column], name=f"bar {column}")
    canvas.begin_marks()

    if title_lines:
        canvas.text((full_width / 2, MARGIN), "\n".join(title_lines), TITLE_POINTS, anchor="ma")
    for column, name in enumerate(["image", *maps]):
        canvas.text((x[column] + width / 2, top - 3), name, TITLE_POINTS, anchor="md")
    for row, lines in enumerate(caption_lines):
        canvas.text((MARGIN + caption_width / 2, y[row] + height / 2), "\n".join(lines), CAPTION_POINTS, rotate=True)
    for column, (explanation, scale) in enumerate(zip(maps.values(), scales, strict=True), start=1):
        for row, (state, single) in enumerate(zip(map_states(explanation), explanation, strict=True)):
            if state:
                mark = f"flat {float(single.flatten()[0]):.3g}" if state == "flat" else state
                canvas.text((x[column] + 5, y[row] + 5), mark, MARK_POINTS, WHITE, box=BLACK, box_alpha=0.6)
        _colour_bar(canvas, scale, bar_top, bar_left[column], bar_width, width)
    return canvas.picture()


def _range(scale: MapScale | list[MapScale]) -> tuple[float, float]:
    """The values a bar spans: the scale's, or each map's own (0..1, or -1..1 signed) for per-map scales."""
    if isinstance(scale, list):
        return (-1.0, 1.0) if scale[0].signed else (0.0, 1.0)
    return scale.low, scale.high


def _strip(scale: MapScale | list[MapScale], width: int) -> Tensor:
    """The bar's colours, low end left, ``[3, BAR_ROWS, width]``; a flat scale's is its zero's colour throughout."""
    reference = scale[0] if isinstance(scale, list) else scale
    positions = torch.linspace(0.0, 1.0, width)
    if not isinstance(scale, list) and scale.flat:
        positions = torch.full_like(positions, 0.5 if scale.signed else 0.0)
    return colorize(positions.expand(BAR_ROWS, width)[None], reference.cmap)[0]


def _colour_bar(canvas: Canvas, scale: MapScale | list[MapScale], top: int, left: int, width: int, column: int) -> None:
    """Ticks, their labels, end arrows (values clipped) and a label under a column's strip."""
    reference = scale[0] if isinstance(scale, list) else scale
    low, high = _range(scale)
    per_map, flat = isinstance(scale, list), not isinstance(scale, list) and reference.flat
    clipped = not per_map and reference.clipped_from is not None
    if clipped:  # arrows at both ends, in the end colours, as matplotlib's extend="both"
        ends = (colorize(torch.tensor([[[0.0, 1.0]]]), reference.cmap)[0, :, 0] * 255).round().int().T.tolist()
        middle, right = top + BAR_ROWS / 2, left + width - 1
        canvas.polygon([(left - 1, top), (left - 1, top + BAR_ROWS - 1), (left - ARROW, middle)], tuple(ends[0]))
        canvas.polygon([(right + 1, top), (right + 1, top + BAR_ROWS - 1), (right + ARROW, middle)], tuple(ends[1]))
    if flat:  # one tick, mid-bar: the value every map has
        ticks = [(low, left + width / 2)]
    else:
        ticks = [(v, left + (v - low) / (high - low) * (width - 1)) for v in tick_values(low, high, reference.signed)]
    for value, position in ticks:
        canvas.draw.line((position, top + BAR_ROWS, position, top + BAR_ROWS + 2), fill=BLACK)
        canvas.text((position, top + BAR_ROWS + 3), short_number(value), BAR_POINTS, anchor="ma")
    label = "each map's own range" if per_map else f"flat: every map {reference.low:.3g}" if flat else ""
    if clipped:
        label = f"clipped at ±{reference.high:.3g} (largest |R| {reference.clipped_from:.3g})"
    if label:
        lines = wrap(label, BAR_POINTS, column)
        below = top + BAR_ROWS + 3 + text_size("Ag", BAR_POINTS)[1] + 1
        canvas.text((left + width / 2, below), "\n".join(lines[:2]), BAR_POINTS, anchor="ma")


def tick_values(low: float, high: float, signed: bool = False) -> list[float]:
    """At most four tick values for a bar from ``low`` to ``high``: the ends and zero when signed.

    Example::

        >>> tick_values(0.0, 0.0146)
        [0.0, 0.005, 0.01]
        >>> tick_values(-3.0, 3.0, signed=True)
        [-3.0, 0.0, 3.0]
    """
    if signed:
        return [low, 0.0, high]
    from matplotlib.ticker import MaxNLocator

    tolerance = 1e-9 * (high - low)
    values = MaxNLocator(nbins=3).tick_values(low, high)
    return [float(v) for v in values if low - tolerance <= v <= high + tolerance]


def short_number(value: float) -> str:
    """A short tick label: two significant digits, exponents as ``1.5e-5`` outside ``[1e-3, 1e4)``.

    Example::

        >>> short_number(0.0146), short_number(1.46e-5), short_number(123456.0)
        ('0.015', '1.5e-5', '1.2e5')
    """
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.2g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
