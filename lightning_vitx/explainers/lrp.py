"""LRP (the full-LRP baseline of Chefer et al. 2021): relevance of the target logit carried down to the patches.

The pass of ``_lrp`` with the LRP baseline rules of Chefer et al.'s code (``_lrp.BASELINE``:
``modules/layers_lrp.py``, ``baselines/ViT/ViT_orig_LRP.py``, ``generate_LRP(method="full")``; METHODS.md §3.4)
runs through every block to the first block's input; the position embedding's sum takes the plain LRP-0 split,
and each patch's score is its embedding's relevance summed over the channels. The reference goes on through the
patch convolution (a z^B rule bounded by the image's minimum and maximum) to the pixels and sums over RGB: that
rule hands each embedding's relevance to its own patch's pixels, all of it up to the ``1e-9`` stabiliser, so the
sum of the reference's pixel map over a patch is this score.
"""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

from lightning_vitx.adapters.base import TokenLayout
from lightning_vitx.explainers._lrp import BASELINE, BaselinePass, Record, block_relevance, safe_divide
from lightning_vitx.explainers._registry import ExplainerInfo, register

__all__ = ["LRP"]


@register(
    ExplainerInfo(
        name="lrp",
        needs_gradients=False,
        readout=False,
        families=("vit",),
        description="LRP relevance of each patch embedding (baseline rules through every block), summed over D",
        reference="Binder et al. 2016 (LRP), as the full-LRP baseline of Chefer, Gur & Wolf 2021 (arXiv 2012.09838)",
        signed=True,
    )
)
class LRP(BaselinePass):
    """Full LRP: the relevance of each patch's embedding, from a relevance of 1 at the target logit.

    The baseline rules (``_lrp`` module docstring: Linear with one denominator per sign term, plain LRP-0 residual
    split) run through the head and every block; the sum of the position embedding and the patch embeddings takes
    the plain LRP-0 split; the map is each patch embedding's relevance summed over its channels. Maps are signed
    and unnormalised. No gradients: one forward pass with hooks, then the rules. Like ``partial_lrp``, the rules
    are ill-conditioned (they divide by sums that can nearly cancel), so bf16 weights can move the map far.

    Args:
        model: a timm ViT or DeiT (distilled too, register tokens too) that reads its class token, with no
            ``norm_pre``.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> create("lrp", model)(torch.randn(2, 3, 224, 224), target=1).shape
        torch.Size([2, 14, 14])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        norm_pre = cast(Any, self.model).norm_pre
        if not isinstance(norm_pre, nn.Identity):
            raise TypeError(f"lrp has no rule for a norm before the blocks (norm_pre), got {type(norm_pre).__name__}")

    def read(self, model: Any, record: Record, relevance: Tensor, layout: TokenLayout) -> Tensor:
        if record.embeddings is None or any("attention" not in block for block in record.blocks):
            raise RuntimeError(
                "the forward pass did not run through the patch embedding and each block's attn_drop module. "
                "Is this a stock timm ViT?"
            )
        for index in reversed(range(len(record.blocks))):
            _, below = block_relevance(model.blocks[index], record.blocks[index], relevance, True, BASELINE)
            relevance = cast(Tensor, below)
        prefix = layout.num_prefix_tokens
        embeddings = record.embeddings.detach().float().flatten(1, -2)  # [B, gh * gw, D]
        tokens = record.blocks[0]["input"].detach().float()[:, prefix:]  # embeddings + position embedding
        patches = (embeddings * safe_divide(relevance[:, prefix:], tokens)).sum(dim=-1)
        return patches.reshape(-1, *layout.grid_size)
