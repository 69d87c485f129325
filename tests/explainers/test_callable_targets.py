"""Callable targets ``f(outputs) -> Tensor[B]``: the class's logit as a callable, regression and headless models."""

import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import lightning_vitx.explainers as X

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import golden_maps  # noqa: E402

NAMES = X.available()
CALLABLE = [name for name in NAMES if X.get_info(name).callable_target]
CLASS_ONLY = [name for name in NAMES if not X.get_info(name).callable_target]
GRADIENT = [name for name in CALLABLE if X.get_info(name).needs_gradients]
CASES = ["vit", "avgpool", "swin"]  # golden_maps' 32 px models: class token, average pool, windows


def takes(name: str, case: str) -> bool:
    family = "swin" if case == "swin" else "vit"
    return family in X.get_info(name).families


def test_the_registry_says_who_takes_callables():
    assert set(CALLABLE) == {name for name in NAMES if X.get_info(name).readout} | {"legrad", "attnlrp"}
    assert set(CLASS_ONLY) == {"lrp", "partial_lrp", "transformer_attribution"}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", CALLABLE)
def test_the_class_logit_as_a_callable_gives_the_same_maps(name, case):
    if not takes(name, case):
        pytest.skip(f"{name} does not take {case}")
    model, batch = golden_maps.build(case), golden_maps.images()
    explainer = X.create(name, model)
    torch.testing.assert_close(explainer(batch, lambda out: out[:, 3]), explainer(batch, 3), rtol=0, atol=0)


def test_a_group_explains_the_callable_in_every_pass():
    model, batch = golden_maps.build("vit"), golden_maps.images()
    options = {name: {} for name in CALLABLE} | {"tokentm": {"score": "logit"}}
    group = X.create_many(options, model)
    target = lambda out: out[:, 1] + out[:, 2]  # noqa: E731  a sum of classes
    maps = group(batch, target)
    for name in CALLABLE:
        torch.testing.assert_close(maps[name], X.create(name, model)(batch, target), rtol=0, atol=0)


@pytest.mark.parametrize("name", CLASS_ONLY)
def test_the_class_seeded_explainers_refuse_a_callable_at_call(name):
    explainer = X.create(name, golden_maps.build("vit"))
    with pytest.raises(TypeError, match=r"got a callable \(<lambda>\): this pass explains a class"):
        explainer(golden_maps.images(), lambda out: out[:, 0])


def test_a_callable_that_returns_the_wrong_shape_or_no_gradient_is_a_clear_error():
    explainer = X.create("legrad", golden_maps.build("vit"))
    batch = golden_maps.images()
    with pytest.raises(ValueError, match=r"float tensor of shape \[2\].*got a torch.float32 tensor of shape \[2, 1\]"):
        explainer(batch, lambda out: out[:, :1])
    with pytest.raises(ValueError, match="does not depend on the outputs"):
        explainer(batch, lambda out: torch.ones(out.shape[0]))
    with pytest.raises(ValueError, match="has no softmax probability"):
        X.create("tokentm", golden_maps.build("vit"), score="probability")(batch, lambda out: out[:, 0])


def _maps_are_valid(maps: torch.Tensor, grid: tuple[int, int], name: str) -> None:
    assert maps.shape == (2, *grid) and maps.dtype == torch.float32, name
    assert torch.isfinite(maps).all(), name
    if name != "gradcam":  # Grad-CAM's ReLU may zero a whole map on a random model
        assert maps.flatten(1).std(dim=1).gt(0).all(), name


def _model(case: str, num_classes: int) -> torch.nn.Module:
    name, kwargs = golden_maps.CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **{**kwargs, "num_classes": num_classes}).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "qkv", None), torch.nn.Linear):
                module.qkv.weight.normal_(0.0, 0.5, generator=generator)
    return model


@pytest.mark.parametrize("case", ["vit", "swin"])
def test_a_regression_model_gives_maps(case):
    model, batch = _model(case, num_classes=1), golden_maps.images()
    grid = (8, 8) if case == "swin" else (4, 4)
    for name in (name for name in CALLABLE if takes(name, case)):
        _maps_are_valid(X.create(name, model)(batch, lambda out: out[:, 0]), grid, name)


@pytest.mark.parametrize("case", ["vit", "swin"])
def test_a_headless_model_with_a_feature_similarity_target_gives_maps(case):
    model, batch = _model(case, num_classes=0), golden_maps.images()
    reference = model(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(9)))[0].detach()
    similarity = lambda feats: F.cosine_similarity(feats, reference[None])  # noqa: E731
    grid = (8, 8) if case == "swin" else (4, 4)
    for name in (name for name in GRADIENT if takes(name, case)):
        _maps_are_valid(X.create(name, model)(batch, similarity), grid, name)
