"""Adapter for timm's SwinTransformer: shifted-window attention, patch merging between stages, avg-pool head."""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

from lightning_vitx.adapters.base import TokenLayout, check_patch_embed_input, qualified_name, register_adapter
from lightning_vitx.adapters.geometry import WindowedAttention

__all__ = ["SwinTransformerAdapter"]


def _is_timm_swin(model: nn.Module) -> bool:
    try:
        from timm.models.swin_transformer import SwinTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, SwinTransformer)


@register_adapter
class SwinTransformerAdapter:
    """Reads the stages, windows and shifts off a timm ``SwinTransformer`` (``swin_*``, timm >= 0.9 NHWC layout).

    Swin has no class token: the head averages the last stage's tokens. Maps come out at the first stage's grid
    (``224 / 4 = 56`` for the 224 models); each block's attention is recorded per window and mapped back to
    token positions through its cyclic shift (``adapters.geometry.WindowedAttention``).

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
        >>> SwinTransformerAdapter(model).layout(torch.zeros(1, 3, 224, 224))
        TokenLayout(num_prefix_tokens=0, grid_size=(56, 56), readout='avg', readout_tokens=(), readout_grid_size=(7, 7))
    """

    family = "swin"
    description = "timm SwinTransformer (swin_*, window attention with shifts and patch merging, global_pool='avg')"

    def __init__(self, model: nn.Module) -> None:
        if not self.supports(model):
            raise TypeError(f"expected a {self.description}, got {qualified_name(model)}")
        self.model = model
        self._swin: Any = cast(Any, model)
        if self._swin.global_pool != "avg":
            raise ValueError(
                f"lightning-vitx cannot explain this {qualified_name(model)}: global_pool={self._swin.global_pool!r} "
                "is not supported, the explainers read the head as the mean "
                "of the last stage's tokens. Create the model with global_pool='avg' (timm's default)."
            )
        for index, block in enumerate(self.blocks()):
            attn = getattr(block, "attn", None)
            if attn is None or not hasattr(attn, "attn_drop") or not hasattr(block, "shift_size"):
                raise TypeError(
                    f"block {index} ({type(block).__name__}) is not a timm SwinTransformerBlock with a WindowAttention "
                    "'attn_drop' module, so its attention probabilities cannot be recorded."
                )

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_timm_swin(model)

    @property
    def num_classes(self) -> int:
        return int(self._swin.num_classes)

    def blocks(self) -> list[nn.Module]:
        return [block for stage in self._swin.layers for block in stage.blocks]

    def attention_modules(self) -> list[nn.Module]:
        return [cast(Any, block).attn for block in self.blocks()]

    def merging_norms(self) -> dict[int, nn.Module]:
        """``{block index: LayerNorm}``: the patch-merging norm in front of each stage, keyed by its first block."""
        norms: dict[int, nn.Module] = {}
        first = 0
        for stage in self._swin.layers:
            norm = getattr(stage.downsample, "norm", None)
            if isinstance(norm, nn.LayerNorm) and len(stage.blocks):
                norms[first] = norm
            first += len(stage.blocks)
        return norms

    def check_images(self, images: Tensor) -> None:
        """Raise a ``ValueError`` that says how to fix an input this model can't take."""
        check_patch_embed_input(self._swin.patch_embed, images)

    def stage_grids(self, images: Tensor) -> list[tuple[int, int]]:
        """Token grid of each stage for this input: the patch grid, halved (rounded up) at each patch merging."""
        self.check_images(images)
        grid = self._swin.patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))
        height, width = int(grid[0]), int(grid[1])
        grids = []
        for stage in self._swin.layers:
            if not isinstance(stage.downsample, nn.Identity):
                height, width = -(-height // 2), -(-width // 2)
            grids.append((height, width))
        return grids

    def layout(self, images: Tensor) -> TokenLayout:
        grids = self.stage_grids(images)
        return TokenLayout(num_prefix_tokens=0, grid_size=grids[0], readout="avg", readout_grid_size=grids[-1])

    def attention_geometries(self, images: Tensor) -> list[WindowedAttention]:
        """One ``WindowedAttention`` per block, with the window and shift the block runs with."""
        geometries = []
        for grid, stage in zip(self.stage_grids(images), self._swin.layers, strict=True):
            for block in stage.blocks:
                geometries.append(WindowedAttention(grid, tuple(block.window_size), tuple(block.shift_size)))
        return geometries
