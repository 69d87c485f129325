"""Transformer attribution (Chefer, Gur & Wolf 2021): LRP relevance of each attention map, weighted by its gradient.

One forward pass records what the relevance rules read (each sublayer's input, ``q``, ``k``, ``v`` and the attention
probabilities ``A``); one ``torch.autograd.grad`` gives ``dy_c/dA``; then the relevance pass of ``relevance`` with the
authors' rules (``composites.explicit("chefer")``: ``modules/layers_ours.py``, ``baselines/ViT/ViT_LRP.py``;
docs/methods.md §3.2) carries the relevance from the target logit down to the lowest block explained, keeping ``R^(A)``
(the relevance of each block's attention probabilities) on the way.

The map is ``w (I + Ā^L) ... (I + Ā^s)`` read at the patch columns, ``Ā = mean_h(clamp(dy_c/dA ⊙ R^(A), min=0))``.
On Swin each ``Ā`` is the block's windowed ``[B, windows, w, w]`` matrix, carried as ``generic_attention`` carries
its own (``_propagation.propagate_additive``, spread at each patch merging), and the map lies on the first stage's
grid; the rules Swin takes beyond the authors' (shift, padding, windows, merging, the position bias) are listed in
``relevance``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from lightning_vitx.adapters import Target, check_attention_recorded, explaining_forward
from lightning_vitx.explainers._propagation import propagate_additive
from lightning_vitx.explainers._registry import ExplainerInfo, register
from lightning_vitx.explainers.base import Explainer
from lightning_vitx.explainers.lrp.composites import classifier_heads, explicit
from lightning_vitx.explainers.lrp.passes import pixel_relevance
from lightning_vitx.explainers.lrp.relevance import attention_relevances, recording, top_relevance

__all__ = ["TransformerAttribution"]


@register(
    ExplainerInfo(
        name="transformer_attribution",
        needs_gradients=True,
        readout=False,
        families=("vit", "swin"),
        description="R <- R + mean_h((grad A * R^(A))^+) R, with R^(A) from LRP rules through every block",
        reference="Chefer, Gur & Wolf 2021, Transformer Interpretability Beyond Attention Visualization "
        "(arXiv 2012.09838)",
        signed=False,
        pixel_map=True,
    )
)
class TransformerAttribution(Explainer):
    """Chefer et al.'s transformer attribution: ``w (I + Ā^L) ... (I + Ā^s)`` at the patch columns.

    ``Ā^l = mean_h(clamp(dy_c/dA^l ⊙ R^(A,l), min=0))`` where ``R^(A,l)`` is the LRP relevance of block ``l``'s
    attention probabilities, propagated from a relevance of 1 at the target logit with the authors' rules (module
    docstring). ``w`` is the readout row: the class token (the mean of class and distillation rows for distilled
    DeiT), or the mean of the patch rows for avg-pool heads (ViT ``global_pool='avg'``, Swin). Maps are non-negative
    and unnormalised, at the patch grid (Swin: the first stage's grid). ``pixel_relevance`` gives the same rules'
    relevance carried on to the pixels, signed (the reference's ``relprop(method="full")`` on ``ViT_LRP``).

    Args:
        model: a timm ViT or DeiT (class token or ``global_pool='avg'``; distilled, register tokens) or a timm Swin,
            with timm's ``Mlp`` blocks and a Linear classifier head.
        start_layer: first block included in the rollout (0 = all, the authors' notebook; their evaluation
            scripts use 1); negative counts from the end.

    Differences from the reference code, which runs one image at a time: the residual rule's sums run over each
    sample, so a batch gives each image's single-image result. Distilled DeiT (not in the reference) splits the
    logit's relevance between its two heads with the residual rule and reads the mean of their two rows. Avg-pool
    heads (not in the reference) take LRP-0 through the mean; Swin (no reference exists) takes the rules in
    ``relevance``.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> explainer = create("transformer_attribution", model)
        >>> images = torch.randn(2, 3, 224, 224)
        >>> maps = explainer(images, target=1)
        >>> maps.shape, bool((maps >= 0).all()), explainer.pixel_relevance(images, target=1).shape
        (torch.Size([2, 14, 14]), True, torch.Size([2, 224, 224]))
    """

    composite = explicit("chefer")

    def __init__(self, model: nn.Module, start_layer: int = 0) -> None:
        super().__init__(model)
        self.composite.check(self.model, self.info.name)
        self._heads = classifier_heads(self.model)
        self.start_layer = self._block_index(start_layer, "start_layer")

    def __call__(self, images: Tensor, target: Target = None) -> Tensor:
        model = cast(Any, self.model)
        with explaining_forward(self.adapter, images, target, gradients=True, input_grad=True) as call:
            layout = self.adapter.layout(images)
            geometries = self.adapter.attention_geometries(images)[self.start_layer :]
            with recording(model, self._heads) as record:
                logits = call.forward()
            target_ids = call.target_ids
            check_attention_recorded(sum("attention" in block for block in record.blocks), len(record.blocks))
            attentions = [block["attention"] for block in record.blocks[self.start_layer :]]
            grads = torch.autograd.grad(logits.float().gather(1, target_ids[:, None]).sum(), attentions)
            with torch.no_grad():
                relevance = top_relevance(record, self._heads, target_ids, self.composite)
                found, _ = attention_relevances(record, relevance, self.composite, self.start_layer)
                batch = images.shape[0]
                fused = [
                    geometry.fold((grad.float() * attention).clamp(min=0), batch).mean(dim=1)
                    for grad, attention, geometry in zip(grads, found, geometries, strict=True)
                ]
                weights = layout.readout_weights(batch, device=logits.device)
                scores = propagate_additive(weights, fused, geometries, drop_identity=layout.readout == "avg")
                return layout.patch_map(scores, geometries[0].grid_size).float()

    def pixel_relevance(self, images: Tensor, target: Target = None) -> Tensor:
        """Relevance of each input pixel ``[B, H, W]`` (summed over channels), float32, signed; no gradients.

        The authors' rules (``composite``) through every block, whatever ``start_layer``; the position embedding's sum
        with their renormalised residual rule, per sample; the patch convolution's z^B rule, bounded by each
        image's minimum and maximum: what the reference's ``generate_LRP(method="full")`` returns on ``ViT_LRP``,
        batched. On Swin (no position embedding) the relevance at the first block's input goes to the convolution.

        Args:
            images: ``[B, 3, H, W]`` as the model takes them.
            target: ``None`` (predicted class), an ``int`` or ``LongTensor[B]``.
        """
        return pixel_relevance(self, self._heads, images, target, self.composite)
