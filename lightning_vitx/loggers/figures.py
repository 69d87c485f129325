"""The one place that knows W&B, TensorBoard and the plain-file fallback for pictures."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["curves_figure", "figure_to_array", "log_figure", "log_table"]


def figure_to_array(figure: Any) -> np.ndarray:
    """A matplotlib figure -> uint8 RGB ``[H, W, 3]``."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def log_figure(trainer: Any, key: str, figure: Any, step: int, fallback_dir: str) -> list[str]:
    """Send ``figure`` to every attached logger that takes images; with none, save a PNG in ``fallback_dir``.

    Returns where it went (logger names or the PNG path). Call it on global rank zero only, and resolve
    ``fallback_dir`` on every rank before (``trainer.log_dir`` is a collective under DDP).
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
        path = os.path.join(fallback_dir, f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        figure.savefig(path, dpi=100)
        sent.append(path)
    plt.close(figure)
    return sent


def log_table(trainer: Any, key: str, columns: list[str], rows: list[list[Any]], step: int) -> bool:
    """Log a per-sample table to W&B (image cells as uint8 ``[H, W, 3]`` arrays). Returns whether any logger took it.

    TensorBoard has no tables; the scalars and panels carry the same information there.
    """
    from lightning.pytorch.loggers import WandbLogger

    taken = False
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            data = [[wandb.Image(cell) if isinstance(cell, np.ndarray) else cell for cell in row] for row in rows]
            logger.log_table(key=key, columns=columns, data=data, step=step)
            taken = True
    return taken


def curves_figure(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> Any:
    """One panel per metric (e.g. deletion, insertion), one line per explainer: ``{metric: {explainer: (x, y)}}``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(4.0 * len(curves), 3.2), squeeze=False)
    for axis, (metric, lines) in zip(axes[0], curves.items(), strict=True):
        for explainer, (x, y) in lines.items():
            axis.plot(x, y, marker="o", markersize=3, label=explainer)
        axis.set_title(metric)
        axis.set_xlabel("share of patches")
        axis.set_ylim(-0.02, 1.02)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
