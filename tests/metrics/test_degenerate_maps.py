"""Degenerate maps (NaN/inf, all zero, constant) are skipped by every metric and counted, never scored."""

import warnings

import pytest
import torch
from torch import nn

import lightning_vitx.explainers as X
import lightning_vitx.metrics as M
from lightning_vitx.metrics._common import FLAT_SPREAD, degenerate_maps


class PatchMean(nn.Module):
    """Three logits from the mean brightness of a 4x4 grid of 4-pixel patches (any image: a fixed linear map)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.linspace(-1.0, 1.0, 16 * 3).view(3, 16)

    def forward(self, images):
        patches = nn.functional.avg_pool2d(images.mean(1, keepdim=True), 4).flatten(1)
        return patches @ self.weight.T


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(5, 3, 16, 16, generator=generator)
    maps = torch.rand(5, 4, 4, generator=generator)
    masks = torch.zeros(5, 16, 16, dtype=torch.bool)
    masks[:, :8, :8] = True  # the top-left patches: where a tie would point
    return images, maps, masks


def degenerate(maps):
    broken = maps.clone()
    broken[1] = 0.0  # zero
    broken[2] = 0.7  # constant
    broken[3, 1, 1] = torch.nan  # nonfinite
    return broken


@pytest.mark.parametrize("name", M.available())
def test_every_metric_skips_and_counts_degenerate_maps(name):
    images, maps, masks = batch()
    target = torch.tensor([0, 1, 2, 0, 1])
    masks = masks if M.get_info(name).needs_masks else None
    clean = M.create(name)
    keep = torch.tensor([0, 4])
    clean.update(PatchMean(), images[keep], maps[keep], target[keep], None if masks is None else masks[keep])
    metric = M.create(name)
    with pytest.warns(UserWarning, match="1 of 5 maps contain NaN or inf; 1 of 5 maps are all zero; 1 of 5 maps are"):
        metric.update(PatchMean(), images, degenerate(maps), target, masks)
    assert int(metric.skipped) == 3
    torch.testing.assert_close(metric.compute()["score"], clean.compute()["score"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", M.available())
def test_a_batch_of_only_degenerate_maps_scores_nan(name):
    images, maps, masks = batch()
    metric = M.create(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric.update(PatchMean(), images, torch.zeros_like(maps), None, masks)
        assert torch.isnan(metric.compute()["score"])
    assert int(metric.skipped) == 5


def test_the_flat_threshold_is_relative_and_keeps_weak_signals():
    base = torch.full((3, 2, 2), 1000.0)
    base[1, 0, 0] += 1000.0 * FLAT_SPREAD / 2  # below the threshold: rounding
    base[2, 0, 0] += 1000.0 * 8e-4  # a weak but real ranking (an offset-dominated map)
    assert degenerate_maps(base)["flat"].tolist() == [True, True, False]
    assert degenerate_maps(-base)["flat"].tolist() == [True, True, False]  # the sign does not matter


def test_gradcams_all_zero_maps_on_the_trained_vit_are_skipped_and_counted(shapes_model):
    model, images, labels, masks = shapes_model
    maps = X.create("gradcam", model)(images, labels)
    zero = int(degenerate_maps(maps)["zero"].sum())
    assert zero > 0  # relu(mean_h alpha_h a_h) with alpha < 0 on most heads (the trust issue measured 62 of 96)
    metric = M.create("pointing_game")
    with pytest.warns(UserWarning, match=f"{zero} of 96 maps are all zero"):
        metric.update(model, images, maps, labels, masks)
    assert int(metric.skipped) == zero and int(metric.count) == 96 - zero
