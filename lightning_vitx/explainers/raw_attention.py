"""Raw attention: the readout row of one block's attention, heads averaged."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_vitx.adapters import Capture
from lightning_vitx.explainers._registry import READOUT_FAMILIES, ExplainerInfo, register
from lightning_vitx.explainers.base import ReadoutExplainer

__all__ = ["RawAttention"]


@register(
    ExplainerInfo(
        name="raw_attention",
        needs_gradients=False,
        readout=True,
        families=READOUT_FAMILIES,
        description="attention of the readout token(s) to the patches in the last block, mean over heads",
        reference="baseline in Chefer, Gur & Wolf 2021 (arXiv 2012.09838)",
        class_sensitive=False,
        callable_target=True,
    )
)
class RawAttention(ReadoutExplainer):
    """``mean_h A^l[readout, patches]`` for block ``layer`` (default the last).

    The readout row is the class token's, the mean of class and distillation rows for distilled DeiT, or the
    mean of the patch rows for average-pooled models (on Swin: of the chosen block's tokens).

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> create("raw_attention", model)(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 14, 14])
    """

    def __init__(self, model: nn.Module, layer: int = -1) -> None:
        super().__init__(model)
        self.layer = self._block_index(layer, "layer")

    def read(self, record: Capture) -> Tensor:
        attention = record.attentions[self.layer].mean(dim=1)
        readout = record.geometries[self.layer].times(record.readout_weights(self.layer), attention)
        return record.patch_map(readout, block=self.layer)
