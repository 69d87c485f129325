"""LRP (the full-LRP baseline of Chefer et al. 2021): relevance of the target logit carried down to the patches.

The pass of ``_lrp`` with the LRP baseline rules of Chefer et al.'s code (``_lrp_rules.BASELINE``:
``modules/layers_lrp.py``, ``baselines/ViT/ViT_orig_LRP.py``, ``generate_LRP(method="full")``; METHODS.md §3.4)
runs through every block (and Swin's patch mergings) to the first block's input; the position embedding's sum
takes the plain LRP-0 split, and each patch's score is its embedding's relevance summed over the channels. The
reference goes on through the patch convolution (a z^B rule bounded by the image's minimum and maximum) to the
pixels and sums over RGB: ``LRP.pixel_relevance`` does that. The rule hands each embedding's relevance to its own
patch's pixels, all of it up to the ``1e-9`` stabiliser, so the pixel map summed over a patch is its score.
"""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

from lightning_vitx.adapters.base import TokenLayout
from lightning_vitx.adapters.capture import Target
from lightning_vitx.adapters.geometry import AttentionGeometry
from lightning_vitx.explainers._lrp import BASELINE, BaselinePass, Record, attention_relevances, safe_divide
from lightning_vitx.explainers._lrp_rules import zb_conv_rule
from lightning_vitx.explainers._registry import ExplainerInfo, register

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
    )
)
class LRP(BaselinePass):
    """Full LRP: the relevance of each patch's embedding, from a relevance of 1 at the target logit.

    The baseline rules (``_lrp_rules`` module docstring: Linear with one denominator per sign term, plain LRP-0
    residual split) run through the head and every block (Swin: and its patch mergings, ``_lrp`` module docstring);
    the sum of the position embedding and the patch embeddings takes the plain LRP-0 split; the map is each patch
    embedding's relevance summed over its channels (Swin: at the first stage's grid; the embedding's LayerNorm
    passes relevance). ``pixel_relevance`` goes on to the pixels. Maps are signed and unnormalised. No gradients:
    one forward pass with hooks, then the rules. Like ``partial_lrp``, the rules are ill-conditioned (they divide
    by sums that can nearly cancel), so bf16 weights can move the map far.

    Args:
        model: a timm ViT or DeiT (class token or ``global_pool='avg'``; distilled, register tokens) with no
            ``norm_pre``, or a timm Swin; with timm's ``Mlp`` blocks and a Linear classifier head.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> explainer = create("lrp", model)
        >>> images = torch.randn(2, 3, 224, 224)
        >>> explainer(images, target=1).shape, explainer.pixel_relevance(images, target=1).shape
        (torch.Size([2, 14, 14]), torch.Size([2, 224, 224]))
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        norm_pre = getattr(self.model, "norm_pre", nn.Identity())
        if not isinstance(norm_pre, nn.Identity):
            raise TypeError(
                f"lrp has no rule for a norm before the blocks (norm_pre), got {type(norm_pre).__name__}; "
                "use 'transformer_attribution' or 'attnlrp' for this model"
            )
        proj = cast(Any, self.model).patch_embed.proj
        if not (
            isinstance(proj, nn.Conv2d)
            and tuple(proj.kernel_size) == tuple(proj.stride)
            and tuple(proj.padding) == (0, 0)
            and tuple(proj.dilation) == (1, 1)
            and proj.groups == 1
        ):
            raise TypeError(
                "lrp's pixel rule needs a patch embedding convolution with stride = kernel size and no padding, got "
                f"{proj!r}"
            )

    def read(
        self, record: Record, relevance: Tensor, layout: TokenLayout, geometries: list[AttentionGeometry]
    ) -> Tensor:
        return self._embedding_relevance(record, relevance, layout).sum(dim=-1).reshape(-1, *layout.grid_size)

    def pixel_relevance(self, images: Tensor, target: Target = None) -> Tensor:
        """Relevance of each input pixel ``[B, H, W]`` (summed over channels), float32, signed.

        The z^B rule of the reference's first convolution (``layers_lrp.Conv2d.relprop``), bounded by each image's
        minimum and maximum, from the relevance at the patch convolution's output. Summed over a patch's pixels it
        is the patch's score in ``lrp``'s map (up to the rules' ``1e-9`` stabiliser).

        Args:
            images: ``[B, 3, H, W]`` as the model takes them.
            target: ``None`` (predicted class), an ``int`` or ``LongTensor[B]``.
        """
        height, width = images.shape[-2:]

        def read(record: Record, relevance: Tensor, layout: TokenLayout, geometries: list[AttentionGeometry]) -> Tensor:
            if record.pixels is None:
                raise RuntimeError("the forward pass did not run through the patch embedding's convolution")
            embeddings = self._embedding_relevance(record, relevance, layout)  # [B, gh * gw, D]
            at_conv = embeddings.transpose(1, 2).reshape(embeddings.shape[0], -1, *layout.grid_size)
            proj = cast(Any, self.model).patch_embed.proj
            pixels = zb_conv_rule(at_conv, record.pixels.detach().float(), proj)
            return pixels.sum(dim=1)[:, :height, :width]  # the padding a dynamic_img_pad embedding adds, dropped

        return self._run(images, target, read)

    def _embedding_relevance(self, record: Record, relevance: Tensor, layout: TokenLayout) -> Tensor:
        """``[B, gh * gw, D]``: the relevance of each patch embedding (at the patch embedding's output)."""
        if record.embeddings is None:
            raise RuntimeError("the forward pass did not run through the patch embedding. Is this a stock timm model?")
        _, below = attention_relevances(record, relevance, BASELINE, lowest=0, to_input=True)
        prefix = layout.num_prefix_tokens
        embeddings = record.embeddings.detach().float().flatten(1, -2)  # [B, gh * gw, D]
        # ViT: embeddings + position embedding (plain LRP-0 split); Swin: the embeddings themselves
        tokens = record.blocks[0]["input"].detach().float().flatten(1, -2)[:, prefix:]
        return embeddings * safe_divide(cast(Tensor, below)[:, prefix:], tokens)
