"""A drawn picture as an RGB array, and the one place a matplotlib figure becomes one.

The monitor's pictures are composed as tensors (images, overlays, colour strips) with their words written by PIL
(``_canvas``), or drawn once by matplotlib and kept as pixels (``rasterize``): every logger, the PNG fallback and
a saved pass then read the same pixels instead of drawing the figure again. A :class:`Picture` saves itself as a
PNG through PIL (``savefig``, as a matplotlib figure would).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PNG_COMPRESSION", "Picture", "rasterize"]

PNG_COMPRESSION = 1  # zlib level: level 6 (PIL's default) took 2-3x as long for files about a tenth smaller
Box = tuple[int, int, int, int]  # top, left, height, width in pixels


@dataclass
class Picture:
    """A drawn picture: uint8 RGB ``pixels [H, W, 3]``, the words written on it and where its parts lie.

    ``boxes`` names parts of the picture (``"cell 0 1"``: row 0, column 1 of a panel; ``"bar 1"``: the colour
    bar of column 1), each as ``(top, left, height, width)`` in pixels.

    Example::

        >>> import tempfile, os
        >>> picture = Picture(np.zeros((4, 6, 3), dtype=np.uint8))
        >>> path = os.path.join(tempfile.mkdtemp(), "black.png")
        >>> picture.savefig(path, dpi=100)
        >>> from PIL import Image
        >>> Image.open(path).size
        (6, 4)
    """

    pixels: np.ndarray
    texts: list[str] = field(default_factory=list)
    boxes: dict[str, Box] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 3 or self.pixels.shape[-1] != 3:
            raise ValueError(f"expected uint8 pixels [H, W, 3], got {self.pixels.dtype} {tuple(self.pixels.shape)}")

    def savefig(self, path: str | os.PathLike[str], dpi: float | None = None, **_: Any) -> None:
        """Write the pixels as they are (a PNG for ``.png``); ``dpi`` is only recorded in the file.

        Takes a matplotlib figure's arguments, so the code that saves figures saves pictures too.
        """
        from PIL import Image

        options: dict[str, Any] = {"compress_level": PNG_COMPRESSION} if str(path).lower().endswith(".png") else {}
        if dpi is not None:
            options["dpi"] = (dpi, dpi)
        Image.fromarray(self.pixels).save(path, **options)


def rasterize(figure: Any) -> Picture:
    """Draw a matplotlib ``figure`` once (Agg, at its own dpi) and close it: its pixels as a :class:`Picture`."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return Picture(pixels)
