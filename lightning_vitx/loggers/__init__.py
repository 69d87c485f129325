"""Logger plumbing: one explained pass to W&B, TensorBoard, any Lightning logger, or PNG files."""

from lightning_vitx.loggers.figures import figure_to_array
from lightning_vitx.loggers.passes import PassLogger, PassRecord, SampleImages

__all__ = ["PassLogger", "PassRecord", "SampleImages", "figure_to_array"]
