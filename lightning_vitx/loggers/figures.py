"""Figures as arrays, for the loggers that take images: matplotlib figures, or pictures already drawn."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["close_figures", "figure_to_array"]


def figure_to_array(figure: Any) -> np.ndarray:
    """A matplotlib figure (drawn here) or a ``rendering.Picture`` (drawn already) -> uint8 RGB ``[H, W, 3]``."""
    from lightning_vitx.rendering import Picture

    if isinstance(figure, Picture):
        return figure.pixels
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def close_figures(figures: Any) -> None:
    """Close each matplotlib figure of ``figures`` (pyplot keeps them open until closed); pictures need nothing."""
    from matplotlib.figure import Figure

    figures = [figure for figure in figures if isinstance(figure, Figure)]
    if figures:
        import matplotlib.pyplot as plt

        for figure in figures:
            plt.close(figure)
