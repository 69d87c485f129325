"""GMAR: gradient-driven multi-head attention rollout (Jo et al. 2025)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_vitx._checks import check_choice
from lightning_vitx.adapters import Capture, CaptureNeeds
from lightning_vitx.explainers._propagation import propagate_rollout
from lightning_vitx.explainers._registry import READOUT_FAMILIES, ExplainerInfo, register
from lightning_vitx.explainers.base import ReadoutExplainer

__all__ = ["GMAR"]


@register(
    ExplainerInfo(
        name="gmar",
        needs_gradients=True,
        readout=True,
        families=READOUT_FAMILIES,
        description="rollout with heads weighted by the L1/L2 norm of their attention gradients",
        reference="Jo et al. 2025, GMAR: Gradient-Driven Multi-Head Attention Rollout (arXiv 2504.19414)",
        callable_target=True,
    )
)
class GMAR(ReadoutExplainer):
    """Rollout of ``Σ_h w_h A_h`` with head weights ``w_h = s_h / Σ_h' s_h'`` per block and sample.

    ``s_h`` is the L1 (``Σ|G_h|``) or L2 (``sqrt(Σ G_h²)``) norm of head ``h``'s gradient ``G_h`` with respect
    to the target logit. Residual and aggregation as in rollout: ``Â = 0.5 Ā + 0.5 I``, ``w Â^L ... Â^1``.

    No authors' code exists; the choices made here (docs/methods.md §5): the gradient is taken with respect to the
    attention probabilities (``gradient_source="attention"``, default) or to each head's attention output
    (``"head_output"``, the literal reading of "split across heads"); weights keep magnitude only (no ReLU);
    the product runs later blocks on the left with the readout row read last (a third-party version reverses it).

    Args:
        model: a timm ViT / DeiT / Swin.
        norm: ``"l1"`` or ``"l2"``.
        gradient_source: ``"attention"`` or ``"head_output"``.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> create("gmar", model, norm="l2")(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 14, 14])
    """

    def __init__(
        self,
        model: nn.Module,
        norm: Literal["l1", "l2"] = "l1",
        gradient_source: Literal["attention", "head_output"] = "attention",
    ) -> None:
        super().__init__(model)
        check_choice("norm", norm, ("l1", "l2"))
        check_choice("gradient_source", gradient_source, ("attention", "head_output"))
        self.norm = norm
        self.gradient_source = gradient_source

    def capture_needs(self) -> CaptureNeeds:
        return CaptureNeeds(gradients=True, head_outputs=self.gradient_source == "head_output")

    def head_weights(self, grad: Tensor) -> Tensor:
        """``[B, heads, ...]`` gradients -> ``[B, heads]`` weights summing to 1 (uniform where all are 0)."""
        flat = grad.flatten(2)
        scores = flat.abs().sum(dim=-1) if self.norm == "l1" else flat.square().sum(dim=-1).sqrt()
        total = scores.sum(dim=1, keepdim=True)
        uniform = torch.full_like(scores, 1.0 / scores.shape[1])
        return torch.where(total > 0, scores / total.clamp_min(torch.finfo(scores.dtype).tiny), uniform)

    def read(self, record: Capture) -> Tensor:
        grads = record.require_gradients("gmar")
        if self.gradient_source == "head_output":
            if record.head_output_grads is None:
                raise ValueError("gmar with gradient_source='head_output' needs CaptureNeeds(head_outputs=True)")
            grads = record.head_output_grads
        fused = []
        for attention, grad in zip(record.attentions, grads, strict=True):
            weights = self.head_weights(grad)
            fused.append((weights.view(*weights.shape, *[1] * (attention.ndim - 2)) * attention).sum(dim=1))
        return record.patch_map(propagate_rollout(record.readout_weights(), fused, record.geometries))
