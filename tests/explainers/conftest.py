"""Tiny timm ViTs for the LRP-family tests: 32x32 images in 8x8 patches (a 4x4 grid), width 16, two heads."""

import pytest
import timm
import torch

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 16, "num_heads": 2, "num_classes": 5}
TINY_CASES = {
    "vit": ("vit_tiny_patch16_224", {}),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 2}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
    "no_embed_class": ("vit_tiny_patch16_224", {"no_embed_class": True}),
    "pre_norm": ("vit_tiny_patch16_224", {"pre_norm": True}),  # a LayerNorm (norm_pre) before the blocks
}


def make_tiny_vit(case="vit", depth=2, seed=0, peaked_pos_embed=False):
    """Peaked attention and distinct classes, as in tests/conftest.make_vit; optionally a strong position embedding."""
    name, kwargs = TINY_CASES[case]
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, depth=depth, **TINY, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.normal_(0.0, 0.5, generator=generator)
        if peaked_pos_embed:
            model.pos_embed.normal_(0.0, 0.5, generator=generator)
    return model


def make_tiny_images(batch=3, seed=5):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def tiny_vit():
    return make_tiny_vit


@pytest.fixture
def tiny_images():
    return make_tiny_images


@pytest.fixture
def tiny_kwargs():
    return dict(TINY)
