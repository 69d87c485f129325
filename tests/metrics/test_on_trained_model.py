"""On a tiny ViT trained on synthetic shapes: explainers beat random maps; metrics leave the model as found."""

import pytest
import torch

import lightning_vitx.explainers as X
import lightning_vitx.metrics as M


def scores(name, model, images, maps, labels, masks):
    metric = M.create(name)
    metric.update(model, images, maps, labels, masks)
    return metric.compute()["score"]


@pytest.fixture(scope="module")
def explained(shapes_model):
    model, images, labels, masks = shapes_model
    maps = X.create_many(X.available(), model)(images, labels)
    random = [torch.rand(maps["rollout"].shape, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    return maps, random


@pytest.mark.parametrize("name", X.available())
def test_explainers_beat_random_maps(name, shapes_model, explained):
    model, images, labels, masks = shapes_model
    maps, random = explained
    # the most favourable of three random draws: explainers must beat it clearly
    random_deletion = min(scores("deletion", model, images, r, labels, masks) for r in random)
    random_pointing = max(scores("pointing_game", model, images, r, labels, masks) for r in random)
    assert scores("deletion", model, images, maps[name], labels, masks) < random_deletion - 0.02
    assert scores("pointing_game", model, images, maps[name], labels, masks) > random_pointing + 0.15


def test_metrics_leave_the_model_as_found_and_work_under_inference_mode(shapes_model, explained):
    model, images, labels, masks = shapes_model
    maps = explained[0]["rollout"]
    model.train()
    rng = torch.get_rng_state()
    params = [p.detach().clone() for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    try:
        expected = {name: scores(name, model, images[:8], maps[:8], labels[:8], masks[:8]) for name in M.available()}
        assert model.training and all(m.training for m in model.modules())
        for grad, p in zip(grads, model.parameters(), strict=True):
            assert (grad is None and p.grad is None) or torch.equal(grad, p.grad)
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(torch.equal(p, q) for p, q in zip(params, model.parameters(), strict=True))
        with torch.inference_mode():
            for name in M.available():
                value = scores(name, model, images[:8].clone(), maps[:8], labels[:8], masks[:8])
                torch.testing.assert_close(value, expected[name])
    finally:
        model.eval()
