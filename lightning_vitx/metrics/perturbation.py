"""Deletion, insertion (Petsiuk et al. 2018) and the positive/negative perturbation test (Chefer et al. 2021).

Patches are removed from (or inserted into) the image in order of relevance, in steps, and the model is asked
again at each step. The per-image curves are the functional forms' (:mod:`lightning_vitx.metrics.functional`);
these classes sum them over a data set.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_vitx._checks import check_choice
from lightning_vitx.metrics._common import CheckedBatch, check_batch, register_metric, warn_if_empty
from lightning_vitx.metrics.base import PerImageMetric
from lightning_vitx.metrics.curve_stream import CurveJob, curve_job
from lightning_vitx.metrics.functional.perturbation import (
    CHEFER_FRACTIONS,
    Baseline,
    Score,
    _area,
    _perturbation_update,
    check_options,
    make_baseline,
    perturbation_curves,
    relevance_order,
    steps_to_fractions,
    target_probability,
    top1_agreement,
)

__all__ = [
    "Deletion",
    "Insertion",
    "NegativePerturbation",
    "PerturbationAUC",
    "PositivePerturbation",
    "make_baseline",
    "perturbation_curves",
    "relevance_order",
]


class _PerturbationMetric(PerImageMetric):
    """Sum states of the curves; ``compute()`` -> ``{"score": AUC, "curve": mean curve, "fractions": x}``.

    ``last_sample_scores``: each usable image's AUC, as the functional forms give it.
    """

    curve_sum: Tensor

    def __init__(
        self,
        fractions: Sequence[float],
        baseline: Baseline,
        insert: bool,
        most_relevant_first: bool,
        score: Score,
        max_batch: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        values = check_options(fractions, baseline, max_batch)
        self.fractions = values
        self.baseline = baseline
        self.insert = insert
        self.most_relevant_first = most_relevant_first
        self.score_fn = score
        self.max_batch = max_batch
        self.add_state("curve_sum", torch.zeros(values.numel()), dist_reduce_fx="sum")
        self._given_curves: Tensor | None = None

    def update(
        self,
        model: nn.Module,
        images: Tensor,
        maps: Tensor,
        target: Tensor | int | None = None,
        masks: Tensor | None = None,
        *,
        curves: Tensor | None = None,
    ) -> None:
        """Add a batch (``PerImageMetric.update``); ``curves [n, S]``: its usable samples' curves, evaluated already.

        The monitor evaluates every explainer's curves in one stream (:meth:`curve_job`); without ``curves`` the
        metric evaluates its own.
        """
        self._given_curves = curves
        try:
            super().update(model, images, maps, target, masks)
        finally:
            self._given_curves = None

    def curve_job(
        self,
        model: nn.Module,
        images: Tensor,
        maps: Tensor,
        target: Tensor | int | None = None,
        substrate: Tensor | None = None,
    ) -> tuple[Tensor, CurveJob | None]:
        """What ``update`` would evaluate, to evaluate elsewhere: the usable samples ``keep [B]`` and their job.

        ``substrate [B, C, H, W]``: the batch's baseline images, when made already. The job is None when no
        sample is usable. Warnings about skipped samples are left to ``update``.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch = check_batch(type(self).__name__, maps, model=model, images=images, target=target)
        if batch.maps.shape[0] == 0:
            return batch.keep, None
        keep = batch.keep.to(images.device)
        shared = None if substrate is None else substrate[keep]
        job = curve_job(
            model, batch, self.fractions, self.baseline, self.insert, self.most_relevant_first, self.score_fn, shared
        )
        return batch.keep, job

    def score_batch(self, model: nn.Module, batch: CheckedBatch) -> Tensor:
        given = self._given_curves
        if given is not None:
            if given.shape != (batch.maps.shape[0], self.fractions.numel()):
                raise ValueError(
                    f"expected curves of the {batch.maps.shape[0]} usable samples at {self.fractions.numel()} "
                    f"steps, got {tuple(given.shape)}"
                )
            self.curve_sum += given.sum(dim=0).to(self.curve_sum)
            return _area(given, self.fractions)
        curves = _perturbation_update(
            model,
            batch,
            self.fractions,
            self.baseline,
            self.insert,
            self.most_relevant_first,
            self.score_fn,
            self.max_batch,
        )
        self.curve_sum += curves.sum(dim=0).to(self.curve_sum)
        return _area(curves, self.fractions)

    def compute(self) -> dict[str, Tensor]:
        warn_if_empty(self)
        curve = self.curve_sum / self.count
        fractions = self.fractions.to(curve.device)
        score = torch.trapezoid(curve, fractions) / (fractions[-1] - fractions[0])
        return {"score": score, "curve": curve, "fractions": fractions}


@register_metric(
    name="deletion",
    description="target probability as the most relevant patches are removed; area under the curve",
    reference="Petsiuk, Das & Saenko 2018, RISE (arXiv 1806.07421)",
)
class Deletion(_PerturbationMetric):
    """Deletion AUC: lower is better (a faithful map removes what the model needs first).

    Args:
        steps: number of equal steps; the curve has ``steps + 1`` points, both ends included (default 10%).
        baseline: what removed patches become: ``"blur"`` (default), ``"mean"``, ``"zeros"`` or ``"black"``.
        max_batch: perturbed images per forward pass.

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32,
        ...                           patch_size=8, depth=1)
        >>> metric = Deletion(steps=4)
        >>> metric.update(model, torch.randn(2, 3, 32, 32), torch.rand(2, 4, 4), target=torch.tensor([0, 2]))
        >>> result = metric.compute()
        >>> result["curve"].shape, bool(0 <= result["score"] <= 1)
        (torch.Size([5]), True)
    """

    higher_is_better = False

    def __init__(self, steps: int = 10, baseline: Baseline = "blur", max_batch: int = 64, **kwargs: Any) -> None:
        super().__init__(steps_to_fractions(steps), baseline, False, True, target_probability, max_batch, **kwargs)


@register_metric(
    name="insertion",
    description="target probability as the most relevant patches are put back into the baseline; AUC",
    reference="Petsiuk, Das & Saenko 2018, RISE (arXiv 1806.07421)",
)
class Insertion(_PerturbationMetric):
    """Insertion AUC: higher is better. Starts from the baseline (blurred image by default), inserts patches.

    Args:
        steps: number of equal steps; the curve has ``steps + 1`` points, both ends included.
        baseline: the starting image: ``"blur"`` (default), ``"mean"``, ``"zeros"`` or ``"black"``.
        max_batch: perturbed images per forward pass.
    """

    higher_is_better = True

    def __init__(self, steps: int = 10, baseline: Baseline = "blur", max_batch: int = 64, **kwargs: Any) -> None:
        super().__init__(steps_to_fractions(steps), baseline, True, True, target_probability, max_batch, **kwargs)


class PerturbationAUC(_PerturbationMetric):
    """Chefer et al.'s perturbation test: top-1 agreement with the target as 10%..90% of patches are removed.

    ``order="positive"`` removes the most relevant first (lower is better); ``"negative"`` the least relevant first
    (higher is better); ``PositivePerturbation`` and ``NegativePerturbation`` fix the order and declare the
    direction as ``higher_is_better``. Removed patches turn black (pixel 0 before normalisation) by default.
    The curve starts at 0% (the clean image's agreement) and the AUC is divided by the span of the fractions,
    so it is the mean agreement over the curve; the paper's numbers use their own integration, so compare
    conventions first.

    Args:
        order: ``"positive"`` or ``"negative"``.
        fractions: shares of patches removed at each step.
        baseline: ``"black"`` (default), ``"blur"``, ``"mean"`` or ``"zeros"``.
        max_batch: perturbed images per forward pass.
    """

    def __init__(
        self,
        order: Literal["positive", "negative"] = "positive",
        fractions: Sequence[float] = CHEFER_FRACTIONS,
        baseline: Baseline = "black",
        max_batch: int = 64,
        **kwargs: Any,
    ) -> None:
        check_choice("order", order, ("positive", "negative"))
        super().__init__(fractions, baseline, False, order == "positive", top1_agreement, max_batch, **kwargs)
        self.order = order


@register_metric(
    name="positive_perturbation",
    description="top-1 agreement as the most relevant patches are removed (10%..90%); AUC",
    reference="Chefer, Gur & Wolf 2021 (arXiv 2012.09838)",
)
class PositivePerturbation(PerturbationAUC):
    """``PerturbationAUC(order="positive")``: lower is better."""

    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(order="positive", **kwargs)


@register_metric(
    name="negative_perturbation",
    description="top-1 agreement as the least relevant patches are removed (10%..90%); AUC",
    reference="Chefer, Gur & Wolf 2021 (arXiv 2012.09838)",
)
class NegativePerturbation(PerturbationAUC):
    """``PerturbationAUC(order="negative")``: higher is better."""

    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(order="negative", **kwargs)
