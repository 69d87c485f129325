"""Matplotlib figures as arrays, for the loggers that take images."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["close_figures", "figure_to_array"]


def figure_to_array(figure: Any) -> np.ndarray:
    """A matplotlib figure -> uint8 RGB ``[H, W, 3]``."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def close_figures(figures: Any) -> None:
    """Close each matplotlib figure of ``figures`` (pyplot keeps them open until closed)."""
    import matplotlib.pyplot as plt

    for figure in figures:
        plt.close(figure)
