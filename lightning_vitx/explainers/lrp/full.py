"""LRP (the full-LRP baseline of Chefer et al. 2021): relevance of the target logit carried down to the patches.

The pass of ``relevance`` with the LRP baseline rules of Chefer et al.'s code (``composites.explicit("baseline")``:
``modules/layers_lrp.py``, ``baselines/ViT/ViT_orig_LRP.py``, ``generate_LRP(method="full")``; docs/methods.md §3.4)
runs through every block (and Swin's patch mergings) to the first block's input; the position embedding's sum
takes the plain LRP-0 split (``passes``), and each patch's score is its embedding's relevance summed over the
channels. The reference goes on through the patch convolution (a z^B rule bounded by the image's minimum and
maximum) to the pixels and sums over RGB: ``LRP.pixel_relevance`` does that. The rule hands each embedding's
relevance to its own patch's pixels, all of it up to the ``1e-9`` stabiliser, so the pixel map summed over a patch
is its score.
"""

from __future__ import annotations

from torch import Tensor

from lightning_vitx.adapters.base import TokenLayout
from lightning_vitx.adapters.geometry import AttentionGeometry
from lightning_vitx.explainers._registry import ExplainerInfo, register
from lightning_vitx.explainers.lrp.passes import BaselinePass, embedding_relevance
from lightning_vitx.explainers.lrp.relevance import Record

__all__ = ["LRP"]


@register(
    ExplainerInfo(
        name="lrp",
        needs_gradients=False,
        readout=False,
        families=("vit", "swin"),
        description="LRP relevance of each patch embedding (baseline rules through every block), summed over D",
        reference="Binder et al. 2016 (LRP), as the full-LRP baseline of Chefer, Gur & Wolf 2021 (arXiv 2012.09838)",
        signed=True,
        relevance_seed="one",
        pixel_map=True,
    )
)
class LRP(BaselinePass):
    """Full LRP: the relevance of each patch's embedding, from a relevance of 1 at the target logit.

    The baseline rules (``rules`` module docstring: Linear with one denominator per sign term, plain LRP-0
    residual split) run through the head and every block (Swin: and its patch mergings, ``relevance`` module docstring);
    the sum of the position embedding and the patch embeddings takes the plain LRP-0 split; the map is each patch
    embedding's relevance summed over its channels (Swin: at the first stage's grid; the embedding's LayerNorm, and
    a ViT's ``norm_pre``, pass relevance). ``pixel_relevance`` goes on to the pixels. Maps are signed and
    unnormalised. No gradients: one forward pass with hooks, then the rules. Like ``partial_lrp``, the rules are
    ill-conditioned (they divide by sums that can nearly cancel), so bf16 weights can move the map far.

    Args:
        model: a timm ViT or DeiT (class token or ``global_pool='avg'``; distilled, register tokens), or a timm
            Swin; with timm's ``Mlp`` blocks and a Linear classifier head.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> explainer = create("lrp", model)
        >>> images = torch.randn(2, 3, 224, 224)
        >>> explainer(images, target=1).shape, explainer.pixel_relevance(images, target=1).shape
        (torch.Size([2, 14, 14]), torch.Size([2, 224, 224]))
    """

    def read(
        self, record: Record, relevance: Tensor, layout: TokenLayout, geometries: list[AttentionGeometry]
    ) -> Tensor:
        embeddings = embedding_relevance(self.model, record, relevance, self.composite)
        return embeddings.sum(dim=-1).reshape(-1, *layout.grid_size)
