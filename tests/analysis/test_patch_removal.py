"""Interaction windows on hand-built interactions; dropping the least-interacting patches on a trained ViT."""

from __future__ import annotations

import pytest
import timm
import torch

from lightning_vitx.analysis import PatchInteractions, patch_removal_curve
from lightning_vitx.analysis.patch_removal import interaction_windows


def test_interaction_windows_are_the_smallest_square_holding_the_mass():
    interactions = torch.zeros(2, 25, 25)  # a 5x5 grid
    interactions[0, 12, 0] = 1.0  # the centre patch takes in from a corner: a 5-wide window holds it
    interactions[0, 12, 12] = 0.05
    interactions[1, :, :] = torch.eye(25)  # every patch takes in from itself only: side 1
    result = PatchInteractions([interactions], [(5, 5)], [], [], [], torch.zeros(2), "attention", 0.9)
    torch.testing.assert_close(interaction_windows(result), torch.tensor([[5.0], [1.0]]))
    # with mass 0.05 of the centre's 1.05, the patch itself is enough
    torch.testing.assert_close(interaction_windows(result, mass=0.04)[0], torch.tensor([1.0]))


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    kwargs = dict(depth=2, embed_dim=32, num_heads=2, img_size=32, patch_size=8, num_classes=3)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()


def test_removal_drops_exactly_the_asked_tokens_and_leaves_the_model_as_found(tiny_vit):
    lengths = []
    probe = tiny_vit.blocks[0].register_forward_hook(lambda module, inputs, output: lengths.append(inputs[0].shape[1]))
    try:
        curve = patch_removal_curve(tiny_vit, torch.randn(3, 3, 32, 32), fractions=(0.0, 0.25, 0.5))
    finally:
        probe.remove()
    # 16 patches + the class token: the interactions' own pass, the full prediction, then each removal twice
    assert lengths[-6:] == [17, 17, 13, 13, 9, 9]
    assert curve.by_interaction[0] == curve.random[0] == 1.0  # nothing dropped: the model agrees with itself
    assert not tiny_vit.patch_drop._forward_hooks and not tiny_vit.training


def test_what_cannot_be_removed_is_refused(tiny_vit):
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, embed_dim=24, depths=(2,), num_heads=(2,),
        window_size=4, num_classes=3,
    )  # fmt: skip
    with pytest.raises(TypeError, match="windowed models \\(Swin\\) cannot run on a subset"):
        patch_removal_curve(swin, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"fractions must lie in \[0, 1\)"):
        patch_removal_curve(tiny_vit, torch.randn(1, 3, 32, 32), fractions=(0.0, 1.0))


def test_on_the_trained_vit_the_least_interacting_patches_can_go(shapes_model):
    """Ma et al. 2022's use: dropping 80 % of the patches by least interaction keeps most of the accuracy."""
    model, images, labels, _ = shapes_model
    curve = patch_removal_curve(model, images, labels, fractions=(0.0, 0.5, 0.8))
    assert curve.by_interaction[0] == curve.random[0] > 0.8
    assert (curve.by_interaction[1:] > curve.random[1:] + 0.15).all(), (curve.by_interaction, curve.random)
