"""Masks as named regions (scored per region) and the random maps' floor beside every score."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import pytest
import torch

import lightning_vitx.metrics as M
from lightning_vitx.callbacks import MonitorConfigError
from lightning_vitx.callbacks._explaining import ExplainingRun
from lightning_vitx.callbacks._held_out import HeldOut, check_batch_inputs
from lightning_vitx.callbacks._scoring import Scoring
from lightning_vitx.data import ShapesDataset, tiny_vit_for_shapes

CPU = torch.device("cpu")


def _sibling(name):
    spec = importlib.util.spec_from_file_location(f"lvx_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shapes(n: int, size: int = 32, seed: int = 3):
    images, labels, masks = zip(*[ShapesDataset(n, size, seed=seed)[i] for i in range(n)], strict=True)
    return torch.stack(images), torch.tensor(labels), torch.stack(masks)


def left_half(masks: torch.Tensor, empty_rows: slice = slice(0, 0)) -> torch.Tensor:
    """A second region: the left half of the image, empty on ``empty_rows``."""
    left = torch.zeros_like(masks, dtype=torch.bool)
    left[..., : masks.shape[-1] // 2] = True
    left[empty_rows] = False
    return left


def to_regions(batch):
    """The shapes' masks as two named regions; the second is empty on every other sample."""
    images, labels, masks = batch
    return images, labels, {"object": masks, "left": left_half(masks, slice(1, None, 2))}


def run(model):
    return ExplainingRun(model, CPU, 4, raise_errors=True)


def test_the_floor_is_the_metric_of_the_seeded_random_maps_the_same_every_pass_and_vs_random_is_the_difference():
    model = tiny_vit_for_shapes(32, seed=0).eval()
    images, labels, masks = shapes(6)
    ids = torch.tensor([4, 9, 2, 7, 0, 5])
    samples = {"ids": ids, "images": images, "labels": labels, "masks": masks}
    metrics = {"deletion": {"steps": 4}, "relevance_mass": {}, "pointing_game": {}}
    scoring = Scoring(["rollout", "gmar"], metrics, CPU, 4)
    passes = []
    for generator_seed in (0, 1):  # two passes, other maps, the same samples
        g = torch.Generator().manual_seed(generator_seed)
        maps = {"rollout": torch.rand(6, 4, 4, generator=g), "gmar": torch.rand(6, 4, 4, generator=g)}
        scoring.update(run(model), samples, maps, {})
        passes.append(scoring.compute("explain", set(), set(), False))
    first, second = passes
    random_maps = torch.stack([torch.rand(4, 4, generator=torch.Generator().manual_seed(int(i))) for i in ids])
    with torch.no_grad():
        target = model(images).argmax(1)
    for name, options in metrics.items():
        expected = M.create(name, **options)
        expected.update(model, images, random_maps, target, masks if M.get_info(name).needs_masks else None)
        floor = float(expected.compute()["score"])
        for explainer in ("rollout", "gmar"):
            key = f"explain/{explainer}/{name}"
            assert first[f"{key}/random"] == second[f"{key}/random"] == pytest.approx(floor, abs=1e-6)
            for scores in passes:
                assert scores[f"{key}/vs_random"] == scores[key] - scores[f"{key}/random"]
        assert first[f"explain/rollout/{name}"] != first[f"explain/gmar/{name}"]  # the explainers' own scores


def test_without_the_reference_no_floor_is_logged():
    model = tiny_vit_for_shapes(32, seed=0).eval()
    images, labels, masks = shapes(3)
    scoring = Scoring(["rollout"], {"relevance_mass": {}}, CPU, 4, reference=False)
    scoring.update(run(model), {"images": images, "masks": masks}, {"rollout": torch.rand(3, 4, 4)}, {})
    assert list(scoring.compute("explain", set(), set(), False)) == [
        "explain/rollout/focus/entropy",
        "explain/rollout/focus/gini",
        "explain/rollout/focus/top10",
        "explain/rollout/relevance_mass",
    ]


def test_named_regions_are_scored_each_on_the_samples_where_they_are_not_empty():
    model = tiny_vit_for_shapes(32, seed=0).eval()
    images, labels, masks = shapes(6)
    left = left_half(masks, slice(0, 2))  # empty on the first two samples
    held_out = HeldOut()
    held_out.add(torch.arange(6), slice(0, 6), images, labels, {"object": masks, "left": left})
    samples = held_out.samples
    assert torch.equal(samples["masks"], masks | left)  # the union: what the panel outlines
    maps = {"rollout": torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(0))}
    scoring = Scoring(["rollout"], {"relevance_mass": {}, "deletion": {"steps": 4}}, CPU, 4, regions=["object", "left"])
    assert scoring.keys == ["relevance_mass/object", "relevance_mass/left", "deletion"]
    warned = []
    scoring.update(ExplainingRun(model, CPU, 4, warn=lambda key, text: warned.append(text)), samples, maps, {})
    scores = scoring.compute("explain", set(), set(), False)
    assert "explain/rollout/relevance_mass" not in scores  # named regions replace the unnamed key
    assert warned == [
        "region 'left' is empty in 2 of 6 held-out samples on this rank: they are not scored for "
        "'relevance_mass/left', the others are"
    ]
    with torch.no_grad():
        target = model(images).argmax(1)
    for region, mask, rows in [("object", masks, slice(0, 6)), ("left", left, slice(2, 6))]:
        expected = M.create("relevance_mass")
        expected.update(model, images[rows], maps["rollout"][rows], target[rows], mask[rows])
        assert scores[f"explain/rollout/relevance_mass/{region}"] == pytest.approx(float(expected.compute()["score"]))
        assert not math.isnan(scores[f"explain/rollout/relevance_mass/{region}/random"])


def test_a_region_missing_from_the_held_out_set_is_nan_with_a_warning():
    model = tiny_vit_for_shapes(32, seed=0).eval()
    images, labels, masks = shapes(3)
    scoring = Scoring(["rollout"], {"pointing_game": {}}, CPU, 4, regions=["object", "cue"])
    warned = []
    samples = {"images": images, "regions/object": masks}
    scoring.update(
        ExplainingRun(model, CPU, 4, warn=lambda key, text: warned.append(text)),
        samples,
        {"rollout": torch.rand(3, 4, 4)},
        {},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics: compute before update
        scores = scoring.compute("explain", set(), set(), False)
    assert math.isnan(scores["explain/rollout/pointing_game/cue"])
    assert 0.0 <= scores["explain/rollout/pointing_game/object"] <= 1.0
    assert warned == [
        "region 'cue' is missing from some held-out batches on this rank: 'pointing_game/cue' is not scored (NaN)"
    ]


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ({"random": torch.zeros(2, 8, 8)}, "region names must be"),
        ({"a/b": torch.zeros(2, 8, 8)}, "region names must be"),
        ({"object": torch.zeros(2, 4, 4)}, "region 'object': masks must be"),
    ],
)
def test_region_dicts_are_checked_on_the_first_batch(masks, match):
    with pytest.raises(MonitorConfigError, match=match):
        check_batch_inputs((torch.zeros(2, 3, 8, 8), None, masks), needs_labels=False)


def test_a_fit_logs_each_region_and_its_floor_and_checks_region_alerts_at_the_first_batch(tmp_path):
    runs = _sibling("test_monitor")
    watcher = runs.monitor(batch_to_inputs=to_regions, alerts={"explain/gmar/pointing_game/left": {"below": -1.0}})
    trainer, _ = runs.fit(tmp_path, [watcher], epochs=1)
    assert watcher.regions == ["object", "left"]
    logged = {k for k in trainer.callback_metrics if k.startswith("explain/gmar/pointing_game")}
    assert logged == {
        f"explain/gmar/pointing_game/{region}{suffix}"
        for region in ("object", "left")
        for suffix in ("", "/random", "/vs_random")
    }
    assert set(watcher.score_keys()) >= logged
    assert 0.0 <= float(trainer.callback_metrics["explain/gmar/pointing_game/left"]) <= 1.0
    assert watcher.state_dict()["regions"] == ["object", "left"]

    typo = runs.monitor(batch_to_inputs=to_regions, alerts={"explain/gmar/pointing_game/cue": {"below": 0.5}})
    with pytest.raises(MonitorConfigError, match=r"never logs: \['explain/gmar/pointing_game/cue'\]"):
        runs.fit(tmp_path / "typo", [typo], epochs=1)
