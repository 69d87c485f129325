"""Partial LRP (Voita et al. 2019), the baseline of Chefer et al. 2021: LRP relevance of the last attention map.

The relevance of the target logit is carried down to the last block's attention probabilities by the pass of
``relevance`` with the LRP baseline rules of Chefer et al.'s code (``composites.explicit("baseline")``:
``modules/layers_lrp.py``, ``baselines/ViT/ViT_orig_LRP.py``, ``generate_LRP(method="last_layer")``; docs/methods.md
§3.4); the map is that relevance's positive part, averaged over heads, at the readout row and the patch columns. On Swin
the last block's relevance is windowed (``[B, windows, w, w]``), read with the readout row as ``raw_attention`` reads
its attention, and spread from the last stage's grid to the first's; Swin's rules are listed in ``relevance``.
"""

from __future__ import annotations

from torch import Tensor

from lightning_vitx.adapters.base import TokenLayout
from lightning_vitx.adapters.geometry import AttentionGeometry
from lightning_vitx.explainers._registry import ExplainerInfo, register
from lightning_vitx.explainers.lrp.passes import BaselinePass
from lightning_vitx.explainers.lrp.relevance import Record, attention_relevances

__all__ = ["PartialLRP"]


@register(
    ExplainerInfo(
        name="partial_lrp",
        needs_gradients=False,
        readout=False,
        families=("vit", "swin"),
        description="mean_h(R^(A))^+ of the last block at the readout row, LRP with the baseline rules",
        reference="Voita et al. 2019, Analyzing Multi-Head Self-Attention (arXiv 1905.09418), "
        "as the baseline of Chefer, Gur & Wolf 2021 (arXiv 2012.09838)",
        signed=False,
    )
)
class PartialLRP(BaselinePass):
    """Partial LRP: ``w mean_h(clamp(R^(A,L), min=0))`` at the patch columns.

    ``R^(A,L)`` is the LRP relevance of the last block's attention probabilities, from a relevance of 1 at the
    target logit, with the baseline rules (``rules`` module docstring: Linear with one denominator per sign term,
    plain LRP-0 residual split). ``w`` is the readout row (the class token; the mean of class and distillation
    rows for distilled DeiT, whose logit's relevance is split between its two heads by the residual rule, not in
    the reference; the mean of the patch rows for avg-pool heads, ViT ``global_pool='avg'`` and Swin). Maps are
    non-negative and unnormalised, at the patch grid (Swin: the first stage's grid). No gradients: one forward pass
    with hooks, then the relevance rules through the head and the last block. ``pixel_relevance`` gives the same
    rules' relevance carried on to the pixels (``lrp``'s pixel map: the partial method has no pixel map of its
    own, as its relevance stops at an attention map). The baseline rules are
    ill-conditioned (the residual split divides by ``x + a``, each Linear sign term by its own part): where those
    nearly cancel, rounding moves the map, so bf16 weights can give maps far from float32 ones.

    Args:
        model: a timm ViT or DeiT (class token or ``global_pool='avg'``; distilled, register tokens) or a timm Swin,
            with timm's ``Mlp`` blocks and a Linear classifier head.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> maps = create("partial_lrp", model)(torch.randn(2, 3, 224, 224), target=1)
        >>> maps.shape, bool((maps >= 0).all())
        (torch.Size([2, 14, 14]), True)
    """

    def read(
        self, record: Record, relevance: Tensor, layout: TokenLayout, geometries: list[AttentionGeometry]
    ) -> Tensor:
        (attention_relevance,), _ = attention_relevances(
            record, relevance, self.composite, lowest=len(record.blocks) - 1
        )
        geometry, batch = geometries[-1], relevance.shape[0]
        fused = geometry.fold(attention_relevance.clamp(min=0), batch).mean(dim=1)  # [B, N, N] or [B, windows, w, w]
        weights = layout.readout_weights(batch, device=relevance.device, grid_size=geometry.grid_size)
        return layout.patch_map(geometry.times(weights, fused), geometry.grid_size)
