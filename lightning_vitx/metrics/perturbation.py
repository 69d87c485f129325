"""Deletion, insertion (Petsiuk et al. 2018) and the positive/negative perturbation test (Chefer et al. 2021).

Patches are removed from (or inserted into) the image in order of relevance, in steps, and the model is asked
again at each step. All steps of a batch go through the model in chunks of ``max_batch`` images, built lazily,
with no gradients and the model in eval mode (its flags restored afterwards).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_vitx._checks import check_choice
from lightning_vitx._state import eval_mode
from lightning_vitx.metrics._common import (
    METRICS,
    MetricInfo,
    PatchGeometry,
    check_inputs,
    check_target,
    expand_patches,
    num_classes_of,
    resolve_metric_target,
    usable_samples,
    warn_if_empty,
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

Baseline = Literal["blur", "mean", "zeros", "black"]
Score = Callable[[Tensor, Tensor], Tensor]


def relevance_order(maps: Tensor, most_relevant_first: bool = True) -> Tensor:
    """Patch indices ``[B, P]`` by relevance; ties broken by patch index (row-major), so the order is reproducible."""
    flat = maps.flatten(1)
    return (-flat if most_relevant_first else flat).argsort(dim=1, stable=True)


def make_baseline(images: Tensor, kind: Baseline, model: nn.Module | None = None) -> Tensor:
    """What removed patches become, in the model's input space.

    ``blur``: Gaussian blur (kernel 11, sigma 5, as RISE); ``mean``: each image's per-channel mean; ``zeros``: 0 in
    the normalised space (the dataset mean, RISE's deletion substrate); ``black``: pixel value 0 before
    normalisation (Chefer et al.'s test), using the model's timm ``pretrained_cfg`` mean and std.
    """
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        side = min(images.shape[-2:])
        kernel = min(11, 2 * side - 1)  # odd, and reflect padding needs kernel // 2 < side
        return gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[5.0, 5.0])
    if kind == "mean":
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images)
    if kind == "zeros":
        return torch.zeros_like(images)
    if kind == "black":
        from lightning_vitx.adapters import model_mean_std

        if model is None:
            raise ValueError("baseline='black' needs the model for its normalisation")
        mean, std = model_mean_std(model)
        black = -torch.as_tensor(mean, dtype=images.dtype, device=images.device) / torch.as_tensor(
            std, dtype=images.dtype, device=images.device
        )
        return black[:, None, None].expand_as(images)
    check_choice("baseline", kind, Baseline)
    raise AssertionError("unreachable: every baseline is handled above")


def target_probability(logits: Tensor, target: Tensor) -> Tensor:
    return logits.float().softmax(dim=1).gather(1, target[:, None])[:, 0]


def top1_agreement(logits: Tensor, target: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == target).float()


def perturbation_curves(
    model: nn.Module,
    images: Tensor,
    baseline: Tensor,
    order: Tensor,
    fractions: Tensor,
    geometry: PatchGeometry,
    target: Tensor,
    score: Score,
    insert: bool = False,
    max_batch: int = 64,
) -> Tensor:
    """Scores ``[B, S]`` after removing (or, with ``insert``, inserting) the first ``fractions * P`` patches.

    Deleting replaces the chosen patches of ``images`` by ``baseline``; inserting starts from ``baseline`` and puts
    the chosen patches of ``images`` back. The ``B * S`` perturbed images are built and evaluated ``max_batch`` at a
    time.
    """
    batch, num_patches = order.shape
    steps = fractions.numel()
    counts = (fractions.to(images.device) * num_patches).round().long()
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(num_patches, device=order.device).expand(batch, -1))
    scores = torch.empty(batch * steps, device=images.device)
    with torch.no_grad():
        for start in range(0, batch * steps, max_batch):
            index = torch.arange(start, min(start + max_batch, batch * steps), device=images.device)
            sample, step = index // steps, index % steps
            chosen = ranks[sample] < counts[step][:, None]  # [n, P]: patches removed (or inserted) at this step
            pixels = expand_patches(chosen.view(-1, *geometry.grid), geometry)[:, None]
            keep, other = (baseline, images) if insert else (images, baseline)
            perturbed = torch.where(pixels, other[sample], keep[sample])
            scores[start : start + index.numel()] = score(model(perturbed), target[sample])
    return scores.view(batch, steps)


class _PerturbationMetric(Metric):
    """Sum states of the curves; ``compute()`` -> ``{"score": AUC, "curve": mean curve, "fractions": x}``."""

    is_differentiable = False
    full_state_update = False
    curve_sum: Tensor
    count: Tensor
    skipped: Tensor

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
        values = torch.as_tensor(list(fractions), dtype=torch.float32)
        if values.numel() < 2 or (values < 0).any() or (values > 1).any() or (values.diff() <= 0).any():
            raise ValueError(f"fractions must increase within [0, 1] with at least two steps, got {list(fractions)}")
        check_choice("baseline", baseline, Baseline)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.fractions = values
        self.baseline = baseline
        self.insert = insert
        self.most_relevant_first = most_relevant_first
        self.score_fn = score
        self.max_batch = max_batch
        self.last_sample_scores: Tensor | None = None
        self.add_state("curve_sum", torch.zeros(values.numel()), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("skipped", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(
        self,
        model: nn.Module,
        images: Tensor,
        maps: Tensor,
        target: Tensor | int | None = None,
        masks: Tensor | None = None,
    ) -> None:
        """Add a batch: ``images [B, C, H, W]`` as the model takes them, ``maps [B, gh, gw]`` at the patch grid."""
        who = type(self).__name__
        geometry = check_inputs(model, images, maps)
        num_classes = num_classes_of(model)
        if num_classes is None and target is not None:  # a model that does not say: ask it once
            with eval_mode(model), torch.no_grad():
                num_classes = int(model(images[:1]).shape[1])
        check_target(target, images.shape[0], num_classes, who)
        keep = usable_samples(images, maps, who)
        self.skipped += (~keep).sum().to(self.skipped)
        images, maps = images[keep.to(images.device)], maps[keep]
        if isinstance(target, Tensor):
            target = target[keep.to(target.device)]
        if images.shape[0] == 0:
            return
        with eval_mode(model), torch.no_grad():
            target_ids = resolve_metric_target(target, lambda: model(images), images.shape[0], images.device)
            baseline = make_baseline(images, self.baseline, model)
            order = relevance_order(maps.to(images.device), self.most_relevant_first)
            curves = perturbation_curves(
                model,
                images,
                baseline,
                order,
                self.fractions,
                geometry,
                target_ids,
                self.score_fn,
                self.insert,
                self.max_batch,
            )
        auc = torch.trapezoid(curves, self.fractions.to(curves.device)) / float(self.fractions[-1] - self.fractions[0])
        self.last_sample_scores = auc.detach()
        self.curve_sum += curves.sum(dim=0).to(self.curve_sum)
        self.count += float(curves.shape[0])

    def compute(self) -> dict[str, Tensor]:
        warn_if_empty(self)
        curve = self.curve_sum / self.count
        fractions = self.fractions.to(curve.device)
        score = torch.trapezoid(curve, fractions) / (fractions[-1] - fractions[0])
        return {"score": score, "curve": curve, "fractions": fractions}


def _steps_to_fractions(steps: int) -> list[float]:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return torch.linspace(0, 1, steps + 1).tolist()


@METRICS.register(
    MetricInfo(
        name="deletion",
        needs_masks=False,
        higher_is_better=False,
        description="target probability as the most relevant patches are removed; area under the curve",
        reference="Petsiuk, Das & Saenko 2018, RISE (arXiv 1806.07421)",
    )
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
        super().__init__(_steps_to_fractions(steps), baseline, False, True, target_probability, max_batch, **kwargs)


@METRICS.register(
    MetricInfo(
        name="insertion",
        needs_masks=False,
        higher_is_better=True,
        description="target probability as the most relevant patches are put back into the baseline; AUC",
        reference="Petsiuk, Das & Saenko 2018, RISE (arXiv 1806.07421)",
    )
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
        super().__init__(_steps_to_fractions(steps), baseline, True, True, target_probability, max_batch, **kwargs)


CHEFER_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


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


@METRICS.register(
    MetricInfo(
        name="positive_perturbation",
        needs_masks=False,
        higher_is_better=False,
        description="top-1 agreement as the most relevant patches are removed (10%..90%); AUC",
        reference="Chefer, Gur & Wolf 2021 (arXiv 2012.09838)",
    )
)
class PositivePerturbation(PerturbationAUC):
    """``PerturbationAUC(order="positive")``: lower is better."""

    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(order="positive", **kwargs)


@METRICS.register(
    MetricInfo(
        name="negative_perturbation",
        needs_masks=False,
        higher_is_better=True,
        description="top-1 agreement as the least relevant patches are removed (10%..90%); AUC",
        reference="Chefer, Gur & Wolf 2021 (arXiv 2012.09838)",
    )
)
class NegativePerturbation(PerturbationAUC):
    """``PerturbationAUC(order="negative")``: higher is better."""

    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(order="negative", **kwargs)
