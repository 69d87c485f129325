"""Input checks, patch geometry and the registry shared by the metrics and their functional forms."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vitx._registry import Registry
from lightning_vitx._state import eval_mode
from lightning_vitx.adapters.forward import check_target

__all__ = [
    "METRICS",
    "SCORED_NAN",
    "SKIPPED",
    "CheckedBatch",
    "MetricInfo",
    "PatchGeometry",
    "as_masks",
    "check_batch",
    "check_ignore_index",
    "check_inputs",
    "check_maps_and_masks",
    "check_target",
    "DEGENERATE_KINDS",
    "FLAT_SPREAD",
    "degenerate_maps",
    "expand_patches",
    "num_classes_of",
    "register_metric",
    "usable_samples",
    "warn_if_empty",
]

MetricT = TypeVar("MetricT", bound=type)


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of one registered metric."""

    name: str
    needs_masks: bool
    higher_is_better: bool
    description: str
    reference: str


METRICS: Registry[MetricInfo] = Registry("metric")


def register_metric(name: str, description: str, reference: str) -> Callable[[MetricT], MetricT]:
    """Class decorator: register a metric under ``name``.

    ``needs_masks`` and ``higher_is_better`` are read from the class's attributes, so each is stated once.
    """

    def decorate(cls: MetricT) -> MetricT:
        higher_is_better = getattr(cls, "higher_is_better", None)
        if not isinstance(higher_is_better, bool):
            raise TypeError(f"{cls.__name__} must set the class attribute higher_is_better to True or False")
        info = MetricInfo(
            name=name,
            needs_masks=bool(getattr(cls, "needs_masks", False)),
            higher_is_better=higher_is_better,
            description=description,
            reference=reference,
        )
        return METRICS.register(info)(cls)

    return decorate


@dataclass(frozen=True)
class PatchGeometry:
    """How a ``[gh, gw]`` map tiles an ``[H, W]`` image."""

    grid: tuple[int, int]
    patch: tuple[int, int]
    image: tuple[int, int]


def _model_grid(model: nn.Module, images: Tensor) -> tuple[int, int] | None:
    from lightning_vitx.adapters import detect

    try:
        adapter = detect(model)
    except TypeError:
        return None  # any classifier works; the grid then comes from the maps
    return adapter.layout(images).grid_size


def check_inputs(model: nn.Module, images: Tensor, maps: Tensor, masks: Tensor | None = None) -> PatchGeometry:
    """Validate shapes; return the patch geometry. Maps must be at the model's patch grid."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [B, C, H, W], got {list(images.shape)}")
    return _check_grid(maps, images.shape[0], images.shape[-2:], _model_grid(model, images), masks)


def check_maps_and_masks(maps: Tensor, masks: Tensor) -> PatchGeometry:
    """Validate maps ``[B, gh, gw]`` against masks ``[B, H, W]`` (no model: the grid must tile ``H x W`` evenly)."""
    if masks.ndim not in (3, 4):
        raise ValueError(f"expected masks of shape [B, H, W] (one per image, at image size), got {list(masks.shape)}")
    return _check_grid(maps, masks.shape[0], masks.shape[-2:], None, masks)


def _check_grid(
    maps: Tensor, batch: int, size: Sequence[int], expected: tuple[int, int] | None, masks: Tensor | None
) -> PatchGeometry:
    if maps.ndim != 3 or maps.shape[0] != batch:
        raise ValueError(f"expected maps of shape [{batch}, gh, gw], got {list(maps.shape)}")
    height, width = int(size[0]), int(size[1])
    grid = (int(maps.shape[1]), int(maps.shape[2]))
    if expected is not None and expected != grid:
        raise ValueError(
            f"maps have a {grid[0]}x{grid[1]} grid but the model's patch grid for {height}x{width} images is "
            f"{expected[0]}x{expected[1]}: pass the explainer's maps as they come, at the patch grid"
        )
    if expected is None and (height % grid[0] or width % grid[1]):
        raise ValueError(f"a {grid[0]}x{grid[1]} map does not tile {height}x{width} images evenly")
    if masks is not None:
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.shape != (batch, height, width):
            raise ValueError(
                f"expected masks of shape [{batch}, {height}, {width}] (one per image, at image size), "
                f"got {list(masks.shape)}"
            )
    patch = (math.ceil(height / grid[0]), math.ceil(width / grid[1]))
    return PatchGeometry(grid=grid, patch=patch, image=(height, width))


def check_ignore_index(ignore_index: int | None) -> None:
    """Raise ``TypeError`` unless ``ignore_index`` (the void label of integer masks) is an int or None."""
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")


def as_masks(masks: Tensor, ignore_index: int | None = 255) -> Tensor:
    """``[B, H, W]`` or ``[B, 1, H, W]`` -> bool ``[B, H, W]``: which pixels are the object.

    Bool masks: True. Integer masks: any value other than 0 and ``ignore_index`` (the "void" label of segmentation
    datasets, 255 by default; void pixels count as not object), except a batch whose only values are 0 and
    ``ignore_index``: that is a binary mask (a 0/255 PNG), and ``ignore_index`` is the object. Float masks: values
    above 0.5.

    Example::

        >>> as_masks(torch.tensor([[[0, 255], [255, 0]]], dtype=torch.uint8)).tolist()  # a binary PNG mask
        [[[False, True], [True, False]]]
        >>> as_masks(torch.tensor([[[0, 255], [3, 0]]], dtype=torch.uint8)).tolist()  # class 3, void 255
        [[[False, False], [True, False]]]
    """
    if masks.ndim == 4:
        masks = masks[:, 0]
    if masks.dtype == torch.bool:
        return masks
    if masks.dtype.is_floating_point:
        return masks > 0.5
    objects = masks != 0
    if ignore_index is not None and bool(((masks == 0) | (masks == ignore_index)).all()):
        return objects  # 0 and ignore_index only: binary
    return objects & (masks != ignore_index) if ignore_index is not None else objects


def expand_patches(patch_values: Tensor, geometry: PatchGeometry) -> Tensor:
    """``[B, gh, gw]`` -> ``[B, H, W]``: each patch's value over its pixels (nearest upsampling, cropped)."""
    ph, pw = geometry.patch
    pixels = patch_values.repeat_interleave(ph, dim=-2).repeat_interleave(pw, dim=-1)
    return pixels[..., : geometry.image[0], : geometry.image[1]]


def patch_fraction(masks: Tensor, geometry: PatchGeometry) -> Tensor:
    """Share of each patch's pixels inside the mask: ``[B, H, W]`` bool -> ``[B, gh, gw]``."""
    ph, pw = geometry.patch
    height, width = geometry.image
    padded = F.pad(masks.float()[:, None], (0, geometry.grid[1] * pw - width, 0, geometry.grid[0] * ph - height))
    return F.avg_pool2d(padded, kernel_size=(ph, pw))[:, 0]


# A map whose spread (max - min) is at most this share of its largest magnitude ranks no patch above another: its
# differences are float32 rounding (eps 1.2e-7) summed over a few dozen terms. Weak but real signals sit far above
# it (transformer attribution's offset-dominated Swin maps spread 8e-4 of their value).
FLAT_SPREAD = 1e-5
DEGENERATE_KINDS = ("nonfinite", "zero", "flat")
_DESCRIBED = {"nonfinite": "contain NaN or inf", "zero": "are all zero", "flat": "are constant"}


def degenerate_maps(maps: Tensor) -> dict[str, Tensor]:
    """Which maps rank no patch above another: ``{"nonfinite", "zero", "flat"}`` -> bool ``[B]``, disjoint.

    ``nonfinite``: a NaN or inf anywhere; ``zero``: every value 0; ``flat``: ``max - min <= FLAT_SPREAD * max|map|``
    (a constant, to float32 rounding). Every metric skips such maps and counts them in ``skipped``: ordering
    patches by a map that has no order would score the raster scan that breaks the ties.

    Example::

        >>> maps = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 3.0), torch.eye(2), torch.eye(2) * torch.nan])
        >>> for kind, flags in degenerate_maps(maps).items():
        ...     print(kind, flags.tolist())
        nonfinite [False, False, False, True]
        zero [True, False, False, False]
        flat [False, True, False, False]
    """
    values = maps.flatten(1)
    nonfinite = ~torch.isfinite(values).all(dim=1)
    values = torch.where(nonfinite[:, None], torch.zeros_like(values), values)
    peak = values.abs().amax(dim=1) if values.shape[1] else torch.zeros(values.shape[0], device=values.device)
    zero = ~nonfinite & (peak == 0)
    spread = values.amax(dim=1) - values.amin(dim=1) if values.shape[1] else peak
    flat = ~nonfinite & ~zero & (spread <= FLAT_SPREAD * peak)
    return {"nonfinite": nonfinite, "zero": zero, "flat": flat}


# What happens to a sample that cannot be scored: the metric classes skip and count it, the functional forms give NaN.
SKIPPED = "those samples are skipped (counted in `skipped`)"
SCORED_NAN = "those samples score NaN"


def usable_samples(images: Tensor | None, maps: Tensor, who: str, outcome: str = SKIPPED) -> Tensor:
    """Boolean ``[B]``: the samples a metric scores, with a finite image and a map that ranks patches.

    Maps that do not (:func:`degenerate_maps`) are skipped and counted; a warning says how many and why.
    ``images=None``: no image to check (the mask metrics' functional forms).
    """
    if images is None:
        finite_images = torch.ones(maps.shape[0], dtype=torch.bool, device=maps.device)
    else:
        finite_images = torch.isfinite(images).flatten(1).all(dim=1).to(maps.device)
    faults = degenerate_maps(maps)
    total, parts = maps.shape[0], []
    if bad := int((~finite_images).sum()):
        parts.append(f"{bad} of {total} images contain NaN or inf")
    for kind in DEGENERATE_KINDS:
        if bad := int(faults[kind].sum()):
            parts.append(f"{bad} of {total} maps {_DESCRIBED[kind]}")
    if parts:
        warnings.warn(f"{who}: {'; '.join(parts)}; {outcome}", stacklevel=4)
    return finite_images & ~(faults["nonfinite"] | faults["zero"] | faults["flat"])


@dataclass(frozen=True)
class CheckedBatch:
    """A checked batch: its patch geometry, which samples are usable, and the usable samples' inputs.

    ``keep``: bool ``[B]`` on the maps' device. ``maps``: ``[n, gh, gw]`` as given. ``images``: ``[n, C, H, W]``
    for the metrics that run the model, else None. ``target``: as given, cut to the usable samples when a tensor.
    ``masks``: bool ``[n, H, W]`` on the maps' device for the metrics that need masks, else None.
    """

    geometry: PatchGeometry
    keep: Tensor
    maps: Tensor
    images: Tensor | None
    target: Tensor | int | None
    masks: Tensor | None


def check_batch(
    who: str,
    maps: Tensor,
    *,
    model: nn.Module | None = None,
    images: Tensor | None = None,
    target: Tensor | int | None = None,
    masks: Tensor | None = None,
    needs_masks: bool = False,
    ignore_index: int | None = 255,
    outcome: str = SKIPPED,
) -> CheckedBatch:
    """Validate a batch and keep the samples a metric can score, with a warning for the others.

    Shapes (:func:`check_inputs`, or :func:`check_maps_and_masks` without images) and the target
    (:func:`check_target`; a model that does not state its class count is asked once, unless the metric needs masks:
    those run no forward) raise. Samples with a non-finite image, a map that ranks no patch
    (:func:`degenerate_maps`) or, where masks are needed, a mask with no object pixel (:func:`as_masks`) are left out.
    ``masks`` are ignored unless ``needs_masks``.
    """
    if needs_masks and masks is None:
        raise ValueError(f"{who} needs ground-truth masks [B, H, W]; pass masks=...")
    masks = masks if needs_masks else None
    if images is not None and model is not None:
        geometry = check_inputs(model, images, maps, masks)
    elif masks is not None:
        geometry = check_maps_and_masks(maps, masks)
    else:
        raise TypeError(f"{who}: pass the model and images, or masks")
    num_classes = None if model is None else num_classes_of(model)
    if num_classes is None and model is not None and images is not None and target is not None and not needs_masks:
        with eval_mode(model), torch.no_grad():  # a model that does not say: ask it once
            num_classes = int(model(images[:1]).shape[1])
    check_target(target, maps.shape[0], num_classes, who)
    if masks is not None:
        masks = as_masks(masks, ignore_index).to(maps.device)
    keep = usable_samples(images, maps, who, outcome)
    if masks is not None:
        empty = ~masks.flatten(1).any(dim=1)
        if empty.any():
            warnings.warn(
                f"{who}: {int(empty.sum())} of {masks.shape[0]} masks have no object pixel; {outcome}. Integer "
                f"masks: 0 and ignore_index={ignore_index} are not object (pass ignore_index=None to count every "
                "non-zero value)",
                stacklevel=3,
            )
        keep = keep & ~empty
    everything = bool(keep.all())  # then nothing is copied

    def kept(values: Tensor) -> Tensor:
        return values if everything else values[keep.to(values.device)]

    if isinstance(target, Tensor) and target.ndim == 0:
        target = target.expand(maps.shape[0])
    return CheckedBatch(
        geometry=geometry,
        keep=keep,
        maps=kept(maps),
        images=None if images is None or needs_masks else kept(images),
        target=kept(target) if isinstance(target, Tensor) else target,
        masks=None if masks is None else kept(masks),
    )


def warn_if_empty(metric: Any) -> None:
    """Warn that ``compute()`` gives NaN when no sample was usable (all skipped, or no update)."""
    if float(metric.count) == 0:
        warnings.warn(
            f"{type(metric).__name__}: no usable sample ({int(metric.skipped)} skipped); the score is NaN",
            stacklevel=3,
        )


def num_classes_of(model: nn.Module) -> int | None:
    """The model's class count where it says (timm's ``num_classes``), else None."""
    count = getattr(model, "num_classes", None)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else None


def resolve_metric_target(
    target: Tensor | int | None, logits_fn: Callable[[], Tensor], batch: int, device: torch.device
) -> Tensor:
    """``None`` -> the predicted class (one clean forward); an int -> for all; a tensor -> as ``LongTensor[B]``.

    The target is checked first (:func:`check_target`).
    """
    if target is None:
        return logits_fn().argmax(dim=1)
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    return target.to(device=device, dtype=torch.long)
