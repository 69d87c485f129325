"""Attention rollout (Abnar & Zuidema 2020)."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_vitx._checks import check_choice
from lightning_vitx.adapters import Capture
from lightning_vitx.explainers._propagation import (
    HEAD_FUSIONS,
    HeadFusion,
    discard_lowest,
    fuse_heads,
    propagate_rollout,
)
from lightning_vitx.explainers._registry import READOUT_FAMILIES, ExplainerInfo, register
from lightning_vitx.explainers.base import ReadoutExplainer

__all__ = ["AttentionRollout"]


@register(
    ExplainerInfo(
        name="rollout",
        needs_gradients=False,
        readout=True,
        families=READOUT_FAMILIES,
        description="product of the head-fused attention of every block, with the residual as identity",
        reference="Abnar & Zuidema 2020, Quantifying Attention Flow in Transformers (arXiv 2005.00928)",
        class_sensitive=False,
        callable_target=True,
    )
)
class AttentionRollout(ReadoutExplainer):
    """Rollout ``w Â^L ... Â^s`` with ``Â = rownorm(fuse_h(A) + I)``, read at the patch columns.

    Args:
        model: a timm ViT / DeiT / Swin.
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"`` over heads.
        discard_ratio: share of the smallest fused entries set to 0 per block and sample (vit-explain's option);
            the rows and columns of prefix tokens are kept. On Swin the share counts every window's entries.
        start_layer: first block included (Chefer et al.'s evaluation uses 1); negative counts from the end.

    Differences from the reference code: jacobgil/vit-explain divides column ``j`` by the sum of row ``j``
    (a broadcasting slip) and discards on batch item 0 only, protecting only the CLS-to-CLS entry; here rows are
    normalised, each sample is discarded on its own, and prefix rows and columns are protected. With mean fusion
    and no discarding all three agree.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> maps = create("rollout", model, discard_ratio=0.9)(torch.randn(2, 3, 224, 224))
        >>> maps.shape, maps.dtype
        (torch.Size([2, 14, 14]), torch.float32)
    """

    def __init__(
        self,
        model: nn.Module,
        head_fusion: HeadFusion = "mean",
        discard_ratio: float = 0.0,
        start_layer: int = 0,
    ) -> None:
        super().__init__(model)
        check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
        if not 0.0 <= discard_ratio < 1.0:
            raise ValueError(f"discard_ratio must lie in [0, 1), got {discard_ratio}")
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)
        self.start_layer = self._block_index(start_layer, "start_layer")

    def read(self, record: Capture) -> Tensor:
        geometries = record.geometries[self.start_layer :]
        fused = [
            discard_lowest(fuse_heads(a, self.head_fusion), self.discard_ratio, g.num_prefix_tokens)
            for a, g in zip(record.attentions[self.start_layer :], geometries, strict=True)
        ]
        rolled = propagate_rollout(record.readout_weights(), fused, geometries)
        return record.patch_map(rolled, block=self.start_layer)
