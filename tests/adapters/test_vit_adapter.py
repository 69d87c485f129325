"""Token layouts of the covered timm models, and the errors for what is not supported."""

import pytest
import timm
import torch
from torch import nn

import lightning_vitx.explainers as X
from lightning_vitx.adapters import TokenLayout, detect


@pytest.mark.parametrize(
    "case, expected",
    [
        ("vit", TokenLayout(1, (14, 14), "token", (0,))),
        ("deit_distilled", TokenLayout(2, (14, 14), "token", (0, 1))),
        ("registers", TokenLayout(5, (14, 14), "token", (0,))),
        ("avgpool", TokenLayout(0, (14, 14), "avg", ())),
        ("vit448", TokenLayout(1, (28, 28), "token", (0,))),
    ],
)
def test_layouts(case, expected, models, make_images):
    size = 448 if case == "vit448" else 224
    assert detect(models[case]).layout(make_images(size, batch=1)) == expected


def test_readout_weights():
    torch.testing.assert_close(
        TokenLayout(2, (1, 2), "token", (0, 1)).readout_weights(1), torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    )
    torch.testing.assert_close(TokenLayout(1, (1, 2), "avg").readout_weights(2), torch.tensor([[0.0, 0.5, 0.5]] * 2))


def test_dynamic_img_size_follows_the_input(make_model, make_images):
    model = make_model("vit_tiny_patch16_224", depth=2, dynamic_img_size=True)
    explainer = X.create("rollout", model)
    assert explainer(make_images(224, batch=1)).shape == (1, 14, 14)
    assert explainer(make_images(448, batch=1)).shape == (1, 28, 28)
    assert explainer(torch.randn(1, 3, 160, 320)).shape == (1, 10, 20)
    with pytest.raises(ValueError, match="not a multiple of the patch size 16x16"):
        explainer(torch.randn(1, 3, 232, 224))


@pytest.mark.parametrize(
    "model, message",
    [
        (timm.create_model("resnet18", pretrained=False), "cannot explain a ResNet"),
        (nn.Linear(4, 2), "cannot explain a Linear"),
    ],
)
def test_unsupported_models(model, message):
    with pytest.raises(TypeError, match=message):
        X.create("rollout", model)


def test_not_a_module():
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        detect("vit_tiny_patch16_224")


def test_other_pools_are_refused():  # 'map' has its adapter (tests/adapters/test_map_pool.py)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, global_pool="max")
    with pytest.raises(ValueError, match="global_pool='max' is not supported"):
        detect(model)


def test_bad_images(models):
    explainer = X.create("gradcam", models["vit"])
    with pytest.raises(ValueError, match=r"shape \[B, 3, H, W\].*unsqueeze\(0\)"):
        explainer(torch.randn(3, 224, 224))
    with pytest.raises(ValueError, match="takes 224x224 images, got 256x256.*dynamic_img_size=True"):
        explainer(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match="expected 3 channels"):
        explainer(torch.randn(1, 1, 224, 224))
    with pytest.raises(TypeError, match="floating-point images"):
        explainer(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    with pytest.raises(TypeError, match="expected images as a torch.Tensor"):
        explainer([[0.0]])


def test_bad_targets(models, make_images):
    explainer = X.create("gradcam", models["vit"])
    images = make_images(224, batch=2)
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 7\).*max 7"):
        explainer(images, 7)
    with pytest.raises(ValueError, match="min -1"):
        explainer(images, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"an integer tensor of shape \[2\], got shape"):
        explainer(images, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="got a torch.float32 tensor"):
        explainer(images, torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="got str"):
        explainer(images, "cat")
