"""The monitor's scoring: the random-order reference curves drawn beside the explainers' curves."""

import numpy as np
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
    assert list(scoring.reference) == ["deletion"]  # only metrics with curves have a reference line
    scoring.update(ExplainingRun(model, torch.device("cpu"), 4, raise_errors=True), samples, maps, {})
    scoring.compute("explain", set(), set(), False)
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
