"""Data the project generates: synthetic shapes with masks, for tests, the demo and benchmarks."""

from lightning_vitx.data.shapes import SHAPE_CLASSES, ShapesDataset

__all__ = ["SHAPE_CLASSES", "ShapesDataset"]
