"""What the adapters of ViT-like families with dense attention share (EVA, BEiT, relpos ViT).

Blocks in ``model.blocks``, a timm ``PatchEmbed``, prefix tokens before a row-major patch grid, a class-token or
average-pool head.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, cast

from torch import Tensor, nn

from lightning_vitx.adapters.base import TokenLayout, check_patch_embed_input, qualified_name
from lightning_vitx.adapters.geometry import DenseAttention

__all__ = ["DenseAdapter"]


class DenseAdapter:
    """Reads a dense-attention model whose blocks sit in ``model.blocks`` and whose attention has ``attn_drop``.

    Subclasses name the timm class (``supports``), the ``family`` and a ``description``; ``pre_norm`` says whether
    each block normalises its input before attention and MLP (the token states and LayerNorm statistics the
    capture pass reads assume it).
    """

    family: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, model: nn.Module) -> None:
        if not self.supports(model):
            raise TypeError(f"expected a {self.description}, got {qualified_name(model)}")
        self.model = model
        self._model: Any = cast(Any, model)  # timm attributes, read without nn.Module's __getattr__ typing
        pool = getattr(model, "global_pool", None)
        if getattr(model, "attn_pool", None) is not None or pool not in ("token", "avg"):
            raise ValueError(
                f"lightning-vitx cannot explain this {qualified_name(model)} with global_pool={pool!r}: the "
                "explainers read the head as the class token ('token') or the mean of the patch tokens ('avg'). "
                "Create the model with global_pool='token' or 'avg'."
            )
        for index, block in enumerate(self._model.blocks):
            attn = getattr(block, "attn", None)
            if attn is None or not isinstance(getattr(attn, "attn_drop", None), nn.Module):
                raise TypeError(
                    f"block {index} ({type(block).__name__}) of this {qualified_name(model)} has no attention with "
                    "an 'attn_drop' module, so its attention probabilities cannot be recorded"
                )

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    @property
    def pre_norm(self) -> bool:
        return True

    @property
    def num_classes(self) -> int:
        return int(self._model.num_classes)

    @property
    def patch_size(self) -> tuple[int, int]:
        size = self._model.patch_embed.patch_size
        return (int(size[0]), int(size[1]))

    def blocks(self) -> list[nn.Module]:
        return list(self._model.blocks)

    def attention_modules(self) -> list[nn.Module]:
        return [block.attn for block in self._model.blocks]

    def check_images(self, images: Tensor) -> None:
        """Raise a ``ValueError`` that says how to fix an input this model can't take."""
        check_patch_embed_input(self._model.patch_embed, images)

    def layout(self, images: Tensor) -> TokenLayout:
        self.check_images(images)
        grid = self._model.patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))
        readout: Literal["token", "avg"] = "avg" if self._model.global_pool == "avg" else "token"
        return TokenLayout(
            num_prefix_tokens=int(self._model.num_prefix_tokens),
            grid_size=(int(grid[0]), int(grid[1])),
            readout=readout,
            readout_tokens=(0,) if readout == "token" else (),
        )

    def attention_geometries(self, images: Tensor) -> list[DenseAttention]:
        """One ``DenseAttention`` per block: every block attends over all tokens of the input's layout."""
        layout = self.layout(images)
        return [DenseAttention(layout.num_prefix_tokens, layout.grid_size)] * len(self._model.blocks)
