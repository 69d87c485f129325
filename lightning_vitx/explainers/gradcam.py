"""Grad-CAM on the last block's attention: the ViT baseline of Chefer et al. 2021."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_vitx.adapters import Capture
from lightning_vitx.explainers._registry import READOUT_FAMILIES, ExplainerInfo, register
from lightning_vitx.explainers.base import ReadoutExplainer

__all__ = ["AttentionGradCAM"]


@register(
    ExplainerInfo(
        name="gradcam",
        needs_gradients=True,
        readout=True,
        families=READOUT_FAMILIES,
        description="Grad-CAM with heads as channels and the readout row of the attention as the feature map",
        reference="Selvaraju et al. 2017, as adapted to ViT by Chefer, Gur & Wolf 2021 (arXiv 2012.09838)",
        callable_target=True,
    )
)
class AttentionGradCAM(ReadoutExplainer):
    """Grad-CAM on attention: ``relu(mean_h(alpha_h * a_h))``.

    ``a_h`` is the readout row of head ``h``'s attention over the patches and ``alpha_h`` the mean over patches
    of its gradient with respect to the target logit.

    Args:
        model: a timm ViT / DeiT / Swin.
        layer: block whose attention is used (default: the last, as in Chefer et al.'s code).

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> bool((create("gradcam", model)(torch.randn(2, 3, 224, 224), target=3) >= 0).all())
        True
    """

    def __init__(self, model: nn.Module, layer: int = -1) -> None:
        super().__init__(model)
        self.layer = self._block_index(layer, "layer")

    def read(self, record: Capture) -> Tensor:
        geometry = record.geometries[self.layer]
        attention = record.attentions[self.layer]
        batch, heads = attention.shape[:2]
        weights = record.readout_weights(self.layer).repeat_interleave(heads, dim=0)

        def readout_rows(per_head: Tensor) -> Tensor:  # [B, heads, ...] -> [B, heads, N]
            return geometry.times(weights, per_head.flatten(0, 1)).unflatten(0, (batch, heads))

        activation = readout_rows(attention)
        gradient = readout_rows(record.require_gradients("gradcam")[self.layer])
        alpha = gradient[..., geometry.num_prefix_tokens :].mean(dim=-1, keepdim=True)
        cam = (alpha * activation).mean(dim=1).clamp(min=0)
        return record.patch_map(cam, block=self.layer)
