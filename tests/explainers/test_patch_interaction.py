"""patch_interaction: the map is the interaction analysis summed, on ViT and Swin; it joins the shared pass."""

import pytest
import torch

import lightning_vitx.explainers as X
from lightning_vitx.adapters.geometry import spread
from lightning_vitx.analysis import patch_interactions


def expected_map(result, side):
    """Oracle from the analysis' dense matrices: per block column (key) or row (query) sums, spread, summed."""
    first = result.grid_sizes[0]
    total = 0
    for matrix, grid in zip(result.interactions, result.grid_sizes, strict=True):
        mass = 0
        if side in ("key", "both"):
            mass = mass + matrix.sum(dim=1)
        if side in ("query", "both"):
            mass = mass + matrix.sum(dim=2)
        total = total + spread(mass, grid, first)
    return total.view(-1, *first)


@pytest.mark.parametrize("case", ["vit", "registers", "swin"])
@pytest.mark.parametrize("indicator", ["gradient", "attention"])
@pytest.mark.parametrize("side", ["key", "query", "both"])
def test_map_is_the_summed_interactions(case, indicator, side, models, make_images):
    model, size = models[case], 72 if case == "swin" else 224
    x, target = make_images(size, batch=2), torch.tensor([3, 1])
    maps = X.create("patch_interaction", model, indicator=indicator, side=side)(x, target)
    oracle = expected_map(patch_interactions(model, x, target, indicator=indicator), side)
    torch.testing.assert_close(maps, oracle, rtol=1e-4, atol=1e-6)


def test_attention_sides_by_hand(tiny_vit, tiny_images):
    """Attention indicator: a patch's key mass is the attention all patch queries pay it, its query mass the
    attention it pays all patches (1 minus what goes to the class token), summed over blocks."""
    model, x = tiny_vit(depth=2), tiny_images(2)
    from lightning_vitx.adapters import capture_pass, detect

    record = capture_pass(detect(model), x)
    by_hand = sum(attention.mean(dim=1)[:, 1:, 1:].sum(dim=1) for attention in record.attentions)
    maps = X.create("patch_interaction", model, indicator="attention", side="key")(x)
    torch.testing.assert_close(maps, by_hand.view(2, 4, 4))
    by_hand = sum(1 - attention.mean(dim=1)[:, 1:, 0] for attention in record.attentions)
    maps = X.create("patch_interaction", model, indicator="attention")(x)
    torch.testing.assert_close(maps, by_hand.view(2, 4, 4))


def test_joins_the_shared_pass(models, make_images):
    model, x = models["vit"], make_images(224, batch=2)
    group = X.create_many({"patch_interaction": {"side": "query"}, "rollout": {}, "generic_attention": {}}, model)
    together = group(x, 2)
    alone = X.create("patch_interaction", model, side="query")(x, 2)
    torch.testing.assert_close(together["patch_interaction"], alone, rtol=0, atol=0)


def test_bad_options_say_what_to_do(models):
    with pytest.raises(ValueError, match="indicator must be one of"):
        X.create("patch_interaction", models["vit"], indicator="rollout")
    with pytest.raises(ValueError, match="side must be"):
        X.create("patch_interaction", models["vit"], side="row")
