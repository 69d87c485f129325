"""Analyses of explanations and models beyond the per-batch metrics."""

from lightning_vitx.analysis.corners import attention_sharpness, corner_region, corner_share, object_share

__all__ = ["attention_sharpness", "corner_region", "corner_share", "object_share"]
