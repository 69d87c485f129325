"""Gradient-weighted attention rollout: the generic rule of Chefer, Gur & Wolf 2021b."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_vitx.adapters import Capture
from lightning_vitx.explainers._propagation import propagate_additive
from lightning_vitx.explainers._registry import READOUT_FAMILIES, ExplainerInfo, register
from lightning_vitx.explainers.base import ReadoutExplainer

__all__ = ["GenericAttention"]


@register(
    ExplainerInfo(
        name="generic_attention",
        needs_gradients=True,
        readout=True,
        families=READOUT_FAMILIES,
        description="R <- R + mean_h((grad A * A)^+) R over all blocks",
        reference="Chefer, Gur & Wolf 2021b, Generic Attention-model Explainability (arXiv 2103.15679)",
        callable_target=True,
    )
)
class GenericAttention(ReadoutExplainer):
    """``w (I + Ā^L) ... (I + Ā^s)`` with ``Ā = mean_h(clamp(dy_c/dA ⊙ A, min=0))`` (clamp per head, then mean).

    Args:
        model: a timm ViT / DeiT / Swin.
        start_layer: first block included (0 = all blocks, as in the authors' ViT notebook; -1 = the last only,
            as in their CLIP notebook).

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> create("generic_attention", model)(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 14, 14])
    """

    def __init__(self, model: nn.Module, start_layer: int = 0) -> None:
        super().__init__(model)
        self.start_layer = self._block_index(start_layer, "start_layer")

    def read(self, record: Capture) -> Tensor:
        fused = record.gradient_weighted_attention("generic_attention")[self.start_layer :]
        weights, geometries = record.readout_weights(), record.geometries[self.start_layer :]
        # avg-pool heads: the identity path is a constant on every patch (propagate_additive, drop_identity)
        relevance = propagate_additive(weights, fused, geometries, drop_identity=record.layout.readout == "avg")
        return record.patch_map(relevance, block=self.start_layer)
