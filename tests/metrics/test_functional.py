"""The functional forms: the class forms' per-sample scores, NaN where the class skips, and hand-computed values."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_vitx.metrics as M
import lightning_vitx.metrics.functional as MF
from lightning_vitx.metrics._common import register_metric

# Each registered metric with its defaults and with options that differ from them (they must reach the maths).
OPTIONS = {
    "deletion": [{}, {"steps": 4, "baseline": "mean", "max_batch": 5}],
    "insertion": [{}, {"steps": 3, "baseline": "zeros"}],
    "positive_perturbation": [{}, {"fractions": (0.0, 0.3, 0.6), "baseline": "blur", "max_batch": 7}],
    "negative_perturbation": [{}, {"fractions": (0.1, 0.5, 0.9), "baseline": "mean"}],
    "pointing_game": [{}, {"ignore_index": None}],
    "relevance_mass": [{}, {"ignore_index": None}],
    "segmentation": [{}, {"ignore_index": None}],
}
CASES = [(name, options) for name in sorted(OPTIONS) for options in OPTIONS[name]]
SKIPPED = 2  # the sample whose map is all zero


def test_every_registered_metric_has_a_functional_form():
    assert sorted(OPTIONS) == M.available()
    assert set(M.available()) <= set(MF.__all__)


@pytest.fixture
def swin_batch(models, make_images):
    """The session's tiny random-init Swin (72 px, a 18x18 grid of 4 px patches), 4 images, maps, labelled masks."""
    model = models["swin"]
    images = make_images(72, batch=4, seed=3)
    generator = torch.Generator().manual_seed(4)
    maps = torch.rand(4, 18, 18, generator=generator)
    maps[SKIPPED] = 0.0
    masks = torch.zeros(4, 72, 72, dtype=torch.uint8)
    masks[:, 10:40, 20:50] = 1  # the object
    masks[:, 60:, :12] = 255  # void pixels: object only with ignore_index=None
    masks[1, 10:40, 20:50] = 0  # image 1: a mask of void only
    return model, images, maps, torch.tensor([0, 3, 6, 1]), masks


def functional_scores(name, model, images, maps, target, masks, **options):
    form = getattr(MF, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if M.get_info(name).needs_masks:
            return form(maps, masks, **options)
        return form(model, images, maps, target, **options)


def class_metric(name, model, images, maps, target, masks, **options):
    metric = M.create(name, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric.update(model, images, maps, target, masks)
    return metric


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{'defaults' if not o else 'options'}" for n, o in CASES])
def test_the_functional_scores_are_the_class_forms_per_sample_scores(name, options, swin_batch):
    model, images, maps, target, masks = swin_batch
    scores = functional_scores(name, model, images, maps, target, masks, **options)
    metric = class_metric(name, model, images, maps, target, masks, **options)
    per_image = scores["map"] if name == "segmentation" else scores
    assert per_image.shape == (4,)
    skipped = per_image.isnan()
    # the zero map is skipped by all; image 1's mask is void only, so the mask metrics skip it unless it is object
    mask_skips = M.get_info(name).needs_masks and options.get("ignore_index", 255) is not None
    assert skipped.tolist() == [False, mask_skips, True, False]
    assert int(metric.skipped) == int(skipped.sum()) and int(metric.count) == int((~skipped).sum())
    torch.testing.assert_close(metric.last_sample_scores, per_image[~skipped], rtol=0, atol=1e-6)
    # compute() over the batch: the mean of the per-image scores (the AUC of the mean curve is the mean AUC)
    result = metric.compute()
    key = "map" if name == "segmentation" else "score"
    torch.testing.assert_close(result[key], per_image[~skipped].mean(), rtol=0, atol=1e-6)


def test_the_per_image_segmentation_scores_are_the_class_form_on_that_image(swin_batch):
    model, images, maps, target, masks = swin_batch
    scores = functional_scores("segmentation", model, images, maps, target, masks)
    for index in (0, 3):
        one = slice(index, index + 1)
        result = class_metric("segmentation", model, images[one], maps[one], target[one], masks[one]).compute()
        assert result.keys() == scores.keys()
        for key, value in result.items():
            torch.testing.assert_close(scores[key][index], value, rtol=0, atol=1e-6, msg=key)


def test_the_predicted_class_is_the_default_target_in_both_forms(swin_batch):
    model, images, maps, _, masks = swin_batch
    scores = functional_scores("deletion", model, images, maps, None, masks, steps=3)
    metric = class_metric("deletion", model, images, maps, None, masks, steps=3)
    torch.testing.assert_close(metric.last_sample_scores, scores[~scores.isnan()], rtol=0, atol=1e-6)
    predicted = model(images).argmax(dim=1)
    by_label = functional_scores("deletion", model, images, maps, predicted, masks, steps=3)
    torch.testing.assert_close(by_label, scores, equal_nan=True)


# Hand-computed values: a toy model whose logit is a known linear function of a 2x2 grid of patches on 4x4 images.
WEIGHTS = torch.tensor([3.0, 1.0, -1.0, 0.5])


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


def test_pointing_game_on_a_2x2_map():
    maps = torch.tensor([[[0.0, 5.0], [1.0, 1.0]], [[0.0, 1.0], [5.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]]])
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, 0, 3] = True  # one pixel of the top-right patch is enough for a hit
    with pytest.warns(UserWarning, match="pointing_game: 1 of 3 maps are constant; those samples score NaN"):
        scores = MF.pointing_game(maps, masks)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.0, math.nan]), equal_nan=True)


def test_relevance_mass_and_segmentation_by_hand():
    # R+ = [2, 4, 2, 0]; inside the mask: all of patch 0 and a quarter of patch 1 -> (2 + 1) / 8
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True
    mask[0, 0, 2] = True
    torch.testing.assert_close(
        MF.relevance_mass(torch.tensor([[[2.0, 4.0], [2.0, -1.0]]]), mask), torch.tensor([0.375])
    )
    # a 2x2 map on a 2x2 image: min-max -> [1, 0, 0.625, 0.125], mean 0.4375, foreground [1, 0, 1, 0]
    scores = MF.segmentation(torch.tensor([[[0.9, 0.1], [0.6, 0.2]]]), torch.tensor([[[True, True], [False, False]]]))
    torch.testing.assert_close(scores["pixel_accuracy"], torch.tensor([0.5]))
    torch.testing.assert_close(scores["miou"], torch.tensor([1 / 3]))  # both classes: 1 shared pixel of 3
    torch.testing.assert_close(scores["score"], scores["miou"])
    torch.testing.assert_close(scores["map"], torch.tensor([0.25 * (0.5 + 2 / 3 + 3 / 5 + 0.5)]))


def test_perturbation_forms_by_hand():
    images = torch.ones(2, 3, 4, 4)
    ideal = WEIGHTS.view(1, 2, 2).expand(2, -1, -1)
    maps = torch.stack([ideal[0], -ideal[1]])  # the ideal order, and its reverse
    target = torch.tensor(0)  # a 0-d target: every image's class
    # deletion: the logit goes 3.5, 0.5, -0.5, -1, 0 (ideal) and 3.5, 4.5, 4, 3, 0 (reversed)
    expected = [auc([sig(v) for v in [3.5, 0.5, -0.5, -1.0, 0.0]]), auc([sig(v) for v in [3.5, 4.5, 4, 3, 0]])]
    scores = MF.deletion(PatchLinear(), images, maps, target, steps=4, baseline="zeros")
    torch.testing.assert_close(scores, torch.tensor(expected))
    # insertion of the ideal order into zeros: the logit goes 0, 3, 4, 4.5, 3.5
    scores = MF.insertion(PatchLinear(), images[:1], maps[:1], 0, steps=4, baseline="zeros")
    torch.testing.assert_close(scores, torch.tensor([auc([sig(v) for v in [0, 3, 4, 4.5, 3.5]])]))
    # positive: agreement 1, 1, 0, 0 -> (0.25 + 0.125) / 0.75; negative (2, 3, 1, 0 out first): always agrees
    fractions = (0.0, 0.25, 0.5, 0.75)
    positive = MF.positive_perturbation(PatchLinear(), images[:1], maps[:1], 0, fractions=fractions, baseline="zeros")
    negative = MF.negative_perturbation(PatchLinear(), images[:1], maps[:1], 0, fractions=fractions, baseline="zeros")
    torch.testing.assert_close(positive, torch.tensor([0.5]))
    torch.testing.assert_close(negative, torch.tensor([1.0]))


def test_a_skipped_image_scores_nan_and_its_neighbours_are_unchanged():
    images = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(1))
    clean = MF.deletion(PatchLinear(), images, maps, 0, steps=4)
    images[1, 0, 0, 0] = math.inf
    with pytest.warns(UserWarning, match="deletion: 1 of 3 images contain NaN or inf; those samples score NaN"):
        broken = MF.deletion(PatchLinear(), images, maps, 0, steps=4)
    assert broken.isnan().tolist() == [False, True, False]
    torch.testing.assert_close(broken[[0, 2]], clean[[0, 2]])


def test_functional_errors_say_what_to_pass():
    maps, masks = torch.rand(1, 3, 3), torch.ones(1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="a 3x3 map does not tile 4x4 images evenly"):
        MF.pointing_game(maps, masks)
    with pytest.raises(ValueError, match=r"expected maps of shape \[2, gh, gw\], got \[1, 2, 2\]"):
        MF.relevance_mass(torch.rand(1, 2, 2), torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="ignore_index must be an int or None, got 'void'"):
        MF.segmentation(torch.rand(1, 2, 2), masks, ignore_index="void")
    images = torch.ones(1, 3, 4, 4)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        MF.deletion(PatchLinear(), images, torch.rand(1, 2, 2), steps=0)
    with pytest.raises(ValueError, match="baseline must be one of"):
        MF.insertion(PatchLinear(), images, torch.rand(1, 2, 2), baseline="noise")
    with pytest.raises(ValueError, match=r"fractions must increase within \[0, 1\]"):
        MF.positive_perturbation(PatchLinear(), images, torch.rand(1, 2, 2), fractions=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 2\)"):
        MF.negative_perturbation(PatchLinear(), images, torch.rand(1, 2, 2), 2)


def test_a_batch_with_nothing_to_score_leaves_no_stale_sample_scores():
    metric = M.Deletion(steps=2)
    images = torch.rand(2, 3, 4, 4)
    metric.update(PatchLinear(), images, torch.rand(2, 2, 2), 0)
    assert metric.last_sample_scores is not None and metric.last_sample_scores.shape == (2,)
    with pytest.warns(UserWarning, match="2 of 2 maps are all zero"):
        metric.update(PatchLinear(), images, torch.zeros(2, 2, 2), 0)
    assert metric.last_sample_scores is not None and metric.last_sample_scores.shape == (0,)


def test_higher_is_better_is_stated_once_on_the_class():
    for name in M.available():
        cls, info = M.get_class(name), M.get_info(name)
        assert info.higher_is_better is cls.higher_is_better, name
        assert info.needs_masks is cls.needs_masks, name
    assert [name for name in M.available() if not M.get_info(name).higher_is_better] == [
        "deletion",
        "positive_perturbation",
    ]
    undirected = type("Undirected", (M.PerImageMetric,), {})
    with pytest.raises(TypeError, match="Undirected must set the class attribute higher_is_better"):
        register_metric("undirected", "no direction", "none")(undirected)
    assert "undirected" not in M.available()
