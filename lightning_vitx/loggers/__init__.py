"""Logger plumbing: pictures to W&B, TensorBoard, or PNG files when no image logger is attached."""

from lightning_vitx.loggers.figures import curves_figure, figure_to_array, log_figure, log_table

__all__ = ["curves_figure", "figure_to_array", "log_figure", "log_table"]
