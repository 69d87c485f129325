"""Patch interactions put to Ma et al. 2022's two uses: window sizes, and dropping the patches that matter least.

- ``interaction_windows``: per block, the side of the smallest square window around a patch that holds ``mass``
  of its interactions, averaged over the patches: what the paper reads off its ERF sizes to pick attention windows.
- ``patch_removal_curve``: accuracy as the patches with the least interaction are dropped from the token sequence
  (the paper's removal of indiscriminative patches), against dropping random patches. Dropping tokens (not blanking
  pixels) keeps the remaining patches as they were; timm's ViT runs on any number of tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_vitx._checks import check_choice
from lightning_vitx._state import eval_mode
from lightning_vitx.analysis.patch_interactions import PatchInteractions, patch_interactions
from lightning_vitx.explainers.patch_interaction import INDICATORS, Indicator

__all__ = ["PatchRemovalCurve", "interaction_windows", "patch_removal_curve"]

REMOVAL_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def interaction_windows(result: PatchInteractions, mass: float = 0.9) -> Tensor:
    """``[B, L]``: per image and block, the mean side of the smallest square window that holds a patch's interactions.

    The window (in patches) is centred on the patch and holds ``mass`` of what the patch takes in. Patches without
    interaction are left out (NaN when a block has none).

    Example::

        >>> from lightning_vitx.analysis.patch_interactions import PatchInteractions
        >>> grid = torch.zeros(1, 9, 9)  # a 3x3 grid: every patch takes in from the centre patch only
        >>> grid[0, :, 4] = 1.0
        >>> result = PatchInteractions([grid], [(3, 3)], [], [], [], torch.zeros(1), "attention", 0.9)
        >>> round(interaction_windows(result).item(), 4)  # the centre itself: side 1; the 8 others: side 3
        2.7778
    """
    windows = []
    for interactions, (height, width) in zip(result.interactions, result.grid_sizes, strict=True):
        rows = torch.arange(height * width, device=interactions.device) // width
        columns = torch.arange(height * width, device=interactions.device) % width
        reach = torch.maximum((rows[:, None] - rows[None]).abs(), (columns[:, None] - columns[None]).abs())
        values = interactions.float().clamp(min=0)
        total = values.sum(dim=-1)
        side = torch.full_like(total, float("nan"))
        for half in reversed(range(max(height, width))):  # the smallest half-width that holds the mass wins
            held = (values * (reach <= half)).sum(dim=-1) >= mass * total - 1e-6 * total
            side = torch.where(held & (total > 0), torch.tensor(2.0 * half + 1, device=side.device), side)
        windows.append(side.nanmean(dim=-1))
    return torch.stack(windows, dim=1)


@dataclass
class PatchRemovalCurve:
    """Accuracy (or agreement with the full image's prediction) as a share of the patch tokens is dropped.

    Attributes:
        fractions: ``[F]`` shares of the patches dropped.
        by_interaction: ``[F]`` when the patches with the least interaction go first.
        random: ``[F]`` when random patches go (seeded per image).
    """

    fractions: Tensor
    by_interaction: Tensor
    random: Tensor


def patch_removal_curve(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | None = None,
    fractions: Sequence[float] = REMOVAL_FRACTIONS,
    indicator: Indicator = "gradient",
    seed: int = 0,
) -> PatchRemovalCurve:
    """Accuracy as the least-interacting patch tokens are dropped, against random ones (module docstring).

    A patch's interaction is what it exchanges with the others over all blocks: the sum of its row and column of
    each block's interaction matrix (``patch_interactions``; each block normalised to sum 1 per image). The prefix
    tokens (class, registers) always stay.

    Args:
        model: a timm ``VisionTransformer`` (ViT, DeiT; class token or avg-pool head) without patch dropout.
        images: ``[B, 3, H, W]`` as the model takes them.
        labels: ``[B]`` classes; without them, agreement with the model's prediction on the whole image.
        fractions: shares of the patches to drop, each in ``[0, 1)``.
        indicator: the interaction indicator (``"gradient"`` or ``"attention"``).
        seed: the random order's seed (image ``b`` uses ``seed + b``).

    Example::

        >>> import timm
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=2, img_size=32,
        ...                           patch_size=8).eval()
        >>> curve = patch_removal_curve(model, torch.randn(4, 3, 32, 32), fractions=(0.0, 0.5))
        >>> curve.by_interaction[0].item(), curve.random.shape
        (1.0, torch.Size([2]))
    """
    from timm.models.vision_transformer import VisionTransformer

    check_choice("indicator", indicator, INDICATORS)
    if not isinstance(model, VisionTransformer) or not isinstance(model.patch_drop, nn.Identity):
        raise TypeError(
            "patch_removal_curve drops patch tokens from a timm VisionTransformer's sequence, got a "
            f"{type(model).__qualname__} (patch_drop: {type(getattr(model, 'patch_drop', None)).__name__}): "
            "windowed models (Swin) cannot run on a subset of their tokens; use a ViT made without patch_drop_rate"
        )
    if any(not 0.0 <= f < 1.0 for f in fractions):
        raise ValueError(f"fractions must lie in [0, 1), got {list(fractions)}")
    result = patch_interactions(model, images, labels, indicator=indicator)
    scores = torch.zeros(result.interactions[0].shape[:2], device=images.device)
    for interactions in result.interactions:
        normalised = interactions.float() / interactions.float().sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        scores += normalised.sum(dim=1) + normalised.sum(dim=2)
    patches = scores.shape[1]
    least_first = scores.argsort(dim=1, stable=True)
    random_first = torch.stack(
        [torch.randperm(patches, generator=torch.Generator().manual_seed(seed + b)) for b in range(len(images))]
    ).to(images.device)
    with torch.no_grad(), eval_mode(model):
        reference = labels if labels is not None else model(images).argmax(dim=1)
        curves: dict[str, list[Tensor]] = {"interaction": [], "random": []}
        for fraction in fractions:
            drop = round(fraction * patches)
            for name, order in (("interaction", least_first), ("random", random_first)):
                kept = order[:, drop:].sort(dim=1).values  # the kept patches, in their grid order
                with _kept_tokens(model, kept):
                    predicted = model(images).argmax(dim=1)
                curves[name].append((predicted == reference.to(predicted.device)).float().mean())
    return PatchRemovalCurve(
        torch.tensor(list(fractions)), torch.stack(curves["interaction"]).cpu(), torch.stack(curves["random"]).cpu()
    )


@contextmanager
def _kept_tokens(model: Any, kept: Tensor) -> Iterator[None]:
    """The sequence after the position embedding cut to the prefix tokens and ``kept`` patches ``[B, K]``."""
    prefix = int(model.num_prefix_tokens)

    def keep(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        index = kept[..., None].expand(-1, -1, output.shape[-1]) + prefix
        return torch.cat([output[:, :prefix], output.gather(1, index)], dim=1)

    handle = model.patch_drop.register_forward_hook(keep)
    try:
        yield
    finally:
        handle.remove()
