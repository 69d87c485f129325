"""Shared fixtures: the covered timm models (pretrained=False), built once per session."""

from __future__ import annotations

import copy
import os

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


# The trained fixture: trained until it has learnt the task, so the tests on it do not rest on one run's weights
# (which move with the torch release and the thread count). LVX_FIXTURE_SEED picks another training seed, to check
# that the trained-model tests hold for any model that has learnt the task.
FIXTURE_SEED = int(os.environ.get("LVX_FIXTURE_SEED", "0"))
TARGET_ACCURACY = 0.85  # held-out top-1 on 256 images (chance: 0.33); the steps seeds 0-3 took are in the note
MAX_STEPS = 1500


@pytest.fixture(scope="session")
def shapes_model():
    """A tiny ViT trained on the synthetic shapes to TARGET_ACCURACY, and 96 held-out (images, labels, masks).

    Training data, the accuracy check and the explained images are disjoint draws (seeds s, 10000 + s, 20000 + s).
    The fixture fails, with the accuracy reached, if MAX_STEPS pass before TARGET_ACCURACY.
    """
    from lightning_vitx.data import ShapesDataset, tiny_vit_for_shapes, train_on_shapes

    seed = FIXTURE_SEED
    run = train_on_shapes(
        tiny_vit_for_shapes(64, seed=seed),
        ShapesDataset(64 * MAX_STEPS, 64, seed=seed),  # fresh samples every step: no sample is seen twice
        max_steps=MAX_STEPS,
        held_out=ShapesDataset(256, 64, seed=10_000 + seed),
        target_accuracy=TARGET_ACCURACY,
    )
    held_out = ShapesDataset(96, 64, seed=20_000 + seed)
    images, labels, masks = (
        torch.stack([torch.as_tensor(held_out[i][k]) for i in range(len(held_out))]) for k in range(3)
    )
    return run.model, images, labels, masks


# The trained tiny Swin (lightning_vitx.data.tiny_swin_for_shapes, 56 px: shifted windows, padding, two patch
# mergings), trained as the ViT above to the same held-out accuracy; seed 0 (one thread) took 1000 steps (held-out
# accuracy .863), 3-4 min of one core (12 min wall on the loaded 2-core machine), far above the ViT's ~1.5 min; only
# the Swin rows of the trained-model tests and the trained-Swin monitor test request it.
SWIN_MAX_STEPS = 1500
SWIN_IMAGE_SIZE = 56


@pytest.fixture(scope="session")
def shapes_swin():
    """A tiny Swin trained on the synthetic shapes to TARGET_ACCURACY, and 96 held-out (images, labels, masks).

    Same draws as ``shapes_model`` (training seed s, accuracy check 10000 + s, explained images 20000 + s) at
    SWIN_IMAGE_SIZE; fails, with the accuracy reached, if SWIN_MAX_STEPS pass before TARGET_ACCURACY.
    """
    from lightning_vitx.data import ShapesDataset, tiny_swin_for_shapes, train_on_shapes

    seed, size = FIXTURE_SEED, SWIN_IMAGE_SIZE
    run = train_on_shapes(
        tiny_swin_for_shapes(size, seed=seed),
        ShapesDataset(64 * SWIN_MAX_STEPS, size, seed=seed),
        max_steps=SWIN_MAX_STEPS,
        held_out=ShapesDataset(256, size, seed=10_000 + seed),
        target_accuracy=TARGET_ACCURACY,
    )
    held_out = ShapesDataset(96, size, seed=20_000 + seed)
    images, labels, masks = (
        torch.stack([torch.as_tensor(held_out[i][k]) for i in range(len(held_out))]) for k in range(3)
    )
    return run.model, images, labels, masks
