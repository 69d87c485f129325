"""Metrics against hand-computed values: a toy model whose logit is a known linear function of the patches."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_vitx.metrics as M
from lightning_vitx.metrics.localization import batched_average_precision

WEIGHTS = torch.tensor([3.0, 1.0, -1.0, 0.5])  # one per patch of a 2x2 grid over a 4x4 image


class PatchLinear(nn.Module):
    """logit_0 = sum_p WEIGHTS[p] * mean(image over patch p), logit_1 = 0."""

    def forward(self, images):
        means = F.avg_pool2d(images.mean(dim=1, keepdim=True), 2).flatten(1)
        logit = means @ WEIGHTS
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def sig(x):
    return 1 / (1 + math.exp(-x))


def auc(values):  # trapezoid over equal steps on [0, 1]
    return (sum(values) - values[0] / 2 - values[-1] / 2) / (len(values) - 1)


IMAGES = torch.ones(1, 3, 4, 4)
IDEAL = WEIGHTS.view(1, 2, 2)
TARGET = torch.tensor([0])


def score(name, maps, **options):
    metric = M.create(name, **options)
    metric.update(PatchLinear(), IMAGES, maps, TARGET)
    return metric.compute()


def test_deletion_closed_form():
    # ideal order removes patches 0, 1, 3, 2: the logit goes 3.5, 0.5, -0.5, -1, 0
    result = score("deletion", IDEAL, steps=4, baseline="zeros")
    expected = [sig(3.5), sig(0.5), sig(-0.5), sig(-1.0), sig(0.0)]
    torch.testing.assert_close(result["curve"], torch.tensor(expected))
    torch.testing.assert_close(result["score"], torch.tensor(auc(expected)))
    reversed_result = score("deletion", -IDEAL, steps=4, baseline="zeros")  # logit 3.5, 4.5, 4, 3, 0
    torch.testing.assert_close(reversed_result["score"], torch.tensor(auc([sig(v) for v in [3.5, 4.5, 4, 3, 0]])))


def test_insertion_closed_form():
    # ideal order inserts patches 0, 1, 3, 2 into zeros: the logit goes 0, 3, 4, 4.5, 3.5
    result = score("insertion", IDEAL, steps=4, baseline="zeros")
    torch.testing.assert_close(result["score"], torch.tensor(auc([sig(v) for v in [0, 3, 4, 4.5, 3.5]])))


def test_perturbation_auc_closed_form():
    fractions = (0.0, 0.25, 0.5, 0.75)
    # positive: agreement (logit > 0) 1, 1, 0, 0 -> (0.25 + 0.125) / 0.75
    positive = score("positive_perturbation", IDEAL, fractions=fractions, baseline="zeros")
    torch.testing.assert_close(positive["curve"], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(positive["score"], torch.tensor(0.5))
    # negative: least relevant first (2, 3, 1, 0): logit 3.5, 4.5, 4, 3 -> always agrees
    negative = score("negative_perturbation", IDEAL, fractions=fractions, baseline="zeros")
    torch.testing.assert_close(negative["score"], torch.tensor(1.0))


def test_ideal_beats_random_beats_reversed():
    generator = torch.Generator().manual_seed(0)
    for name, better in [
        ("deletion", min),
        ("insertion", max),
        ("positive_perturbation", min),
        ("negative_perturbation", max),
    ]:
        options = {"baseline": "zeros"}
        if "perturbation" in name:
            options["fractions"] = (0.0, 0.25, 0.5, 0.75)
        else:
            options["steps"] = 4
        ideal, reverse = score(name, IDEAL, **options)["score"], score(name, -IDEAL, **options)["score"]
        assert better(ideal, reverse) == ideal and ideal != reverse, name
        for _ in range(10):
            random = score(name, torch.rand(1, 2, 2, generator=generator), **options)["score"]
            assert min(ideal, reverse) <= random <= max(ideal, reverse), name


def test_ties_break_by_patch_index():
    order = M.relevance_order(torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]))
    assert order.tolist() == [[1, 2, 0, 3]]
    assert M.relevance_order(torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]), most_relevant_first=False).tolist() == [
        [0, 3, 1, 2]
    ]


MASK = torch.zeros(1, 4, 4, dtype=torch.bool)
MASK[0, :2, :2] = True  # the whole top-left patch
MASK[0, 0, 2] = True  # one pixel of the top-right patch


def localise(name, maps, masks=MASK, images=IMAGES):
    metric = M.create(name)
    metric.update(PatchLinear(), images, maps, TARGET, masks)
    return metric.compute()


def test_pointing_game_exact():
    assert localise("pointing_game", torch.tensor([[[0.0, 5.0], [1.0, 1.0]]]))["score"] == 1.0  # one pixel is enough
    assert localise("pointing_game", torch.tensor([[[0.0, 1.0], [5.0, 1.0]]]))["score"] == 0.0
    # a constant map points nowhere: skipped, not scored as the first patch (which touches the mask here)
    metric = M.create("pointing_game")
    with pytest.warns(UserWarning, match="1 of 1 maps are constant"):
        metric.update(nn.Identity(), torch.zeros(1, 3, 4, 4), torch.full((1, 2, 2), 0.3), None, MASK)
    assert metric.skipped == 1 and metric.count == 0


def test_relevance_mass_exact():
    # R+ = [2, 4, 2, 0]; inside the mask: all of patch 0 and a quarter of patch 1 -> (2 + 1) / 8
    result = localise("relevance_mass", torch.tensor([[[2.0, 4.0], [2.0, -1.0]]]))
    torch.testing.assert_close(result["score"], torch.tensor(0.375))


def test_segmentation_exact():
    # a 2x2 map on a 2x2 image: min-max -> [1, 0, 0.625, 0.125], mean 0.4375, foreground [1, 0, 1, 0]
    mask = torch.tensor([[[True, True], [False, False]]])
    metric = M.create("segmentation")
    metric.update(nn.Identity(), torch.zeros(1, 3, 2, 2), torch.tensor([[[0.9, 0.1], [0.6, 0.2]]]), None, mask)
    result = metric.compute()
    torch.testing.assert_close(result["pixel_accuracy"], torch.tensor(0.5))
    torch.testing.assert_close(result["miou"], torch.tensor(1 / 3))  # both classes: 1 shared pixel of 3
    # AP of [1 - s, s] against [background, mask], worked through by hand (ties at 1 and at 0)
    torch.testing.assert_close(result["map"], torch.tensor(0.25 * (0.5 + 2 / 3 + 3 / 5 + 0.5)))


def test_batched_average_precision_matches_hand_values():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.5, 0.5, 0.2, 0.1]])
    labels = torch.tensor([[1, 0, 1, 0], [1, 0, 1, 0]])
    torch.testing.assert_close(
        batched_average_precision(scores, labels), torch.tensor([5 / 6, 0.5 * 0.5 + 0.5 * 2 / 3])
    )


def test_chunking_does_not_change_scores():
    images = torch.randn(3, 3, 4, 4)
    maps = torch.randn(3, 2, 2)
    results = []
    for max_batch in (1, 7, 64):
        metric = M.Deletion(steps=4, max_batch=max_batch)
        metric.update(PatchLinear(), images, maps, torch.tensor([0, 1, 0]))
        results.append(metric.compute()["curve"])
    torch.testing.assert_close(results[0], results[1])
    torch.testing.assert_close(results[0], results[2])


def test_bad_inputs(models):
    vit = models["vit"]
    images = torch.randn(2, 3, 224, 224)
    with pytest.raises(ValueError, match="maps have a 7x7 grid but the model's patch grid for 224x224 images is 14x14"):
        M.Deletion().update(vit, images, torch.rand(2, 7, 7), 0)
    with pytest.raises(ValueError, match=r"expected masks of shape \[2, 224, 224\]"):
        M.PointingGame().update(vit, images, torch.rand(2, 14, 14), 0, torch.ones(2, 14, 14))
    with pytest.raises(ValueError, match="needs ground-truth masks"):
        M.RelevanceMass().update(vit, images, torch.rand(2, 14, 14), 0)
    with pytest.raises(ValueError, match="baseline must be one of"):
        M.Deletion(baseline="noise")
    with pytest.raises(ValueError, match="order must be one of \\['positive', 'negative'\\]"):
        M.PerturbationAUC(order="both")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        M.Insertion(steps=0)
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        M.create("auc")


def test_nan_maps_warn_and_are_skipped():
    maps = torch.stack([IDEAL[0], torch.full((2, 2), float("nan"))])
    for metric in (M.Deletion(steps=4, baseline="zeros"), M.PointingGame()):
        with pytest.warns(UserWarning, match="1 of 2 maps contain NaN"):
            metric.update(
                PatchLinear(), IMAGES.expand(2, -1, -1, -1), maps, torch.tensor([0, 0]), MASK.expand(2, -1, -1)
            )
        assert metric.skipped == 1 and metric.count == 1
