"""Matplotlib figures as arrays, for the loggers that take images."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["figure_to_array"]


def figure_to_array(figure: Any) -> np.ndarray:
    """A matplotlib figure -> uint8 RGB ``[H, W, 3]``."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
