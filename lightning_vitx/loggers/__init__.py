"""Logger plumbing: one explained pass to W&B, TensorBoard, MLflow, any Lightning logger, PNG files or a saved pass."""

from lightning_vitx.loggers.bundle import SavedPass, load_pass, load_passes, save_pass
from lightning_vitx.loggers.figures import figure_to_array
from lightning_vitx.loggers.passes import PassLogger, PassRecord, SampleImages

__all__ = [
    "PassLogger",
    "PassRecord",
    "SampleImages",
    "SavedPass",
    "figure_to_array",
    "load_pass",
    "load_passes",
    "save_pass",
]
