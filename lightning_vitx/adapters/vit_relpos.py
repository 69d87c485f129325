"""Adapter for timm's VisionTransformerRelPos (``vit_relpos_*``, ``vit_srelpos_*``): relative position bias."""

from __future__ import annotations

from torch import nn

from lightning_vitx.adapters._dense import DenseAdapter
from lightning_vitx.adapters.base import register_adapter

__all__ = ["RelPosViTAdapter"]


def _is_timm_relpos_vit(model: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer_relpos import VisionTransformerRelPos
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, VisionTransformerRelPos)


@register_adapter
class RelPosViTAdapter(DenseAdapter):
    """Reads blocks, token layout and attention off a timm ``VisionTransformerRelPos``.

    No absolute position embedding: each block's attention logits get a relative position bias (a table or a
    small MLP of log coordinates, per block or shared) before the softmax whose probabilities pass through
    ``attn_drop``. Most models have no class token and average the patch tokens; the ``*_cls_*`` ones read the
    class token. The ``*_rpn_*`` models use post-norm blocks (``ResPostRelPosBlock``: the norm follows each
    branch), which the explainers that read token states or LayerNorm statistics refuse.

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("vit_relpos_small_patch16_224", pretrained=False, depth=2)
        >>> RelPosViTAdapter(model).layout(torch.zeros(1, 3, 224, 224))
        TokenLayout(num_prefix_tokens=0, grid_size=(14, 14), readout='avg', readout_tokens=(), readout_grid_size=None)
    """

    family = "vit_relpos"
    description = "timm VisionTransformerRelPos (vit_relpos_*, vit_srelpos_*: relative position bias)"

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_timm_relpos_vit(model)

    @property
    def pre_norm(self) -> bool:
        from timm.models.vision_transformer_relpos import ResPostRelPosBlock

        return not any(isinstance(block, ResPostRelPosBlock) for block in self.blocks())
