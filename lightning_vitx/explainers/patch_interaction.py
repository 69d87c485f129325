"""Patch interactions as a map: how much of the target's evidence each patch's interactions carry."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_vitx.adapters import Capture, CaptureNeeds
from lightning_vitx.adapters.geometry import DenseAttention, spread
from lightning_vitx.analysis.patch_interactions import INDICATORS, fused_indicator
from lightning_vitx.explainers._registry import ExplainerInfo, register
from lightning_vitx.explainers.base import ReadoutExplainer

__all__ = ["PatchInteraction"]

Side = Literal["key", "query"]


@register(
    ExplainerInfo(
        name="patch_interaction",
        needs_gradients=True,
        readout=True,
        families=("vit", "swin"),
        description="each patch's patch-to-patch interaction mass (grad A * A)^+, summed over blocks",
        reference="after Ma et al. 2022, Visualizing and Understanding Patch Interactions in ViT (arXiv 2203.05922)",
    )
)
class PatchInteraction(ReadoutExplainer):
    """``map_j = Σ_l Σ_i I^l_ij`` over query patches ``i``: the interaction mass patch ``j`` gives other patches.

    ``I^l`` is block ``l``'s patch-to-patch interaction (``lightning_vitx.analysis.patch_interactions``): by
    default ``mean_h (dy_c/dA ⊙ A)^+``, the first-order drop of the target logit if the edge were removed, so the
    map says how strongly each patch's interactions carry the target's evidence. ``side="query"`` sums the rows
    instead (the mass patch ``i`` takes in). Prefix tokens are no patches: their rows and columns are left out.
    On Swin each block's window attention is read in its own layout and merged stages are spread back to the
    first grid (a quarter to each child).

    Ma et al. publish no formula for a map; this one, its options and their defaults are ours, the defaults
    measured on the trained shapes model (README, ``tests/metrics/test_on_trained_model.py``).

    Args:
        model: a timm ViT / DeiT / Swin.
        indicator: ``"gradient"`` or ``"attention"`` (``mean_h A``; then the map does not depend on the target).
        side: ``"key"`` (column sums) or ``"query"`` (row sums).

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> create("patch_interaction", model)(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 14, 14])
    """

    def __init__(
        self, model: nn.Module, indicator: Literal["gradient", "attention"] = "gradient", side: Side = "key"
    ) -> None:
        super().__init__(model)
        if indicator not in INDICATORS:
            raise ValueError(f"indicator must be one of {list(INDICATORS)}, got {indicator!r}")
        if side not in ("key", "query"):
            raise ValueError(f"side must be 'key' or 'query', got {side!r}")
        self.indicator = indicator
        self.side = side

    def capture_needs(self) -> CaptureNeeds:
        return CaptureNeeds(gradients=self.indicator == "gradient")

    def read(self, record: Capture) -> Tensor:
        grads = record.require_gradients("patch_interaction") if self.indicator == "gradient" else None
        first = record.geometries[0].grid_size
        total = torch.zeros(record.batch_size, first[0] * first[1], device=record.logits.device)
        for index, (attention, geometry) in enumerate(zip(record.attentions, record.geometries, strict=True)):
            fused = fused_indicator(attention, None if grads is None else grads[index], self.indicator)
            start = geometry.num_prefix_tokens
            if self.side == "key":
                queries = torch.ones(record.batch_size, geometry.num_tokens, device=fused.device)
                queries[:, :start] = 0.0
                mass = geometry.times(queries, fused)
            elif isinstance(geometry, DenseAttention):
                mass = fused[..., start:].sum(dim=-1)
            else:
                mass = geometry.row_sums(fused)
            total += spread(mass[:, start:], geometry.grid_size, first)
        return total.view(record.batch_size, *first)
