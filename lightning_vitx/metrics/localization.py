"""Localisation against ground-truth masks: pointing game, relevance mass, Chefer et al.'s segmentation test.

The per-image maths are the functional forms' (:mod:`lightning_vitx.metrics.functional.localization`); these classes
average them over a data set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_vitx.metrics._common import (
    CheckedBatch,
    PatchGeometry,
    check_ignore_index,
    register_metric,
    warn_if_empty,
)
from lightning_vitx.metrics.base import PerImageMetric
from lightning_vitx.metrics.functional.localization import (
    _pointing_game_update,
    _relevance_mass_update,
    _segmentation_update,
    batched_average_precision,
)

__all__ = ["PointingGame", "RelevanceMass", "SegmentationScores", "batched_average_precision"]


class _MaskMetric(PerImageMetric):
    """Shared plumbing for the mask metrics: the mean of a per-sample score (``sample_scores``), as two sums.

    Samples with an empty mask are skipped too (counted in ``skipped``, with a warning). Which mask pixels are the
    object: see :func:`lightning_vitx.metrics.as_masks`; integer masks equal to ``ignore_index`` (255 by default,
    the "void" label of segmentation datasets) are not object.
    """

    needs_masks = True
    score_sum: Tensor

    def __init__(self, ignore_index: int | None = 255, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_ignore_index(ignore_index)
        self.ignore_index = ignore_index
        self.add_state("score_sum", torch.tensor(0.0), dist_reduce_fx="sum")

    def sample_scores(self, geometry: PatchGeometry, maps: Tensor, masks: Tensor) -> Tensor:
        """``[B]`` scores for valid samples; subclasses that average a per-sample score implement it."""
        raise NotImplementedError

    def score_batch(self, model: nn.Module, batch: CheckedBatch) -> Tensor:
        assert batch.masks is not None  # needs_masks: check_batch raised without them
        scores = self.sample_scores(batch.geometry, batch.maps.float(), batch.masks)
        self.score_sum += scores.sum().to(self.score_sum)
        return scores

    def compute(self) -> dict[str, Tensor]:
        warn_if_empty(self)
        return {"score": self.score_sum / self.count}


@register_metric(
    name="pointing_game",
    description="share of maps whose most relevant patch overlaps the object mask",
    reference="Zhang et al. 2018, Top-down Neural Attention by Excitation Backprop (arXiv 1608.00507)",
)
class PointingGame(_MaskMetric):
    """Hit when the most relevant patch (ties: the first in row-major order) has a pixel inside the mask.

    Per image: :func:`lightning_vitx.metrics.functional.pointing_game`.

    Example::

        >>> import torch
        >>> metric = PointingGame()
        >>> maps = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool); masks[0, 0, 3] = True
        >>> metric.update(torch.nn.Identity(), torch.zeros(1, 3, 4, 4), maps, masks=masks)
        >>> metric.compute()["score"]
        tensor(1.)
    """

    higher_is_better = True

    def sample_scores(self, geometry: PatchGeometry, maps: Tensor, masks: Tensor) -> Tensor:
        return _pointing_game_update(geometry, maps, masks)


@register_metric(
    name="relevance_mass",
    description="share of the positive relevance that falls inside the object mask",
    reference="Arras, Osman & Samek 2022, CLEVR-XAI (doi 10.1016/j.inffus.2021.11.008)",
)
class RelevanceMass(_MaskMetric):
    """``sum_in_mask R+ / sum R+`` with each patch's relevance spread evenly over its pixels (0 when ``R+`` is 0).

    Per image: :func:`lightning_vitx.metrics.functional.relevance_mass`.

    Example::

        >>> import torch
        >>> metric = RelevanceMass()
        >>> maps = torch.tensor([[[3.0, 1.0], [-2.0, 0.0]]])
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool); masks[0, :2, :2] = True  # the top-left patch
        >>> metric.update(torch.nn.Identity(), torch.zeros(1, 3, 4, 4), maps, masks=masks)
        >>> metric.compute()["score"]
        tensor(0.7500)
    """

    higher_is_better = True

    def sample_scores(self, geometry: PatchGeometry, maps: Tensor, masks: Tensor) -> Tensor:
        return _relevance_mass_update(geometry, maps, masks)


@register_metric(
    name="segmentation",
    description="the map as a segmentation: pixel accuracy, mIoU (score) and mAP against the mask",
    reference="Chefer, Gur & Wolf 2021 (arXiv 2012.09838), after Guillaumin et al. 2014",
)
class SegmentationScores(_MaskMetric):
    """Chefer et al.'s segmentation test.

    The map is upsampled bilinearly to the image, min-max scaled, and thresholded at its mean; pixel accuracy
    and the background/foreground IoU are accumulated over the data set,
    mAP is the mean over images of the average precision of ``[1 - map, map]`` against ``[background, mask]``.
    Per image: :func:`lightning_vitx.metrics.functional.segmentation`; ``last_sample_scores`` holds the APs.

    ``compute()`` returns ``{"score": mIoU, "pixel_accuracy", "miou", "map"}``.

    Example::

        >>> import torch
        >>> metric = SegmentationScores()
        >>> maps = torch.tensor([[[0.9, 0.1], [0.6, 0.2]]])
        >>> metric.update(torch.nn.Identity(), torch.zeros(1, 3, 2, 2), maps, masks=torch.tensor([[[1, 1], [0, 0]]]))
        >>> metric.compute()["pixel_accuracy"]
        tensor(0.5000)
    """

    higher_is_better = True
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

    def score_batch(self, model: nn.Module, batch: CheckedBatch) -> Tensor:
        assert batch.masks is not None  # needs_masks: check_batch raised without them
        counts = _segmentation_update(batch.geometry, batch.maps.float(), batch.masks)
        self.correct += counts["correct"].sum().to(self.correct)
        self.labeled += counts["labeled"].sum().to(self.labeled)
        self.intersection += counts["intersection"].sum(dim=0).to(self.intersection)
        self.union += counts["union"].sum(dim=0).to(self.union)
        self.ap_sum += counts["ap"].sum().to(self.ap_sum)
        return counts["ap"]

    def compute(self) -> dict[str, Tensor]:
        warn_if_empty(self)
        miou = (self.intersection / self.union).mean()
        return {
            "score": miou,
            "pixel_accuracy": self.correct / self.labeled,
            "miou": miou,
            "map": self.ap_sum / self.count,
        }
