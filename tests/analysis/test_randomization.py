"""randomization_check on hand-built explainers whose answer is known, and the model left as found."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from lightning_vitx.analysis import randomization_check


def tiny_vit(**kwargs):
    torch.manual_seed(123)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=16, img_size=64, patch_size=8, depth=3, **kwargs
    ).eval()


def weight_blind(model):
    """Each patch's mean brightness: reads the images only."""

    def explain(images, target):
        return torch.nn.functional.avg_pool2d(images.mean(1, keepdim=True), 8)[:, 0]

    return explain


def head_only(model):
    """The head's weight row of the target class, its first 64 entries laid out on the 8x8 grid."""

    def explain(images, target):
        return model.head.weight[target, :64].detach().reshape(-1, 8, 8)

    return explain


IMAGES = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
TARGETS = torch.arange(8)


@pytest.mark.parametrize("cascade", [True, False])
def test_an_explainer_that_ignores_the_weights_keeps_correlation_one(cascade):
    result = randomization_check(tiny_vit(), IMAGES, {"blind": weight_blind}, target=TARGETS, cascade=cascade)
    assert result.stages == ["head", "block 2", "block 1", "block 0"]
    assert result.correlations["blind"] == pytest.approx([1.0] * 4, abs=1e-12)
    assert result.floor["blind"] == pytest.approx(1.0, abs=1e-12)


def test_an_explainer_that_reads_the_head_loses_it_once_the_head_is_redrawn():
    cascading = randomization_check(tiny_vit(), IMAGES, {"head": head_only}, target=TARGETS)
    # 8 independent 64-entry rankings: the mean correlation has a standard deviation of ~0.045.
    assert all(abs(value) < 0.25 for value in cascading.correlations["head"])
    independent = randomization_check(tiny_vit(), IMAGES, {"head": head_only}, target=TARGETS, cascade=False)
    assert abs(independent.correlations["head"][0]) < 0.25
    assert independent.correlations["head"][1:] == pytest.approx([1.0] * 3, abs=1e-12)  # the head untouched


def test_registry_explainers_the_table_and_the_figure():
    result = randomization_check(tiny_vit(), IMAGES[:4], ["rollout", "generic_attention"])
    assert result.correlations["rollout"][0] == pytest.approx(1.0)  # rollout reads no head
    assert result.correlations["generic_attention"][0] < 1.0  # its gradients come from the head
    assert all(math.isfinite(v) for values in result.correlations.values() for v in values)
    table = result.table().splitlines()
    assert table[0] == "| explainer | head | block 2 | block 1 | block 0 | floor |" and len(table) == 4
    assert len(result.figure().axes[0].lines) == 4  # a line and a floor per explainer


def test_the_model_and_the_global_rng_are_left_as_found():
    model = tiny_vit(class_token=False, global_pool="avg", fc_norm=False).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    randomization_check(model, IMAGES[:2], ["gradcam"])
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_swin_stages_are_its_blocks_top_down():
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=3,
        img_size=32,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(1, 2),
        window_size=4,
    ).eval()
    result = randomization_check(model, torch.randn(2, 3, 32, 32), ["layernorm_stats"])
    assert result.stages == ["head", "block 1", "block 0"]


def test_bad_explainers_are_refused():
    with pytest.raises(ValueError, match="rolout"):
        randomization_check(tiny_vit(), IMAGES[:2], ["rolout"])
    with pytest.raises(TypeError, match="callable"):
        randomization_check(tiny_vit(), IMAGES[:2], {"x": "rollout"})
    with pytest.raises(TypeError, match="non-empty list"):
        randomization_check(tiny_vit(), IMAGES[:2], "rollout")
