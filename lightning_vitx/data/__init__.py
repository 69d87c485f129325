"""Data the project generates: synthetic shapes with masks, for tests, the demo and benchmarks."""

from lightning_vitx.data.modules import ImageFolderDataModule, ShapesDataModule
from lightning_vitx.data.shapes import SHAPE_CLASSES, ShapesDataset, ShapesSample, shortcut_mask
from lightning_vitx.data.training import (
    SHAPES_IMAGE_SIZES,
    ShapesTraining,
    held_out_accuracy,
    tiny_swin_for_shapes,
    tiny_vit_for_shapes,
    train_on_shapes,
    trained_on_shapes,
)

__all__ = [
    "SHAPES_IMAGE_SIZES",
    "SHAPE_CLASSES",
    "ImageFolderDataModule",
    "ShapesDataModule",
    "ShapesDataset",
    "ShapesSample",
    "ShapesTraining",
    "held_out_accuracy",
    "shortcut_mask",
    "tiny_swin_for_shapes",
    "tiny_vit_for_shapes",
    "train_on_shapes",
    "trained_on_shapes",
]
