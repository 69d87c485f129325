"""Adapter for timm's VisionTransformer family: ViT, DeiT (distilled too), register tokens, avg-pool heads."""

from __future__ import annotations

from typing import Any, Literal, cast

from torch import Tensor, nn

from lightning_vitx.adapters.base import TokenLayout, check_patch_embed_input, qualified_name, register_adapter
from lightning_vitx.adapters.geometry import DenseAttention

__all__ = ["VisionTransformerAdapter"]


def _is_timm_vit(model: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, VisionTransformer)


def _is_timm_patch_embed(module: nn.Module) -> bool:
    from timm.layers import PatchEmbed

    return isinstance(module, PatchEmbed)


@register_adapter
class VisionTransformerAdapter:
    """Reads token layout and attention modules off a timm ``VisionTransformer`` (``vit_*``, ``deit_*``).

    Geometry comes from the model: prefix tokens from ``num_prefix_tokens``, the grid from the patch embedding
    and the input size, the readout rows from ``global_pool`` (``'token'``: the class token, or class and
    distillation tokens for distilled DeiT; ``'avg'``: the mean of the patch tokens).

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
        >>> layout = VisionTransformerAdapter(model).layout(torch.zeros(1, 3, 224, 224))
        >>> layout.num_prefix_tokens, layout.grid_size, layout.readout_tokens
        (2, (14, 14), (0, 1))
    """

    family = "vit"
    description = (
        "timm VisionTransformer (vit_*, deit_* incl. distilled, register tokens, class_token=False with avg pool)"
    )

    def __init__(self, model: nn.Module) -> None:
        if not self.supports(model):
            raise TypeError(f"expected a timm VisionTransformer, got {type(model).__name__}")
        self.model = model
        self._vit: Any = cast(Any, model)  # timm attributes, read without nn.Module's __getattr__ typing
        self._check_head()
        if not _is_timm_patch_embed(self._vit.patch_embed):
            raise TypeError(
                f"lightning-vitx cannot explain this {qualified_name(model)}: its patch embedding is a "
                f"{type(self._vit.patch_embed).__name__} (a CNN stem before the tokens, a hybrid ViT), and the "
                "explainers read the patch grid and the input checks off a timm PatchEmbed. No explainer here "
                "supports hybrid ViTs yet; use a plain ViT (vit_*_patch16_*)."
            )
        for index, block in enumerate(self._vit.blocks):
            attn = getattr(block, "attn", None)
            if attn is None or not hasattr(attn, "attn_drop") or not hasattr(attn, "num_heads"):
                raise TypeError(
                    f"block {index} ({type(block).__name__}) has no timm Attention with an 'attn_drop' module, "
                    "so its attention probabilities cannot be recorded; use a model built from timm's Block."
                )

    def _check_head(self) -> None:
        pool = getattr(self.model, "global_pool", "token")
        if pool not in ("token", "avg"):
            raise ValueError(
                f"global_pool={pool!r} is not supported yet ({qualified_name(self.model)}): expected 'token' (class "
                "token), 'avg' (mean of patch tokens) or 'map' (attention pool). Create the model with one of them."
            )

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_timm_vit(model) and getattr(model, "attn_pool", None) is None  # attention pools: vit_map.py

    @property
    def num_classes(self) -> int:
        return int(self._vit.num_classes)

    @property
    def patch_size(self) -> tuple[int, int]:
        size = self._vit.patch_embed.patch_size
        return (int(size[0]), int(size[1]))

    def blocks(self) -> list[nn.Module]:
        return list(self._vit.blocks)

    def attention_modules(self) -> list[nn.Module]:
        return [block.attn for block in self._vit.blocks]

    def readout_tokens(self) -> tuple[int, ...]:
        if self._vit.global_pool == "avg":
            return ()
        # VisionTransformerDistilled averages the class-token and distillation-token heads at inference.
        return (0, 1) if getattr(self._vit, "dist_token", None) is not None else (0,)

    def check_images(self, images: Tensor) -> None:
        """Raise a ``ValueError`` that says how to fix an input this model can't take."""
        check_patch_embed_input(self._vit.patch_embed, images)

    def layout(self, images: Tensor) -> TokenLayout:
        self.check_images(images)
        height, width = images.shape[-2:]
        grid = self._vit.patch_embed.dynamic_feat_size((height, width))
        readout: Literal["token", "avg"] = "avg" if self._vit.global_pool == "avg" else "token"
        return TokenLayout(
            num_prefix_tokens=int(self._vit.num_prefix_tokens),
            grid_size=(int(grid[0]), int(grid[1])),
            readout=readout,
            readout_tokens=self.readout_tokens(),
        )

    def attention_geometries(self, images: Tensor) -> list[DenseAttention]:
        """One ``DenseAttention`` per block: every block attends over all tokens of the input's layout."""
        layout = self.layout(images)
        return [DenseAttention(layout.num_prefix_tokens, layout.grid_size)] * len(self._vit.blocks)
