"""Localisation against ground-truth masks: pointing game, relevance mass, Chefer et al.'s segmentation test."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_vitx.metrics._common import (
    METRICS,
    MetricInfo,
    PatchGeometry,
    as_masks,
    check_inputs,
    check_target,
    num_classes_of,
    patch_fraction,
    usable_samples,
    warn_if_empty,
)

__all__ = ["PointingGame", "RelevanceMass", "SegmentationScores", "batched_average_precision"]


class _MaskMetric(Metric):
    """Shared plumbing for the mask metrics.

    Validates inputs, drops samples with a non-finite image, a degenerate map (NaN/inf, all zero or constant:
    :func:`~lightning_vitx.metrics._common.degenerate_maps`) or an empty mask (counted in ``skipped``,
    with a warning) and, by default, averages a per-sample score (``sample_scores``) over all samples, which syncs
    as two sums. Which mask pixels are the object: see :func:`lightning_vitx.metrics._common.as_masks`; integer
    masks equal to ``ignore_index`` (255 by default, the "void" label of segmentation datasets) are not object.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    skipped: Tensor
    score_sum: Tensor
    count: Tensor

    def __init__(self, ignore_index: int | None = 255, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
        self.ignore_index = ignore_index
        self.add_state("skipped", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("score_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")
        self.last_sample_scores: Tensor | None = None

    def _valid(
        self, model: nn.Module, images: Tensor, maps: Tensor, masks: Tensor | None, target: Tensor | int | None
    ) -> tuple[PatchGeometry, Tensor, Tensor]:
        who = type(self).__name__
        if masks is None:
            raise ValueError(f"{who} needs ground-truth masks [B, H, W]; pass masks=...")
        geometry = check_inputs(model, images, maps, masks)
        check_target(target, images.shape[0], num_classes_of(model), who)
        masks = as_masks(masks, self.ignore_index).to(maps.device)
        usable = usable_samples(images, maps, who)
        empty = ~masks.flatten(1).any(dim=1)
        if empty.any():
            warnings.warn(
                f"{who}: {int(empty.sum())} of {masks.shape[0]} masks have no object pixel; those samples are "
                f"skipped (counted in `skipped`). Integer masks: 0 and ignore_index={self.ignore_index} are not "
                "object (pass ignore_index=None to count every non-zero value)",
                stacklevel=3,
            )
        keep = usable & ~empty
        self.skipped += (~keep).sum().to(self.skipped)
        return geometry, maps[keep].float(), masks[keep]

    def sample_scores(self, geometry: PatchGeometry, maps: Tensor, masks: Tensor) -> Tensor:
        """``[B]`` scores for valid samples; subclasses that average a per-sample score implement it."""
        raise NotImplementedError

    def update(
        self,
        model: nn.Module,
        images: Tensor,
        maps: Tensor,
        target: Tensor | int | None = None,
        masks: Tensor | None = None,
    ) -> None:
        """Add a batch: ``maps [B, gh, gw]`` at the patch grid, ``masks [B, H, W]`` at image size."""
        scores = self.sample_scores(*self._valid(model, images, maps, masks, target))
        self.last_sample_scores = scores
        self.score_sum += scores.sum().to(self.score_sum)
        self.count += float(scores.numel())

    def compute(self) -> dict[str, Tensor]:
        warn_if_empty(self)
        return {"score": self.score_sum / self.count}


@METRICS.register(
    MetricInfo(
        name="pointing_game",
        needs_masks=True,
        higher_is_better=True,
        description="share of maps whose most relevant patch overlaps the object mask",
        reference="Zhang et al. 2018, Top-down Neural Attention by Excitation Backprop (arXiv 1608.00507)",
    )
)
class PointingGame(_MaskMetric):
    """Hit when the most relevant patch (ties: the first in row-major order) has a pixel inside the mask.

    Example::

        >>> import torch
        >>> metric = PointingGame()
        >>> maps = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool); masks[0, 0, 3] = True
        >>> metric.update(torch.nn.Identity(), torch.zeros(1, 3, 4, 4), maps, masks=masks)
        >>> metric.compute()["score"]
        tensor(1.)
    """

    def sample_scores(self, geometry: PatchGeometry, maps: Tensor, masks: Tensor) -> Tensor:
        best = maps.flatten(1).argmax(dim=1)  # the first maximum
        return (patch_fraction(masks, geometry).flatten(1).gather(1, best[:, None])[:, 0] > 0).float()


@METRICS.register(
    MetricInfo(
        name="relevance_mass",
        needs_masks=True,
        higher_is_better=True,
        description="share of the positive relevance that falls inside the object mask",
        reference="Arras, Osman & Samek 2022, CLEVR-XAI (doi 10.1016/j.inffus.2021.11.008)",
    )
)
class RelevanceMass(_MaskMetric):
    """``sum_in_mask R+ / sum R+`` with each patch's relevance spread evenly over its pixels (0 when ``R+`` is 0).

    Example::

        >>> import torch
        >>> metric = RelevanceMass()
        >>> maps = torch.tensor([[[3.0, 1.0], [-2.0, 0.0]]])
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool); masks[0, :2, :2] = True  # the top-left patch
        >>> metric.update(torch.nn.Identity(), torch.zeros(1, 3, 4, 4), maps, masks=masks)
        >>> metric.compute()["score"]
        tensor(0.7500)
    """

    def sample_scores(self, geometry: PatchGeometry, maps: Tensor, masks: Tensor) -> Tensor:
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


@METRICS.register(
    MetricInfo(
        name="segmentation",
        needs_masks=True,
        higher_is_better=True,
        description="the map as a segmentation: pixel accuracy, mIoU (score) and mAP against the mask",
        reference="Chefer, Gur & Wolf 2021 (arXiv 2012.09838), after Guillaumin et al. 2014",
    )
)
class SegmentationScores(_MaskMetric):
    """Chefer et al.'s segmentation test.

    The map is upsampled bilinearly to the image, min-max scaled, and thresholded at its mean; pixel accuracy
    and the background/foreground IoU are accumulated over the data set,
    mAP is the mean over images of the average precision of ``[1 - map, map]`` against ``[background, mask]``.

    ``compute()`` returns ``{"score": mIoU, "pixel_accuracy", "miou", "map"}``.
    """

    correct: Tensor
    labeled: Tensor
    intersection: Tensor
    union: Tensor
    ap_sum: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, default in [("correct", 0.0), ("labeled", 0.0), ("ap_sum", 0.0)]:
            self.add_state(name, torch.tensor(default), dist_reduce_fx="sum")
        self.add_state("intersection", torch.zeros(2), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(2), dist_reduce_fx="sum")

    def update(
        self,
        model: nn.Module,
        images: Tensor,
        maps: Tensor,
        target: Tensor | int | None = None,
        masks: Tensor | None = None,
    ) -> None:
        geometry, maps, masks = self._valid(model, images, maps, masks, target)
        if maps.shape[0] == 0:
            return
        upsampled = F.interpolate(maps[:, None], size=geometry.image, mode="bilinear", align_corners=False)[:, 0]
        flat = upsampled.flatten(1)
        low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
        scaled = (flat - low) / (high - low).where(high > low, torch.ones_like(high))
        foreground = scaled > scaled.mean(dim=1, keepdim=True)
        truth = masks.flatten(1)
        self.correct += (foreground == truth).sum().to(self.correct)
        self.labeled += float(truth.numel())
        for index, (predicted, actual) in enumerate([(~foreground, ~truth), (foreground, truth)]):
            self.intersection[index] += (predicted & actual).sum().to(self.intersection)
            self.union[index] += (predicted | actual).sum().to(self.union)
        ap = batched_average_precision(torch.cat([1 - scaled, scaled], dim=1), torch.cat([~truth, truth], dim=1))
        self.last_sample_scores = ap
        self.ap_sum += ap.sum().to(self.ap_sum)
        self.count += float(ap.numel())

    def compute(self) -> dict[str, Tensor]:
        warn_if_empty(self)
        miou = (self.intersection / self.union).mean()
        return {
            "score": miou,
            "pixel_accuracy": self.correct / self.labeled,
            "miou": miou,
            "map": self.ap_sum / self.count,
        }
