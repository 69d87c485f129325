"""bf16 / fp16 weights (precision="bf16-true") are explained in float32: the maps of the float32 copy, model kept."""

import copy

import pytest
import torch

import lightning_vitx.explainers as X

LRP_FAMILY = ["lrp", "partial_lrp", "transformer_attribution", "attnlrp"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", [*LRP_FAMILY, "generic_attention"])
def test_low_precision_weights_give_the_float32_maps_of_the_same_weights(name, dtype, shapes_model):
    # before (bf16, trained tiny ViT, 32 images): per-image Pearson with float32 down to -0.07 (lrp), .82
    # (partial_lrp), .72 (transformer_attribution); now the same maps
    model, images, _, _ = shapes_model
    low = copy.deepcopy(model).to(dtype)
    reference = copy.deepcopy(low).float()
    images = images[:8].to(dtype)
    target = reference(images.float()).argmax(1)
    before = {key: value.clone() for key, value in low.state_dict().items()}
    maps = X.create(name, low)(images, target)
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, X.create(name, reference)(images.float(), target), rtol=1e-5, atol=1e-6)
    for key, value in low.state_dict().items():  # back to the very same low-precision values
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
