"""Logger plumbing: pictures to W&B, TensorBoard, or PNG files when no image logger is attached."""

from lightning_vitx.loggers.figures import figure_to_array, log_figure

__all__ = ["figure_to_array", "log_figure"]
