"""The monitor's scoring: the random-order reference curves drawn beside the explainers' curves."""

import warnings

import numpy as np
import pytest
import torch

import lightning_vitx.metrics as M
from lightning_vitx.callbacks._explaining import ExplainingRun
from lightning_vitx.callbacks._scoring import Scoring
from lightning_vitx.data import ShapesDataset, tiny_vit_for_shapes


def test_the_reference_curve_is_the_metric_of_random_maps_seeded_by_sample_id():
    model = tiny_vit_for_shapes(32, seed=0).eval()
    images, labels, masks = (
        torch.stack(parts) if isinstance(parts[0], torch.Tensor) else torch.tensor(parts)
        for parts in zip(*[ShapesDataset(6, 32, seed=3)[i] for i in range(6)], strict=True)
    )
    ids = torch.tensor([4, 9, 2, 7, 0, 5])
    samples = {"ids": ids, "images": images, "labels": labels, "masks": masks}
    maps = {"rollout": torch.rand(6, 4, 4)}
    scoring = Scoring(["rollout"], {"deletion": {"steps": 4}, "pointing_game": {}}, torch.device("cpu"), 4)
    assert list(scoring.reference) == ["deletion", "pointing_game"]  # the floor of every metric
    scoring.update(ExplainingRun(model, torch.device("cpu"), 4, raise_errors=True), samples, maps, {})
    scoring.compute("explain", set(), set(), False)
    assert list(scoring.reference_curves) == ["deletion"]  # only metrics with curves have a reference line
    x, y = scoring.reference_curves["deletion"]

    expected = M.create("deletion", steps=4)
    random_maps = torch.stack([torch.rand(4, 4, generator=torch.Generator().manual_seed(int(i))) for i in ids])
    with torch.no_grad():
        target = model(images).argmax(1)
    expected.update(model, images, random_maps, target)
    result = expected.compute()
    np.testing.assert_allclose(x, result["fractions"].numpy())
    np.testing.assert_allclose(y, result["curve"].numpy(), rtol=1e-5)
    assert not np.allclose(y, scoring.curves["deletion"]["rollout"][1])  # not the explainer's own curve


def test_without_reference_curves_no_random_order_is_scored():
    model = tiny_vit_for_shapes(32, seed=0).eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scoring = Scoring(["rollout"], {"deletion": {"steps": 4}}, torch.device("cpu"), 4, reference=False)
    assert scoring.reference == {}
    scoring.update(
        ExplainingRun(model, torch.device("cpu"), 4, raise_errors=True),
        {"images": images},
        {"rollout": torch.rand(3, 4, 4)},
        {},
    )
    scores = scoring.compute("explain", set(), set(), False)
    assert scoring.reference_curves == {} and 0 <= scores["explain/rollout/deletion"] <= 1


@pytest.mark.parametrize("name", ["deletion", "insertion", "positive_perturbation", "negative_perturbation"])
def test_a_metric_given_the_shared_curves_scores_as_it_does_alone(name):
    from lightning_vitx.callbacks._curves import stream_curves

    model = tiny_vit_for_shapes(32, seed=0).eval()
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = {"a": torch.rand(5, 4, 4), "b": torch.rand(5, 4, 4)}
    maps["b"][1] = 0.0  # skipped: no curve for it
    with torch.no_grad():
        logits = model(images).float()
    target = logits.argmax(1)
    metrics = {owner: {name: M.create(name, max_batch=5)} for owner in maps}
    curves = stream_curves(model, images, maps, None, target, logits, metrics, 5)
    for owner, m in maps.items():
        alone = M.create(name, max_batch=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alone.update(model, images, m, target)
            metrics[owner][name].update(model, images, m, target, curves=curves[owner, name, 0])
        torch.testing.assert_close(metrics[owner][name].compute(), alone.compute(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="expected curves of the 5 usable samples"):
        alone.update(model, images, maps["a"], target, curves=torch.zeros(4, 11))
