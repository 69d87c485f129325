"""Shared fixtures: the covered timm models (pretrained=False), built once per session."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

NUM_CLASSES = 7

# name -> (timm model name, create_model kwargs, input size)
TINY_SWIN = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 4}
MODEL_CASES: dict[str, tuple[str, dict, int]] = {
    "vit": ("vit_tiny_patch16_224", {}, 224),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}, 224),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 4}, 224),
    "avgpool": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg", "fc_norm": False}, 224),
    "vit448": ("vit_tiny_patch16_224", {"img_size": 448}, 448),
    # 72 / 4 = 18 tokens a side: windows of 4 need padding, the merges meet odd grids (9 -> 5), the last
    # stage (3x3) runs one unshifted window.
    "swin": ("swin_tiny_patch4_window7_224", {**TINY_SWIN, "img_size": 72}, 72),
}


def grid_for(case: str, size: int) -> tuple[int, int]:
    """The map grid the contract promises: the patch grid (16 px patches for ViT, Swin's first stage: 4 px)."""
    patch = 4 if MODEL_CASES[case][0].startswith("swin") else 16
    return (size // patch, size // patch)


def make_vit(name: str, seed: int = 0, depth: int | None = None, **kwargs) -> nn.Module:
    """A random-init timm model whose attention is peaked (random init is near uniform) and whose classes differ."""
    torch.manual_seed(seed)
    if depth is not None:
        kwargs["depth"] = depth
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():  # the attention modules, in block order
            if isinstance(getattr(module, "qkv", None), nn.Linear):
                module.qkv.weight.normal_(0.0, 0.1, generator=generator)
        heads = model.get_classifier()  # (head, head_dist) for distilled DeiT
        for head in heads if isinstance(heads, tuple) else (heads,):
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
def patch_grid():
    return grid_for


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
