"""Adapter for timm's Eva (EVA, EVA-02 and the rope ViTs): rotary position embedding inside attention, SwiGLU."""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from lightning_vitx.adapters._dense import DenseAdapter
from lightning_vitx.adapters.base import register_adapter

__all__ = ["EvaAdapter"]


def _is_timm_eva(model: nn.Module) -> bool:
    try:
        from timm.models.eva import Eva
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, Eva)


@register_adapter
class EvaAdapter(DenseAdapter):
    """Reads blocks, token layout and attention off a timm ``Eva`` (``eva_*``, ``eva02_*``, ``vit_*_rope_*``).

    Every block attends densely over the prefix and patch tokens; the rotary embedding rotates the patch tokens'
    queries and keys inside ``EvaAttention`` / ``AttentionRope``, before the softmax whose probabilities pass
    through ``attn_drop`` (recorded there with fused attention off, as for ViT). The head reads the class token
    (``global_pool='token'``) or the mean of the patch tokens (``'avg'``, EVA-02's default). Per-head attention
    outputs are read at the input of the attention's inner norm (``attn.norm``, an identity unless
    ``scale_attn_inner``), before the optional sigmoid gate mixes them.

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=2)
        >>> EvaAdapter(model).layout(torch.zeros(1, 3, 224, 224))
        TokenLayout(num_prefix_tokens=1, grid_size=(16, 16), readout='avg', readout_tokens=(), readout_grid_size=None)
    """

    family = "eva"
    description = "timm Eva (eva_*, eva02_*, vit_*_rope_*: rotary position embedding, SwiGLU; 'token' or 'avg' pool)"

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_timm_eva(model)

    @property
    def pre_norm(self) -> bool:
        from timm.models.eva import EvaBlockPostNorm

        return not any(isinstance(block, EvaBlockPostNorm) for block in self.blocks())

    def head_output_modules(self) -> list[nn.Module]:
        """Per block, the module whose input is the attention output per head, ``[B, N, heads * head_dim]``."""
        return [cast(Any, attn).norm for attn in self.attention_modules()]
