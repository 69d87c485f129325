"""Deletion, insertion (Petsiuk et al. 2018) and the positive/negative perturbation test (Chefer et al. 2021).

Patches are removed from (or inserted into) the image in order of relevance, in steps, and the model is asked
again at each step. All steps of a batch go through the model in chunks of ``max_batch`` images, built lazily,
with no gradients and the model in eval mode (its flags restored afterwards). The classes in
:mod:`lightning_vitx.metrics.perturbation` sum these per-image curves over a data set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_vitx._checks import check_choice
from lightning_vitx._state import eval_mode
from lightning_vitx.metrics._common import (
    SCORED_NAN,
    CheckedBatch,
    PatchGeometry,
    check_batch,
    expand_patches,
    resolve_metric_target,
)

__all__ = [
    "CHEFER_FRACTIONS",
    "deletion",
    "insertion",
    "make_baseline",
    "negative_perturbation",
    "perturbation_curves",
    "positive_perturbation",
    "relevance_order",
]

Baseline = Literal["blur", "mean", "zeros", "black"]
Score = Callable[[Tensor, Tensor], Tensor]
CHEFER_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


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
    ranks = _ranks(order)
    scores = torch.empty(batch * steps, device=images.device)
    with torch.no_grad():
        for start in range(0, batch * steps, max_batch):
            index = torch.arange(start, min(start + max_batch, batch * steps), device=images.device)
            sample, step = index // steps, index % steps
            perturbed = _perturb(images, baseline, ranks, counts, geometry, insert, sample, step)
            scores[start : start + index.numel()] = score(model(perturbed), target[sample])
    return scores.view(batch, steps)


def _ranks(order: Tensor) -> Tensor:
    """Each patch's place ``[B, P]`` in ``order`` (``relevance_order``'s patch indices)."""
    batch, num_patches = order.shape
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(num_patches, device=order.device).expand(batch, -1))
    return ranks


def _perturb(
    images: Tensor,
    baseline: Tensor,
    ranks: Tensor,
    counts: Tensor,
    geometry: PatchGeometry,
    insert: bool,
    sample: Tensor,
    step: Tensor,
) -> Tensor:
    """The perturbed images ``[n, C, H, W]`` of samples ``sample [n]`` at steps ``step [n]``."""
    chosen = ranks[sample] < counts[step][:, None]  # [n, P]: patches removed (or inserted) at this step
    pixels = expand_patches(chosen.view(-1, *geometry.grid), geometry)[:, None]
    keep, other = (baseline, images) if insert else (images, baseline)
    return torch.where(pixels, other[sample], keep[sample])


def steps_to_fractions(steps: int) -> list[float]:
    """``steps`` equal steps over ``[0, 1]``, both ends included: ``steps + 1`` fractions."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return torch.linspace(0, 1, steps + 1).tolist()


def check_options(fractions: Sequence[float], baseline: Baseline, max_batch: int) -> Tensor:
    """Validate a perturbation metric's options; return the fractions as a float32 tensor."""
    values = torch.as_tensor(list(fractions), dtype=torch.float32)
    if values.numel() < 2 or (values < 0).any() or (values > 1).any() or (values.diff() <= 0).any():
        raise ValueError(f"fractions must increase within [0, 1] with at least two steps, got {list(fractions)}")
    check_choice("baseline", baseline, Baseline)
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return values


def _perturbation_update(
    model: nn.Module,
    batch: CheckedBatch,
    fractions: Tensor,
    baseline: Baseline,
    insert: bool,
    most_relevant_first: bool,
    score: Score,
    max_batch: int,
) -> Tensor:
    """The curves ``[n, S]`` of a checked batch's usable samples (at least one)."""
    images, target, order, substrate = _prepare(model, batch, baseline, most_relevant_first)
    with eval_mode(model), torch.no_grad():
        return perturbation_curves(
            model, images, substrate, order, fractions, batch.geometry, target, score, insert, max_batch
        )


def _prepare(
    model: nn.Module,
    batch: CheckedBatch,
    baseline: Baseline,
    most_relevant_first: bool,
    substrate: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(images, target, order, substrate)`` of a checked batch: what every perturbation curve starts from.

    ``substrate``: the baseline images when made already (the monitor makes each baseline once per batch).
    """
    images = batch.images
    if images is None:
        raise ValueError("the perturbation metrics need the images; pass images=...")
    with eval_mode(model), torch.no_grad():
        target = resolve_metric_target(batch.target, lambda: model(images), images.shape[0], images.device)
        order = relevance_order(batch.maps.to(images.device), most_relevant_first)
        substrate = make_baseline(images, baseline, model) if substrate is None else substrate
    return images, target, order, substrate


def _area(curves: Tensor, fractions: Tensor) -> Tensor:
    """The area under each curve ``[n, S] -> [n]``, divided by the span of the fractions (a mean score)."""
    return torch.trapezoid(curves, fractions.to(curves.device)) / float(fractions[-1] - fractions[0])


def _perturbation_scores(
    who: str,
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor | int | None,
    fractions: Sequence[float],
    baseline: Baseline,
    max_batch: int,
    *,
    insert: bool,
    most_relevant_first: bool,
    score: Score,
) -> Tensor:
    values = check_options(fractions, baseline, max_batch)
    batch = check_batch(who, maps, model=model, images=images, target=target, outcome=SCORED_NAN)
    scores = torch.full((maps.shape[0],), torch.nan, device=images.device)
    if batch.maps.shape[0]:
        curves = _perturbation_update(model, batch, values, baseline, insert, most_relevant_first, score, max_batch)
        scores[batch.keep.to(images.device)] = _area(curves, values)
    return scores


def deletion(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor | int | None = None,
    *,
    steps: int = 10,
    baseline: Baseline = "blur",
    max_batch: int = 64,
) -> Tensor:
    """Deletion AUC per image, ``[B]`` (lower is better): the target's probability as the most relevant go first.

    ``images [B, C, H, W]`` as the model takes them, ``maps [B, gh, gw]`` at the patch grid, ``target`` the class
    each map explains (None: the predicted class). The options are :class:`~lightning_vitx.metrics.Deletion`'s.
    Images or maps that cannot be scored (non-finite, or a map that ranks no patch) score NaN, with a warning.

    Example::

        >>> import timm
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32,
        ...                           patch_size=8, depth=1)
        >>> scores = deletion(model, torch.randn(2, 3, 32, 32), torch.rand(2, 4, 4), torch.tensor([0, 2]), steps=4)
        >>> scores.shape, bool(((0 <= scores) & (scores <= 1)).all())
        (torch.Size([2]), True)
    """
    fractions = steps_to_fractions(steps)
    return _perturbation_scores(
        "deletion",
        model,
        images,
        maps,
        target,
        fractions,
        baseline,
        max_batch,
        insert=False,
        most_relevant_first=True,
        score=target_probability,
    )


def insertion(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor | int | None = None,
    *,
    steps: int = 10,
    baseline: Baseline = "blur",
    max_batch: int = 64,
) -> Tensor:
    """Insertion AUC per image, ``[B]`` (higher is better): the most relevant patches go back into the baseline.

    Arguments and skipped samples as :func:`deletion`; the options are :class:`~lightning_vitx.metrics.Insertion`'s.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
        >>> insertion(model, torch.randn(3, 3, 4, 4), torch.rand(3, 2, 2), steps=4, baseline="zeros").shape
        torch.Size([3])
    """
    fractions = steps_to_fractions(steps)
    return _perturbation_scores(
        "insertion",
        model,
        images,
        maps,
        target,
        fractions,
        baseline,
        max_batch,
        insert=True,
        most_relevant_first=True,
        score=target_probability,
    )


def positive_perturbation(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor | int | None = None,
    *,
    fractions: Sequence[float] = CHEFER_FRACTIONS,
    baseline: Baseline = "black",
    max_batch: int = 64,
) -> Tensor:
    """Chefer et al.'s positive perturbation per image, ``[B]`` (lower is better): top-1 agreement, most relevant out.

    Arguments and skipped samples as :func:`deletion`; the options are
    :class:`~lightning_vitx.metrics.PerturbationAUC`'s.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
        >>> positive_perturbation(model, torch.randn(3, 3, 4, 4), torch.rand(3, 2, 2), baseline="zeros").shape
        torch.Size([3])
    """
    return _perturbation_scores(
        "positive_perturbation",
        model,
        images,
        maps,
        target,
        fractions,
        baseline,
        max_batch,
        insert=False,
        most_relevant_first=True,
        score=top1_agreement,
    )


def negative_perturbation(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor | int | None = None,
    *,
    fractions: Sequence[float] = CHEFER_FRACTIONS,
    baseline: Baseline = "black",
    max_batch: int = 64,
) -> Tensor:
    """Chefer et al.'s negative perturbation per image, ``[B]`` (higher is better): least relevant patches out first.

    Arguments and skipped samples as :func:`positive_perturbation`.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
        >>> negative_perturbation(model, torch.randn(3, 3, 4, 4), torch.rand(3, 2, 2), baseline="zeros").shape
        torch.Size([3])
    """
    return _perturbation_scores(
        "negative_perturbation",
        model,
        images,
        maps,
        target,
        fractions,
        baseline,
        max_batch,
        insert=False,
        most_relevant_first=False,
        score=top1_agreement,
    )
