"""A model compiled by torch.compile (wrapper) or model.compile() (in place) is explained through eager modules."""

import timm
import torch

import lightning_vitx.explainers as X

NAMES = ["generic_attention", "transformer_attribution", "attnlrp"]


def tiny():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8, depth=2
    ).eval()


def test_a_torch_compile_wrapper_is_explained_through_its_original_module():
    model, images = tiny(), torch.randn(2, 3, 32, 32)
    expected = {name: X.create(name, model)(images) for name in NAMES}
    wrapper = torch.compile(model)  # before: "expected a timm vision transformer", no hint at _orig_mod
    for name in NAMES:
        torch.testing.assert_close(X.create(name, wrapper)(images), expected[name], rtol=0, atol=0)


def test_a_model_compiled_in_place_is_explained_eagerly_and_stays_compiled():
    model, images = tiny(), torch.randn(2, 3, 32, 32)
    expected = {name: X.create(name, model)(images) for name in NAMES}
    model.compile()  # before: "The differentiated Tensor ... appears to not have been used in the graph"
    compiled_call = model._compiled_call_impl
    for name in NAMES:
        torch.testing.assert_close(X.create(name, model)(images), expected[name], rtol=0, atol=0)
    assert model._compiled_call_impl is compiled_call  # restored: the user's model still runs compiled
