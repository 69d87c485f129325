"""The LRP explainers' gradient-free pass, and its continuation from the first block down to the pixels.

``relevance_pass`` runs one recorded forward (no gradients, autocast off) and hands the relevance at the last
block's output to a reader. ``pixel_relevance`` is such a reader for every LRP explainer: the rules of ``relevance``
through every block, then the two steps below the blocks that the reference's ``relprop(method="full")`` takes:

- The position embedding's sum ``x + pos`` (ViT, DeiT: ``pos_drop``'s output; over the whole sequence, prefix
  tokens included, or over the patches alone for ``no_embed_class`` models) splits with the residual rule of the
  composite's ``EndsRule.position``: plain LRP-0 (``"baseline"``, ``layers_lrp``) or renormalised per sample
  (``"chefer"``, ``layers_ours.Add``).
  The prefix tokens' share is then dropped. Swin, and a ViT without a position embedding, have no such sum; every
  norm on the way (``norm_pre``, Swin's ``patch_embed.norm``) passes relevance, as in the rule sets.
- The patch convolution's z^B rule, bounded by each image's minimum and maximum (``ZBoxRule``), summed over RGB.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from lightning_vitx.adapters import Target, explaining_forward
from lightning_vitx.adapters.base import TokenLayout
from lightning_vitx.adapters.geometry import AttentionGeometry
from lightning_vitx.explainers.base import Explainer
from lightning_vitx.explainers.lrp.composites import Composite, classifier_heads, explicit
from lightning_vitx.explainers.lrp.relevance import Record, attention_relevances, recording, top_relevance
from lightning_vitx.explainers.lrp.rules import EndsRule, Head, ZBoxRule

__all__ = ["BaselinePass", "Reader", "check_pixel_rule", "embedding_relevance", "pixel_relevance", "relevance_pass"]

Reader = Callable[[Record, Tensor, TokenLayout, list[AttentionGeometry]], Tensor]


def relevance_pass(
    explainer: Explainer, heads: list[Head], images: Tensor, target: Target, composite: Composite, read: Reader
) -> Tensor:
    """One recorded forward without gradients, then ``read(record, relevance at the last block's output, ...)``."""
    with explaining_forward(explainer.adapter, images, target) as call:
        layout, geometries = explainer.adapter.layout(images), explainer.adapter.attention_geometries(images)
        with recording(cast(Any, explainer.model), heads) as record:
            call.forward()
        relevance = top_relevance(record, heads, call.target_ids, composite)
        return read(record, relevance, layout, geometries).float()


def _prefix_tokens(model: Any, batch: int, expected: int) -> Tensor:
    """``[B, prefix, D]``: the prefix tokens as timm concatenates them before adding the position embedding."""
    tokens = [getattr(model, name, None) for name in ("cls_token", "dist_token", "reg_token")]
    found = [token.detach().float().expand(batch, -1, -1) for token in tokens if token is not None]
    width = sum(token.shape[1] for token in found)
    if width != expected:
        raise RuntimeError(
            f"found {width} prefix tokens (cls_token, dist_token, reg_token) where the model has {expected}; "
            "is this a stock timm VisionTransformer?"
        )
    return torch.cat(found, dim=1)


def embedding_relevance(model: Any, record: Record, relevance: Tensor, composite: Composite) -> Tensor:
    """``[B, gh * gw, D]``: each patch embedding's relevance, from ``relevance`` at the last block's output.

    The composite's rules through every block (and Swin's mergings) to the first block's input, then the split of the
    position
    embedding's sum (module docstring); without one, the patch rows of the first block's input.
    """
    if record.embeddings is None:
        raise RuntimeError("the forward pass did not run through the patch embedding. Is this a stock timm model?")
    _, at_input = attention_relevances(record, relevance, composite, lowest=0, to_input=True)
    below = cast(Tensor, at_input)
    embeddings = record.embeddings.detach().float().flatten(1, -2)  # [B, gh * gw, D]
    patches = embeddings.shape[1]
    if record.sequence is None:
        return below[:, -patches:]
    sequence = record.sequence.detach().float()
    if getattr(model, "no_embed_class", False) or record.num_prefix_tokens == 0:  # the sum covers the patches
        summand, sequence, below = embeddings, sequence[:, -patches:], below[:, -patches:]
    else:  # timm's default: prefix tokens concatenated, then the position embedding added to all rows
        prefix = _prefix_tokens(model, embeddings.shape[0], record.num_prefix_tokens)
        summand = torch.cat([prefix, embeddings], dim=1)
    position = cast(EndsRule, composite.rule(model)).position
    if position is None:
        raise RuntimeError(f"the {composite.name!r} rules have no rule for this model's position embedding")
    at_summand, _ = position.split(below, summand, sequence - summand, total=sequence)
    return at_summand[:, -patches:]


def pixel_relevance(
    explainer: Explainer, heads: list[Head], images: Tensor, target: Target, composite: Composite
) -> Tensor:
    """``[B, H, W]`` float32, signed: the relevance of each pixel (summed over channels) under ``composite``.

    Summed over a patch's pixels it is the patch embedding's relevance summed over its channels, all of it up to
    the rules' ``1e-9`` stabiliser.
    """
    proj = check_pixel_rule(explainer.model, explainer.info.name)
    zbox: ZBoxRule = composite.rule(proj)
    height, width = images.shape[-2:]

    def read(record: Record, relevance: Tensor, layout: TokenLayout, geometries: list[AttentionGeometry]) -> Tensor:
        if record.pixels is None:
            raise RuntimeError("the forward pass did not run through the patch embedding's convolution")
        embeddings = embedding_relevance(explainer.model, record, relevance, composite)
        at_conv = embeddings.transpose(1, 2).reshape(embeddings.shape[0], -1, *layout.grid_size)
        pixels = zbox(at_conv, record.pixels.detach().float(), proj)
        return pixels.sum(dim=1)[:, :height, :width]  # the padding a dynamic_img_pad embedding adds, dropped

    return relevance_pass(explainer, heads, images, target, composite, read)


def check_pixel_rule(model: Any, name: str) -> nn.Conv2d:
    """The patch convolution, when ``ZBoxRule`` covers it; else a ``TypeError`` (the patch map still works)."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    reason = ZBoxRule.refuses(proj) if isinstance(proj, nn.Module) else "the model has no patch_embed.proj"
    if reason is not None:
        raise TypeError(f"{name}'s pixel map: {reason}; its patch map (calling the explainer) works on this model")
    return cast(nn.Conv2d, proj)


class BaselinePass(Explainer):
    """An explainer on one recorded forward (no gradients) and the LRP baselines' rules from the target logit down.

    Subclasses implement ``read``: the map ``[B, gh, gw]`` from the record, the relevance at the last block's
    output, the token layout and the blocks' attention geometries.
    """

    composite = explicit("baseline")

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.composite.check(self.model, self.info.name)
        self._heads = classifier_heads(self.model)

    def __call__(self, images: Tensor, target: Target = None) -> Tensor:
        return relevance_pass(self, self._heads, images, target, self.composite, self.read)

    def pixel_relevance(self, images: Tensor, target: Target = None) -> Tensor:
        """Relevance of each input pixel ``[B, H, W]`` (summed over channels), float32, signed.

        The baselines' rules through every block, the position embedding's sum (plain LRP-0) and the patch
        convolution (z^B, bounded by each image's minimum and maximum): the reference's ``generate_LRP(method=
        "full")`` on ``ViT_orig_LRP``, batched.

        Args:
            images: ``[B, 3, H, W]`` as the model takes them.
            target: ``None`` (predicted class), an ``int`` or ``LongTensor[B]``.
        """
        return pixel_relevance(self, self._heads, images, target, self.composite)

    def read(
        self, record: Record, relevance: Tensor, layout: TokenLayout, geometries: list[AttentionGeometry]
    ) -> Tensor:
        raise NotImplementedError
