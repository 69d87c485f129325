"""Adapter for timm's Beit (BEiT, BEiT v2): relative position bias inside attention, layer scale."""

from __future__ import annotations

from torch import nn

from lightning_vitx.adapters._dense import DenseAdapter
from lightning_vitx.adapters.base import register_adapter

__all__ = ["BeitAdapter"]


def _is_timm_beit(model: nn.Module) -> bool:
    try:
        from timm.models.beit import Beit
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, Beit)


@register_adapter
class BeitAdapter(DenseAdapter):
    """Reads blocks, token layout and attention off a timm ``Beit`` (``beit_*``, ``beitv2_*``).

    One class token before the patch grid; every block attends densely, its logits shifted by a relative
    position bias (per block, or shared) before the softmax whose probabilities pass through ``attn_drop``. The
    blocks' layer scales (``gamma_1``, ``gamma_2``) act before ``drop_path1`` / ``drop_path2``, so the token states
    read there are the scaled branches. The head reads the class token (``global_pool='token'``) or the mean of
    the patch tokens (``'avg'``, the default).

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("beit_base_patch16_224", pretrained=False, depth=2, embed_dim=64, num_heads=2)
        >>> BeitAdapter(model).layout(torch.zeros(1, 3, 224, 224))
        TokenLayout(num_prefix_tokens=1, grid_size=(14, 14), readout='avg', readout_tokens=(), readout_grid_size=None)
    """

    family = "beit"
    description = "timm Beit (beit_*, beitv2_*: relative position bias, layer scale; 'token' or 'avg' pool)"

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_timm_beit(model)
