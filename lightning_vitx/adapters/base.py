"""What an explainer needs to know about an architecture: the token layout and how to reach the attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lightning_vitx.adapters.geometry import AttentionGeometry, spread

__all__ = ["Adapter", "TokenLayout", "check_patch_embed_input", "detect", "qualified_name", "register_adapter"]


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of one forward pass sit, and which of them the classifier head reads.

    Args:
        num_prefix_tokens: tokens before the patch tokens (class, distillation and register tokens).
        grid_size: patch grid ``(gh, gw)`` of this input; the patch tokens follow the prefix in row-major order.
        readout: ``"token"`` when the head reads the rows in ``readout_tokens``; ``"avg"`` when it averages the
            patch tokens; ``"map"`` when an attention-pool head (a learned query) weighs the tokens by its attention,
            a row that depends on the input (``Capture.readout_weights`` reads it off the pass).
        readout_tokens: indices of the prefix tokens the head reads (``(0,)`` for ViT, ``(0, 1)`` for distilled
            DeiT, whose logits are the mean of the class and distillation heads). Empty for ``"avg"``.
        readout_grid_size: grid of the tokens the head averages when the model merges patches on the way (Swin's
            last stage); ``None``: the patch grid.

    Example::

        >>> layout = TokenLayout(num_prefix_tokens=1, grid_size=(2, 2), readout="token", readout_tokens=(0,))
        >>> layout.num_tokens
        5
        >>> layout.readout_weights(batch_size=1)
        tensor([[1., 0., 0., 0., 0.]])
    """

    num_prefix_tokens: int
    grid_size: tuple[int, int]
    readout: Literal["token", "avg", "map"]
    readout_tokens: tuple[int, ...] = ()
    readout_grid_size: tuple[int, int] | None = None

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    def readout_weights(
        self, batch_size: int, device: torch.device | str | None = None, grid_size: tuple[int, int] | None = None
    ) -> Tensor:
        """The row vector ``w`` with ``w @ tokens`` = what the head reads: ``[B, N]``, sums to 1.

        ``N`` counts the tokens of the last block. A head that averages merged tokens (Swin) reads every token of
        a block alike: ``grid_size`` picks the grid of an earlier block to weigh (default: the readout grid).
        """
        if self.readout_grid_size is not None:
            rows, cols = grid_size or self.readout_grid_size
            return torch.full((batch_size, rows * cols), 1.0 / (rows * cols), device=device)
        if self.readout == "map":
            raise ValueError(
                "an attention-pool head weighs the tokens by its own attention, which depends on the input: read "
                "its readout row off a capture pass (Capture.readout_weights)"
            )
        weights = torch.zeros(self.num_tokens, device=device)
        if self.readout == "token":
            weights[list(self.readout_tokens)] = 1.0 / len(self.readout_tokens)
        else:
            weights[self.num_prefix_tokens :] = 1.0 / self.num_patches
        return weights.expand(batch_size, -1).clone()

    def patch_map(self, token_scores: Tensor, grid_size: tuple[int, int] | None = None) -> Tensor:
        """Drop the prefix columns and fold the patch columns: ``[B, N]`` -> ``[B, gh, gw]``.

        ``grid_size``: the grid the scores lie on when it is a merged (coarser) one (Swin's later stages); they are
        spread back to the patch grid (``adapters.geometry.spread``).
        """
        if grid_size is not None and tuple(grid_size) != self.grid_size:
            token_scores = spread(token_scores, grid_size, self.grid_size)
        if token_scores.shape[-1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} token scores, got {token_scores.shape[-1]}")
        patches = token_scores[..., self.num_prefix_tokens :]
        return patches.reshape(*token_scores.shape[:-1], *self.grid_size)


@runtime_checkable
class Adapter(Protocol):
    """The architecture facts every explainer reads: blocks, attention modules, token layout, classes."""

    model: nn.Module
    family: str

    @property
    def num_classes(self) -> int: ...

    def blocks(self) -> list[nn.Module]: ...

    def attention_modules(self) -> list[nn.Module]: ...

    def layout(self, images: Tensor) -> TokenLayout: ...

    def check_images(self, images: Tensor) -> None: ...

    def attention_geometries(self, images: Tensor) -> list[AttentionGeometry]: ...


def qualified_name(model: object) -> str:
    """``module.ClassName`` of ``model``'s class, as error messages name it (``timm.models.eva.Eva``)."""
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_patch_embed_input(patch_embed: Any, images: Tensor) -> None:
    """Raise a ``ValueError`` that says how to fix ``images`` a timm ``PatchEmbed`` can't take."""
    in_chans = patch_embed.proj.in_channels
    if images.ndim != 4:
        hint = " Add a batch dimension with images.unsqueeze(0)." if images.ndim == 3 else ""
        raise ValueError(f"expected images of shape [B, {in_chans}, H, W], got {list(images.shape)}.{hint}")
    if images.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} channels, got images of shape {list(images.shape)}")
    height, width = images.shape[-2:]
    img_size = patch_embed.img_size
    if img_size is not None and patch_embed.strict_img_size and (height, width) != tuple(img_size):
        raise ValueError(
            f"this model takes {img_size[0]}x{img_size[1]} images, got {height}x{width}. Resize the images, "
            f"or create the model with img_size=({height}, {width}) or dynamic_img_size=True."
        )
    ph, pw = patch_embed.patch_size
    if not patch_embed.dynamic_img_pad and (height % ph or width % pw):
        raise ValueError(
            f"image size {height}x{width} is not a multiple of the patch size {ph}x{pw}; resize or crop it, "
            "or create the model with dynamic_img_pad=True."
        )


_ADAPTERS: list[type] = []


def register_adapter(cls: type) -> type:
    """Class decorator: make ``detect`` try this adapter (its ``supports(model)`` classmethod decides)."""
    if cls in _ADAPTERS:
        raise ValueError(f"adapter {cls.__name__} is already registered")
    _ADAPTERS.append(cls)
    return cls


def detect(model: nn.Module) -> Adapter:
    """Return the adapter for ``model`` or raise a ``TypeError`` that lists what is supported.

    Example::

        >>> import timm
        >>> from lightning_vitx.adapters import detect
        >>> detect(timm.create_model("vit_tiny_patch16_224", pretrained=False)).family
        'vit'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module (a timm vision transformer), got {type(model).__name__}")
    inner = getattr(model, "module", None)  # DistributedDataParallel / DataParallel wrappers
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) and isinstance(inner, nn.Module):
        model = inner
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):  # a torch.compile wrapper: its original module
        model = model._orig_mod  # type: ignore[assignment]
    for cls in _ADAPTERS:
        if cls.supports(model):  # type: ignore[attr-defined]
            return cls(model)
    supported = "; ".join(cls.description for cls in _ADAPTERS)  # type: ignore[attr-defined]
    raise TypeError(
        f"lightning-vitx cannot explain a {type(model).__name__} ({qualified_name(model)}): no adapter reads its "
        f"architecture. Supported: {supported}. Create one with timm.create_model('vit_small_patch16_224', ...)."
    )
