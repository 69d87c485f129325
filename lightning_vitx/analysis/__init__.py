"""Analyses beyond one map: patch interactions and receptive fields, Swin corner shares, randomisation tests.

Example::

    >>> import timm, torch
    >>> from lightning_vitx.analysis import patch_interactions
    >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, depth=2)
    >>> patch_interactions(model, torch.randn(1, 3, 224, 224), indicator="attention").num_layers
    2
"""

from lightning_vitx.analysis.corners import attention_sharpness, corner_region, corner_share, object_share
from lightning_vitx.analysis.focus import FOCUS_STATISTICS, focus_statistics
from lightning_vitx.analysis.patch_interactions import (
    PatchInteractions,
    edge_ablation_effects,
    interaction_matrices,
    patch_interactions,
    receptive_fields,
    sample_pairs,
)
from lightning_vitx.analysis.patch_removal import PatchRemovalCurve, interaction_windows, patch_removal_curve
from lightning_vitx.analysis.randomization import RandomizationResult, randomization_check
from lightning_vitx.analysis.ranks import rank_correlation

__all__ = [
    "FOCUS_STATISTICS",
    "PatchInteractions",
    "PatchRemovalCurve",
    "RandomizationResult",
    "attention_sharpness",
    "corner_region",
    "corner_share",
    "edge_ablation_effects",
    "focus_statistics",
    "interaction_windows",
    "interaction_matrices",
    "object_share",
    "patch_interactions",
    "patch_removal_curve",
    "randomization_check",
    "rank_correlation",
    "receptive_fields",
    "sample_pairs",
]
