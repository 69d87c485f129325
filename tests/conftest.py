"""Shared fixtures: the covered timm models (pretrained=False), built once per session."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

NUM_CLASSES = 7

# name -> (timm model name, create_model kwargs, input size)
MODEL_CASES: dict[str, tuple[str, dict, int]] = {
    "vit": ("vit_tiny_patch16_224", {}, 224),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}, 224),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 4}, 224),
    "avgpool": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg", "fc_norm": False}, 224),
    "vit448": ("vit_tiny_patch16_224", {"img_size": 448}, 448),
}


def make_vit(name: str, seed: int = 0, depth: int | None = None, **kwargs) -> nn.Module:
    """A random-init timm model whose attention is peaked (random init is near uniform) and whose classes differ."""
    torch.manual_seed(seed)
    if depth is not None:
        kwargs["depth"] = depth
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.normal_(0.0, 0.1, generator=generator)
        for head in [model.head, getattr(model, "head_dist", None)]:
            if head is not None:
                head.weight.normal_(0.0, 0.5, generator=generator)
    return model.eval()


@pytest.fixture(scope="session")
def models() -> dict[str, nn.Module]:
    return {case: make_vit(name, **kwargs) for case, (name, kwargs, _) in MODEL_CASES.items()}


@pytest.fixture(params=list(MODEL_CASES))
def model_case(request, models) -> tuple[str, nn.Module, int]:
    return request.param, models[request.param], MODEL_CASES[request.param][2]


@pytest.fixture
def fresh_vit() -> nn.Module:
    """A model a test may change (train mode, frozen params, hooks): its own copy."""
    return make_vit("vit_tiny_patch16_224", depth=4)


def images_for(size: int = 224, batch: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def make_images():
    return images_for


@pytest.fixture
def make_model():
    return make_vit


@pytest.fixture
def copy_model():
    return copy.deepcopy


@pytest.fixture(scope="session")
def shapes_model():
    """One tiny ViT trained on the synthetic shapes for the whole suite, and held-out (images, labels, masks)."""
    from lightning_vitx.data import ShapesDataset, tiny_vit_for_shapes, train_on_shapes

    model = train_on_shapes(tiny_vit_for_shapes(64, seed=0), ShapesDataset(4096, 64, seed=0), steps=300)
    held_out = ShapesDataset(48, 64, seed=1)
    images, labels, masks = (
        torch.stack([torch.as_tensor(held_out[i][k]) for i in range(len(held_out))]) for k in range(3)
    )
    return model, images, labels, masks
