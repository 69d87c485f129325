"""Localisation against ground-truth masks, per image: pointing game, relevance mass, Chefer et al.'s segmentation.

Maps are ``[B, gh, gw]`` at the patch grid and masks ``[B, H, W]`` at image size (bool, integer labels with a void
``ignore_index``, or float: see :func:`~lightning_vitx.metrics.as_masks`). A map that ranks no patch, or a mask with
no object pixel, scores NaN, with a warning. The classes in :mod:`lightning_vitx.metrics.localization` average these
scores over a data set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vitx.metrics._common import (
    SCORED_NAN,
    CheckedBatch,
    PatchGeometry,
    check_batch,
    check_ignore_index,
    patch_fraction,
)

__all__ = ["batched_average_precision", "pointing_game", "relevance_mass", "segmentation"]


def _pointing_game_update(geometry: PatchGeometry, maps: Tensor, masks: Tensor) -> Tensor:
    """``[n]``: 1 where the most relevant patch (ties: the first in row-major order) has a pixel in the mask."""
    best = maps.flatten(1).argmax(dim=1)  # the first maximum
    return (patch_fraction(masks, geometry).flatten(1).gather(1, best[:, None])[:, 0] > 0).float()


def _relevance_mass_update(geometry: PatchGeometry, maps: Tensor, masks: Tensor) -> Tensor:
    """``[n]``: ``sum_in_mask R+ / sum R+``, each patch's relevance spread evenly over its pixels (0 when R+ is 0)."""
    positive = maps.clamp(min=0).flatten(1)
    inside = (positive * patch_fraction(masks, geometry).flatten(1)).sum(dim=1)
    total = positive.sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def batched_average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Average precision per row, as ``sklearn.metrics.average_precision_score``: ``[B, M]`` x ``[B, M]`` -> ``[B]``.

    Tied scores form one threshold (precision and recall are taken at the end of each tie group).
    """
    order = scores.argsort(dim=1, descending=True, stable=True)
    sorted_scores = scores.gather(1, order)
    hits = labels.float().gather(1, order)
    true_positives = hits.cumsum(dim=1)
    ranks = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=torch.float32)
    precision = true_positives / ranks
    recall = true_positives / hits.sum(dim=1, keepdim=True).clamp_min(1)
    group_end = torch.ones_like(hits, dtype=torch.bool)
    group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    recall_at_ends = torch.where(group_end, recall, torch.zeros_like(recall))
    previous = torch.cat([torch.zeros_like(recall[:, :1]), recall_at_ends.cummax(dim=1).values[:, :-1]], dim=1)
    return (group_end * (recall - previous) * precision).sum(dim=1)


def _segmentation_update(geometry: PatchGeometry, maps: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """Chefer et al.'s segmentation counts per image (summed over a data set by ``SegmentationScores``).

    ``correct`` and ``labeled`` pixels ``[n]``, ``intersection`` and ``union`` ``[n, 2]`` (background, foreground),
    the average precision ``ap`` ``[n]``. The map is upsampled bilinearly to the image, min-max scaled and
    thresholded at its mean.
    """
    upsampled = F.interpolate(maps[:, None], size=geometry.image, mode="bilinear", align_corners=False)[:, 0]
    flat = upsampled.flatten(1)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    scaled = (flat - low) / (high - low).where(high > low, torch.ones_like(high))
    foreground = scaled > scaled.mean(dim=1, keepdim=True)
    truth = masks.flatten(1)
    pairs = [(~foreground, ~truth), (foreground, truth)]
    return {
        "correct": (foreground == truth).sum(dim=1),
        "labeled": torch.full((truth.shape[0],), truth.shape[1], dtype=torch.long, device=truth.device),
        "intersection": torch.stack([(predicted & actual).sum(dim=1) for predicted, actual in pairs], dim=1),
        "union": torch.stack([(predicted | actual).sum(dim=1) for predicted, actual in pairs], dim=1),
        "ap": batched_average_precision(torch.cat([1 - scaled, scaled], dim=1), torch.cat([~truth, truth], dim=1)),
    }


def _checked(who: str, maps: Tensor, masks: Tensor, ignore_index: int | None) -> CheckedBatch:
    check_ignore_index(ignore_index)
    return check_batch(who, maps, masks=masks, needs_masks=True, ignore_index=ignore_index, outcome=SCORED_NAN)


def _per_image(
    who: str,
    update: Callable[[PatchGeometry, Tensor, Tensor], Tensor],
    maps: Tensor,
    masks: Tensor,
    ignore_index: int | None,
) -> Tensor:
    batch = _checked(who, maps, masks, ignore_index)
    assert batch.masks is not None  # needs_masks: check_batch raised without them
    scores = torch.full((maps.shape[0],), torch.nan, device=maps.device)
    if batch.maps.shape[0]:
        scores[batch.keep] = update(batch.geometry, batch.maps.float(), batch.masks)
    return scores


def pointing_game(maps: Tensor, masks: Tensor, *, ignore_index: int | None = 255) -> Tensor:
    """Per image, ``[B]``: 1 when the most relevant patch (ties: the first, row-major) has a pixel in the mask, else 0.

    Example::

        >>> maps = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]])
        >>> masks = torch.zeros(2, 4, 4, dtype=torch.bool); masks[:, 0, 3] = True  # one pixel, top-right patch
        >>> pointing_game(maps, masks)
        tensor([1., 0.])
    """
    return _per_image("pointing_game", _pointing_game_update, maps, masks, ignore_index)


def relevance_mass(maps: Tensor, masks: Tensor, *, ignore_index: int | None = 255) -> Tensor:
    """Per image, ``[B]``: the share of the positive relevance inside the mask (each patch's spread over its pixels).

    Example::

        >>> maps = torch.tensor([[[3.0, 1.0], [-2.0, 0.0]]])
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool); masks[0, :2, :2] = True  # the top-left patch
        >>> relevance_mass(maps, masks)
        tensor([0.7500])
    """
    return _per_image("relevance_mass", _relevance_mass_update, maps, masks, ignore_index)


def segmentation(maps: Tensor, masks: Tensor, *, ignore_index: int | None = 255) -> dict[str, Tensor]:
    """Chefer et al.'s segmentation test per image: ``{"score", "pixel_accuracy", "miou", "map"}``, each ``[B]``.

    The keys are those of :class:`~lightning_vitx.metrics.SegmentationScores`'s ``compute()`` on the one image:
    ``miou`` (also ``score``) the mean of the background and foreground IoU, ``map`` the average precision of
    ``[1 - map, map]`` against ``[background, mask]``.

    Example::

        >>> maps = torch.tensor([[[0.9, 0.1], [0.6, 0.2]]])
        >>> scores = segmentation(maps, torch.tensor([[[True, True], [False, False]]]))
        >>> scores["pixel_accuracy"], scores["miou"]
        (tensor([0.5000]), tensor([0.3333]))
    """
    batch = _checked("segmentation", maps, masks, ignore_index)
    assert batch.masks is not None  # needs_masks: check_batch raised without them
    nan = torch.full((maps.shape[0],), torch.nan, device=maps.device)
    scores = {key: nan.clone() for key in ("pixel_accuracy", "miou", "map")}
    if batch.maps.shape[0]:
        counts = _segmentation_update(batch.geometry, batch.maps.float(), batch.masks)
        scores["pixel_accuracy"][batch.keep] = counts["correct"] / counts["labeled"]
        scores["miou"][batch.keep] = (counts["intersection"] / counts["union"]).mean(dim=1)
        scores["map"][batch.keep] = counts["ap"]
    return {"score": scores["miou"], **scores}
