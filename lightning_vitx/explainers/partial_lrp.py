"""Partial LRP (Voita et al. 2019), the baseline of Chefer et al. 2021: LRP relevance of the last attention map.

The relevance of the target logit is carried down to the last block's attention probabilities by the pass of
``_lrp`` with the LRP baseline rules of Chefer et al.'s code (``_lrp.BASELINE``: ``modules/layers_lrp.py``,
``baselines/ViT/ViT_orig_LRP.py``, ``generate_LRP(method="last_layer")``; METHODS.md §3.4); the map is that
relevance's positive part, averaged over heads, at the readout row and the patch columns.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_vitx.adapters.base import TokenLayout
from lightning_vitx.explainers._lrp import BASELINE, BaselinePass, Record, block_relevance
from lightning_vitx.explainers._registry import ExplainerInfo, register

__all__ = ["PartialLRP"]


@register(
    ExplainerInfo(
        name="partial_lrp",
        needs_gradients=False,
        readout=False,
        families=("vit",),
        description="mean_h(R^(A))^+ of the last block at the readout row, LRP with the baseline rules",
        reference="Voita et al. 2019, Analyzing Multi-Head Self-Attention (arXiv 1905.09418), "
        "as the baseline of Chefer, Gur & Wolf 2021 (arXiv 2012.09838)",
        signed=False,
    )
)
class PartialLRP(BaselinePass):
    """Partial LRP: ``w mean_h(clamp(R^(A,L), min=0))`` at the patch columns.

    ``R^(A,L)`` is the LRP relevance of the last block's attention probabilities, from a relevance of 1 at the
    target logit, with the baseline rules (``_lrp`` module docstring: Linear with one denominator per sign term,
    plain LRP-0 residual split). ``w`` is the readout row (the class token; the mean of class and distillation
    rows for distilled DeiT, whose logit's relevance is split between its two heads by the residual rule, not in
    the reference). Maps are non-negative and unnormalised. No gradients: one forward pass with hooks, then the
    relevance rules through the head and the last block. The baseline rules are ill-conditioned (the residual split
    divides by ``x + a``, each Linear sign term by its own part): where those nearly cancel, rounding moves the map,
    so bf16 weights can give maps far from float32 ones.

    Args:
        model: a timm ViT or DeiT (distilled too, register tokens too) that reads its class token.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> maps = create("partial_lrp", model)(torch.randn(2, 3, 224, 224), target=1)
        >>> maps.shape, bool((maps >= 0).all())
        (torch.Size([2, 14, 14]), True)
    """

    def read(self, model: Any, record: Record, relevance: Tensor, layout: TokenLayout) -> Tensor:
        if "attention" not in record.blocks[-1]:
            raise RuntimeError(
                "the last block's attention did not run through its attn_drop module. Is this a stock timm Attention?"
            )
        attention_relevance, _ = block_relevance(model.blocks[-1], record.blocks[-1], relevance, False, BASELINE)
        fused = attention_relevance.clamp(min=0).mean(dim=1)  # [B, N, N]
        weights = layout.readout_weights(fused.shape[0], device=fused.device)
        return layout.patch_map(torch.einsum("bn,bnm->bm", weights, fused))
