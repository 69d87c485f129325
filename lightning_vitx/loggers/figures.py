"""The one place that knows W&B, TensorBoard and the plain-file fallback for pictures."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["figure_to_array", "log_figure"]


def figure_to_array(figure: Any) -> np.ndarray:
    """A matplotlib figure -> uint8 RGB ``[H, W, 3]``."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def log_figure(trainer: Any, key: str, figure: Any, step: int) -> list[str]:
    """Send ``figure`` to every attached logger that takes images; with none, save a PNG under the log dir.

    Returns where it went (logger names or the PNG path). Call it on global rank zero only.
    """
    import matplotlib.pyplot as plt
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    sent = []
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, figure_to_array(figure), global_step=step, dataformats="HWC")
            sent.append("tensorboard")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[figure_to_array(figure)], step=step)
            sent.append("wandb")
    if not sent:
        root = trainer.log_dir or trainer.default_root_dir
        path = os.path.join(root, "explanations", f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        figure.savefig(path, dpi=100)
        sent.append(path)
    plt.close(figure)
    return sent
