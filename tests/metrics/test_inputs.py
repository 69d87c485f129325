"""What every metric does with bad input: clear errors for wrong targets, skipped and counted bad samples."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_vitx.metrics as M

MASK_METRICS = [name for name in M.available() if M.get_info(name).needs_masks]
PERTURBATION_METRICS = [name for name in M.available() if not M.get_info(name).needs_masks]


class PatchMeans(nn.Module):
    """Two logits from the per-patch means of a 2x2 grid over 4x4 images (no `num_classes` attribute)."""

    def forward(self, images):
        means = F.avg_pool2d(images.mean(dim=1, keepdim=True), 2).flatten(1)
        return torch.stack([means @ torch.tensor([3.0, 1.0, -1.0, 0.5]), means.sum(1)], dim=1)


class Counted(PatchMeans):
    num_classes = 2


def inputs(batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, 4, 4, generator=generator)
    maps = torch.rand(batch, 2, 2, generator=generator)
    masks = torch.zeros(batch, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    return images, maps, masks


def update(name, model, images, maps, target, masks, **options):
    metric = M.create(name, **options)
    metric.update(model, images, maps, target, masks)
    return metric


# Mask metrics run no forward: they check the range where the model states num_classes. Perturbation metrics
# also ask a model that does not.
RANGE_CASES = [(name, Counted()) for name in M.available()] + [(name, PatchMeans()) for name in PERTURBATION_METRICS]


@pytest.mark.parametrize("name, model", RANGE_CASES, ids=[f"{n}-{type(m).__name__}" for n, m in RANGE_CASES])
def test_a_target_out_of_range_is_a_clear_value_error(name, model):
    images, maps, masks = inputs()
    for bad in (2, -1, torch.tensor([0, 1, 2])):
        with pytest.raises(ValueError, match=r"target classes must lie in \[0, 2\)"):
            update(name, model, images, maps, bad, masks)


@pytest.mark.parametrize("name", M.available())
def test_a_target_of_the_wrong_type_or_shape_says_what_is_expected(name):
    images, maps, masks = inputs()
    with pytest.raises(TypeError, match="got a torch.float32 tensor"):
        update(name, Counted(), images, maps, torch.tensor([0.0, 1.0, 1.0]), masks)
    with pytest.raises(TypeError, match="got str"):
        update(name, Counted(), images, maps, "cat", masks)
    with pytest.raises(TypeError, match="got bool"):
        update(name, Counted(), images, maps, True, masks)
    with pytest.raises(ValueError, match=r"an integer tensor of shape \[3\], got shape \[2\]"):
        update(name, Counted(), images, maps, torch.tensor([0, 1]), masks)


@pytest.mark.parametrize("name", M.available())
@pytest.mark.parametrize("broken", ["image", "map"])
def test_a_non_finite_sample_is_skipped_counted_and_the_rest_scored(name, broken):
    images, maps, masks = inputs()
    target = torch.tensor([0, 1, 0])
    expected = update(name, Counted(), images[1:], maps[1:], target[1:], masks[1:]).compute()
    if broken == "image":
        images[0, 0, 0, 0] = float("nan")
    else:
        maps[0, 0, 0] = float("inf")
    with pytest.warns(UserWarning, match=f"1 of 3 {broken}s contain NaN or inf"):
        metric = update(name, Counted(), images, maps, target, masks)
    assert int(metric.skipped) == 1
    result = metric.compute()
    for key, value in expected.items():
        torch.testing.assert_close(result[key], value, msg=key)


@pytest.mark.parametrize("name", MASK_METRICS)
def test_empty_masks_are_skipped_with_a_warning_and_none_left_is_nan_with_a_warning(name):
    images, maps, masks = inputs()
    masks[0] = False
    with pytest.warns(UserWarning, match="1 of 3 masks have no object pixel"):
        metric = update(name, Counted(), images, maps, None, masks)
    assert int(metric.skipped) == 1
    expected = update(name, Counted(), images[1:], maps[1:], None, masks[1:]).compute()
    torch.testing.assert_close(metric.compute()["score"], expected["score"])
    with pytest.warns(UserWarning, match="3 of 3 masks"):
        empty = update(name, Counted(), images, maps, None, torch.zeros_like(masks))
    with pytest.warns(UserWarning, match=r"no usable sample \(3 skipped\); the score is NaN"):
        assert torch.isnan(empty.compute()["score"])


@pytest.mark.parametrize("name", MASK_METRICS)
def test_void_pixels_of_integer_masks_are_not_object_unless_ignore_index_is_none(name):
    images, maps, masks = inputs()
    labelled = masks.to(torch.uint8)  # 1 = object
    labelled[:, 2:, 2:] = 255  # void: a corner the map may point at
    maps[:, 1, 1] = 10.0  # the most relevant patch is the void one
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sample is skipped
        as_bool = update(name, Counted(), images, maps, None, masks).compute()["score"]
        voided = update(name, Counted(), images, maps, None, labelled).compute()["score"]
        with_void = update(name, Counted(), images, maps, None, labelled, ignore_index=None).compute()["score"]
    torch.testing.assert_close(voided, as_bool)
    assert not torch.allclose(with_void, as_bool)
    if name == "pointing_game":
        assert float(voided) == 0.0 and float(with_void) == 1.0
