"""Words and marks on an RGB picture with PIL: what the panel and the ERF figure write, without a matplotlib figure.

Sizes are given in points at ``DPI`` (as matplotlib's ``fontsize``), in matplotlib's own font (DejaVu Sans), so
the pictures read as the figures they replace did.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_vitx.rendering.picture import Box, Picture

DPI = 100  # pixels per inch: a size of 9 points is 12.5 pixels
CELL = 192  # a picture's longer side in pixels, about: images are enlarged by the whole factor nearest to it
GAP, MARGIN = 8, 10  # pixels between pictures, around the whole

Colour = tuple[int, int, int]
WHITE: Colour = (255, 255, 255)
BLACK: Colour = (0, 0, 0)


def pixels(points: float) -> int:
    """A length in points, in pixels at ``DPI``."""
    return max(1, round(points * DPI / 72))


@functools.lru_cache(maxsize=32)
def font(points: float, bold: bool = False) -> Any:
    """Matplotlib's DejaVu Sans at ``points`` (PIL's own default font where that file is missing)."""
    import matplotlib
    from PIL import ImageFont

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name)
    if os.path.isfile(path):
        return ImageFont.truetype(path, pixels(points))
    return ImageFont.load_default(pixels(points))


def text_size(text: str, points: float, bold: bool = False) -> tuple[int, int]:
    """``(width, height)`` in pixels of one line of ``text`` (height: the font's ascent plus descent)."""
    chosen = font(points, bold)
    ascent, descent = chosen.getmetrics()
    return round(chosen.getlength(text)), ascent + descent


def wrap(text: str, points: float, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (a word longer than that keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_size(f"{lines[-1]} {word}", points)[0] <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


class Canvas:
    """An RGB picture being drawn: tensors pasted in, then words and marks written on it by PIL.

    ``paste`` places tensors in a white uint8 ``[3, H, W]``; ``begin_marks`` turns it into a PIL image, after
    which ``text``, ``polygon`` and ``rectangle`` draw; ``picture`` returns the result.
    """

    def __init__(self, height: int, width: int) -> None:
        self.rgb = torch.full((3, height, width), 255, dtype=torch.uint8)
        self.image: Any = None
        self.draw: Any = None
        self.texts: list[str] = []
        self.boxes: dict[str, Box] = {}

    def paste(self, rgb: Tensor, top: int, left: int, name: str | None = None) -> None:
        """Place ``rgb [3, h, w]`` (uint8, or float in ``[0, 1]``) with its top-left corner at ``(top, left)``."""
        height, width = rgb.shape[-2:]
        self.rgb[:, top : top + height, left : left + width] = to_uint8(rgb)
        if name is not None:
            self.boxes[name] = (top, left, height, width)

    def begin_marks(self) -> None:
        """From here on, draw with PIL (the pasted pixels rounded to uint8 once)."""
        from PIL import Image, ImageDraw

        self.image = Image.fromarray(self.rgb.permute(1, 2, 0).contiguous().numpy())
        self.draw = ImageDraw.Draw(self.image)

    def text(
        self,
        xy: tuple[float, float],
        text: str,
        points: float,
        colour: Colour = BLACK,
        anchor: str = "la",
        bold: bool = False,
        box: Colour | None = None,
        box_alpha: float = 1.0,
        pad: int = 2,
        rotate: bool = False,
    ) -> Box:
        """Write ``text`` (line breaks make lines) at ``xy`` (``(x, y)``; PIL's ``anchor``, ``"mm"``: centred).

        ``box``: a background of that colour and opacity, ``pad`` pixels around the words. ``rotate``: read from
        bottom to top (a y-axis label), ``xy`` its centre. Returns the written box ``(top, left, height, width)``.
        """
        from PIL import Image, ImageDraw

        chosen = font(points, bold)
        self.texts.append(text)
        if rotate:
            width, height = self._block_size(text, points, bold)
            label = Image.new("L", (width, height), 0)
            ImageDraw.Draw(label).multiline_text((0, 0), text, fill=255, font=chosen, align="center")
            label = label.rotate(90, expand=True)
            left, top = round(xy[0] - label.width / 2), round(xy[1] - label.height / 2)
            self.image.paste(Image.new("RGB", label.size, colour), (left, top), label)
            return top, left, label.height, label.width
        bounds = self.draw.multiline_textbbox(xy, text, font=chosen, anchor=anchor, align="center")
        left, top, right, bottom = (round(value) for value in bounds)
        if box is not None:
            self.shade((top - pad, left - pad, bottom - top + 2 * pad, right - left + 2 * pad), box, box_alpha)
        self.draw.multiline_text(xy, text, fill=colour, font=chosen, anchor=anchor, align="center")
        return top, left, bottom - top, right - left

    def shade(self, box: Box, colour: Colour, alpha: float) -> None:
        """Blend ``colour`` at opacity ``alpha`` over ``box`` (clipped to the picture)."""
        from PIL import Image

        top, left, height, width = box
        top, left = max(0, top), max(0, left)
        bottom, right = min(self.image.height, top + height), min(self.image.width, left + width)
        if bottom <= top or right <= left:
            return
        region = self.image.crop((left, top, right, bottom))
        solid = Image.new("RGB", region.size, colour)
        self.image.paste(Image.blend(region, solid, alpha) if alpha < 1 else solid, (left, top))

    def polygon(self, points: Sequence[tuple[float, float]], fill: Colour, outline: Colour | None = None) -> None:
        self.draw.polygon(list(points), fill=fill, outline=outline)

    def rectangle(self, box: Box, outline: Colour, width: int) -> None:
        """An unfilled rectangle inside ``box``, its edge ``width`` pixels wide."""
        top, left, height, box_width = box
        self.draw.rectangle((left, top, left + box_width - 1, top + height - 1), outline=outline, width=width)

    def picture(self) -> Picture:
        if self.image is None:
            self.begin_marks()
        return Picture(np.asarray(self.image).copy(), self.texts, self.boxes)

    @staticmethod
    def _block_size(text: str, points: float, bold: bool) -> tuple[int, int]:
        sizes = [text_size(line, points, bold) for line in text.split("\n")]
        return max(width for width, _ in sizes) + 1, sum(height for _, height in sizes) + 1


def to_uint8(rgb: Tensor) -> Tensor:
    """Float RGB in ``[0, 1]`` -> uint8 on the CPU (uint8 as it is)."""
    if rgb.dtype == torch.uint8:
        return rgb.cpu()
    return (rgb.detach().float().clamp(0, 1) * 255).round().byte().cpu()


def hex_colour(name: str) -> Colour:
    """A matplotlib colour (``"#1f77b4"``, ``"C0"``, ``"white"``) as 0-255 RGB."""
    from matplotlib.colors import to_rgb

    red, green, blue = to_rgb(name)
    return round(red * 255), round(green * 255), round(blue * 255)
