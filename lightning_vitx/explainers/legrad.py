"""LeGrad: each block's attention gradient of the target scored at that block, through the model's own head."""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from lightning_vitx._checks import check_choice
from lightning_vitx.adapters import Target, check_attention_recorded, explaining_forward
from lightning_vitx.adapters.geometry import AttentionGeometry
from lightning_vitx.explainers._registry import READOUT_FAMILIES, ExplainerInfo, register
from lightning_vitx.explainers.base import Explainer

__all__ = ["LeGrad"]

Pool = Literal["mean", "model"]
POOLS = ("mean", "model")


@register(
    ExplainerInfo(
        name="legrad",
        needs_gradients=True,
        readout=False,
        families=READOUT_FAMILIES,
        description="mean over blocks, heads and queries of ReLU(ds^l/dA^l), s^l: the model's head on block l's tokens",
        reference="Bousselham et al. 2024, LeGrad: an explainability method for vision transformers via feature "
        "formation sensitivity (arXiv 2404.03214)",
        callable_target=True,
    )
)
class LeGrad(Explainer):
    """``mean_l mean_{h,q} ReLU(ds^l / dA^l_h)[q, k]`` over the key patches ``k``, with ``s^l`` block ``l``'s score.

    ``s^l`` is the target read off the model's own final norm and head run on block ``l``'s output tokens (the
    paper's feature formation: ``norm``, then ``forward_head``); ``A^l`` is block ``l``'s attention after the
    softmax. The gradient itself is the signal (not multiplied by ``A``). One forward and one backward for every
    block: each selected block's input is cut from the graph below it, so the backward of ``sum_l s^l`` gives every
    ``ds^l / dA^l`` and nothing of the later scores.

    ``pool`` says which tokens the head reads at every block: ``"mean"`` (the authors' code and torchcam's: the mean
    of all the block's tokens, prefix tokens included, then the final norm and the head, as if every token were
    that mean), or ``"model"`` (the model's own pooling on the normed tokens: the class token, or the patch mean of
    an avg-pool head; the last block's score is then the model's logit, and with a class-token head only the readout
    query row has a gradient).

    Swin: the head reads the last stage's width, so the blocks are those of the last stage (an earlier
    ``start_layer`` raises); their window gradients are summed per key token through the shift and the padding
    (``AttentionGeometry``) and the map is spread to the first stage's grid as the other explainers do.

    Args:
        model: a timm ViT / DeiT / EVA / BEiT / relpos ViT / Swin.
        start_layer: first block whose score is used (negative counts from the last; default: every block whose
            tokens the head reads: all of them, the last stage's on Swin).
        pool: ``"mean"`` or ``"model"``.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> create("legrad", model)(torch.randn(2, 3, 224, 224), target=lambda out: out[:, 1] - out[:, 0]).shape
        torch.Size([2, 14, 14])
    """

    def __init__(self, model: nn.Module, start_layer: int | None = None, pool: Pool = "mean") -> None:
        super().__init__(model)
        check_choice("pool", pool, POOLS)
        self.pool: Pool = pool
        first = self._first_head_block()
        if start_layer is None:
            self.start_layer = first
            return
        self.start_layer = self._block_index(start_layer, "start_layer")
        if self.start_layer < first:
            raise ValueError(
                f"legrad runs the model's head on each block's tokens; on this {type(self.model).__name__} only "
                f"blocks {first}.. (its last stage) have the head's width, got start_layer={start_layer}"
            )

    def _first_head_block(self) -> int:
        """The first block whose output the final norm and head can read.

        Swin: its last stage's first block; CaiT: its first class-attention block (the adapter's ``first_head_block``).
        """
        first = getattr(self.adapter, "first_head_block", None)
        if first is not None:
            return int(first)
        stages = getattr(self.model, "layers", None)
        if self.adapter.family not in ("swin", "swinv2") or stages is None:
            return 0
        return len(self.adapter.blocks()) - len(cast(Any, stages)[-1].blocks)

    def head(self, tokens: Tensor) -> Tensor:
        """The model's outputs (logits, or features when it has no head) from one block's tokens ``[B, ..., D]``."""
        model = cast(Any, self.model)
        if self.pool == "mean":
            mean = tokens.mean(dim=tuple(range(1, tokens.ndim - 1)), keepdim=True)
            outputs: Tensor = model.forward_head(model.norm(mean).expand_as(tokens))
            return outputs
        outputs = model.forward_head(model.norm(tokens))
        return outputs

    def __call__(self, images: Tensor, target: Target = None) -> Tensor:
        blocks: list[Any] = self.adapter.blocks()
        attentions: list[Tensor] = []
        outputs: list[Tensor] = []

        def cut(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:  # leaves: no gradient reaches below
            # every tensor input (CaiT's class-attention blocks take the patches and the class token apart)
            return tuple(a.detach().requires_grad_(True) if isinstance(a, Tensor) else a for a in args)

        with explaining_forward(self.adapter, images, target, gradients=True, callable_target=True) as call:
            layout = self.adapter.layout(images)
            geometries: list[AttentionGeometry] = list(self.adapter.attention_geometries(images))
            handles = [
                cast(Any, attn).attn_drop.register_forward_hook(lambda m, i, output: attentions.append(output))
                for attn in self.adapter.attention_modules()
            ]
            for block in blocks[self.start_layer :]:
                handles.append(block.register_forward_pre_hook(cut))
                handles.append(block.register_forward_hook(lambda m, i, output: outputs.append(output)))
            try:
                call.forward()
            finally:
                for handle in handles:
                    handle.remove()
            check_attention_recorded(len(attentions), len(blocks))
            score = torch.stack([call.score(self.head(tokens)).sum() for tokens in outputs]).sum()
            grads = torch.autograd.grad(score, attentions[self.start_layer :])
            with torch.no_grad():
                batch, columns = images.shape[0], []
                for grad, geometry in zip(grads, geometries[self.start_layer :], strict=True):
                    positive = geometry.fold(grad.float(), batch).clamp(min=0).mean(dim=1)  # [B, ...keys]
                    queries = torch.ones(batch, geometry.num_tokens, device=positive.device)
                    columns.append(geometry.times(queries, positive) / geometry.num_tokens)  # mean over queries
                return layout.patch_map(torch.stack(columns).mean(dim=0), geometries[-1].grid_size).float()
