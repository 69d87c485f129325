"""The explainer contract, for every registered explainer on every covered model."""

import pytest
import torch

import lightning_vitx.explainers as X

NAMES = X.available()
# Explainers whose rules are ill-conditioned by design, so bf16 activations move their maps far from float32 ones:
# lrp's and partial_lrp's baseline rules split a residual sum x + a by plain LRP-0 (R x / (x + a), no
# renormalisation) and divide each sign term of a Linear rule by its own part; where x + a or z- nearly cancel, bf16
# rounding decides.
# Measured on conftest's vit, per-image Pearson bf16 vs float32: partial_lrp 0.65 and 0.998, lrp 0.84 and 0.76.
# Checked for float32, finite output only.
BF16_ILL_CONDITIONED = {"lrp", "partial_lrp"}
# The same rules amplify the float32 rounding by which a batch's forward differs from one image's: lrp on conftest's
# swin (eight blocks, three mergings) moves by up to 6e-5 of its map's scale (5.7e-5 with the rules in float64, so
# the forward's rounding, not the batching). tests/explainers/lrp/test_lrp_swin.py checks it at 1e-5 on a float64 model.
BATCH_TOLERANCE = {("lrp", "swin"): 2e-4}


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_dtype_device(name, model_case, make_images, patch_grid):
    case, model, size = model_case
    explainer = X.create(name, model)
    images = make_images(size, batch=2)
    maps = explainer(images)
    assert maps.shape == (2, *patch_grid(case, size))
    assert maps.dtype == torch.float32
    assert maps.device == images.device
    assert torch.isfinite(maps).all()
    assert maps.flatten(1).std(dim=1).gt(0).all(), f"{name} gave a constant map on {case}"


@pytest.mark.parametrize("name", NAMES)
def test_target_forms_agree(name, models, make_images):
    model = models["vit"]
    images = make_images(224, batch=3)
    explainer = X.create(name, model)
    predicted = model(images).argmax(dim=1)
    by_none = explainer(images)
    by_tensor = explainer(images, predicted)
    torch.testing.assert_close(by_none, by_tensor, rtol=0, atol=0)
    by_int = explainer(images, 4)
    by_int_tensor = explainer(images, torch.full((3,), 4))
    torch.testing.assert_close(by_int, by_int_tensor, rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in NAMES if X.get_info(n).needs_gradients])
def test_gradient_methods_depend_on_target(name, models, make_images):
    images = make_images(224, batch=2)
    explainer = X.create(name, models["vit"])
    assert not torch.allclose(explainer(images, 0), explainer(images, 3))


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_one_by_one(name, model_case, make_images):
    case, model, size = model_case
    explainer = X.create(name, model)
    batch = 3 if size == 224 else 2
    images = make_images(size, batch=batch)
    target = torch.tensor([0, 5, 2])[:batch]
    batched = explainer(images, target)
    single = torch.cat([explainer(images[i : i + 1], target[i : i + 1]) for i in range(batch)])
    # 1e-5 of the map's scale where that exceeds 1 (unnormalised LRP relevance reaches ~100: float32 rounding)
    tolerance = BATCH_TOLERANCE.get((name, case), 1e-5)
    torch.testing.assert_close(batched, single, rtol=0, atol=tolerance * max(1.0, float(single.abs().max())))


@pytest.mark.parametrize("name", NAMES)
def test_works_under_inference_mode_and_no_grad(name, models, make_images):
    model = models["vit"]
    explainer = X.create(name, model)
    images = make_images(224, batch=2)
    expected = explainer(images, 1)
    with torch.inference_mode():
        inference_images = images.clone()  # an inference tensor, as Lightning's validation batches are
        under_inference = explainer(inference_images, 1)
    with torch.no_grad():
        under_no_grad = explainer(images, 1)
    torch.testing.assert_close(under_inference, expected, rtol=0, atol=0)
    torch.testing.assert_close(under_no_grad, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_gives_float32_maps_close_to_float32(name, models, make_images):
    model = models["vit"]
    explainer = X.create(name, model)
    images = make_images(224, batch=2)
    expected = explainer(images, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = explainer(images, 1)
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_weights_give_float32_maps(name, models, make_images, copy_model):
    model = copy_model(models["vit"]).to(torch.bfloat16)
    images = make_images(224, batch=2)
    maps = X.create(name, model)(images.to(torch.bfloat16), 1)
    expected = X.create(name, models["vit"])(images, 1)
    assert maps.dtype == torch.float32
    if name in BF16_ILL_CONDITIONED:
        assert maps.isfinite().all()
        return
    # bf16 has 3 significant digits; the maps must still rank the patches alike.
    rank = lambda m: m.flatten(1).argsort(dim=1).argsort(dim=1).float()  # noqa: E731
    correlation = torch.nn.functional.cosine_similarity(
        rank(maps) - rank(maps).mean(1, keepdim=True), rank(expected) - rank(expected).mean(1, keepdim=True)
    )
    assert correlation.min() > 0.8, correlation


PIXEL_NAMES = ["attnlrp", "lrp", "partial_lrp", "transformer_attribution"]  # the LRP family: maps at the pixels


def test_the_lrp_family_and_only_it_gives_pixel_maps(models):
    assert {name for name in NAMES if hasattr(X.create(name, models["vit"]), "pixel_relevance")} == set(PIXEL_NAMES)


@pytest.mark.parametrize("name", PIXEL_NAMES)
def test_pixel_maps_at_the_input_size_also_under_inference_mode_and_autocast(name, model_case, make_images):
    case, model, size = model_case
    explainer = X.create(name, model)
    batch = 2 if size <= 224 else 1  # the 448 px case runs one image: a quarter of the cost
    images = make_images(size, batch=batch)
    pixels = explainer.pixel_relevance(images, 1)
    assert pixels.shape == (batch, size, size) and pixels.dtype == torch.float32 and pixels.device == images.device
    assert torch.isfinite(pixels).all() and (pixels < 0).any() and (pixels > 0).any()
    with torch.inference_mode():
        under_inference = explainer.pixel_relevance(images.clone(), 1)
    torch.testing.assert_close(under_inference, pixels, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = explainer.pixel_relevance(images, 1)
    torch.testing.assert_close(under_autocast, pixels, rtol=1e-4, atol=1e-6 * float(pixels.abs().max()))


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_is_a_clear_error(name, models):
    # before: five raised "cannot reshape tensor of 0 elements" (every one on Swin), the rest gave [0, gh, gw]
    for case in ("vit", "swin"):
        size = 72 if case == "swin" else 224
        with pytest.raises(ValueError, match="expected at least one image, got an empty batch"):
            X.create(name, models[case])(torch.zeros(0, 3, size, size))
