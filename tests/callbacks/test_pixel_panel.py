"""The monitor's ``pixel_maps`` option: the LRP family drawn from its pixel maps, the rest as before, faults warned."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import lightning_vitx.callbacks._pass as pass_module
import lightning_vitx.explainers as X
from lightning_vitx.callbacks._explaining import ExplainingRun, MonitorPass
from lightning_vitx.callbacks._panel import panel_pixel_maps, pass_record
from lightning_vitx.explainers.lrp import LRP
from lightning_vitx.loggers import PassRecord
from lightning_vitx.rendering import model_mean_std, overlay, shared_scale


def _sibling(name):
    """A module beside this one (tests run with --import-mode=importlib: no relative imports)."""
    spec = importlib.util.spec_from_file_location(f"lvx_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_runs = _sibling("test_monitor")
NAMES = ["rollout", "lrp", "transformer_attribution"]


def pictures(rgb):
    return list((rgb.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy())


def watched_fit(tmp_path, monkeypatch, **options):
    """One epoch with the monitor; returns the module, the monitor and each pass_record call's ``pixel_maps``."""
    passed = []

    def spy(*args, **kwargs):
        passed.append(kwargs.get("pixel_maps"))
        return pass_record(*args, **kwargs)

    monkeypatch.setattr(pass_module, "pass_record", spy)
    watcher = _runs.monitor(explainers=NAMES, metrics={"pointing_game": {}}, **options)
    _, module = _runs.fit(tmp_path, [watcher], epochs=1)
    return module, watcher, passed


def test_pixel_maps_draw_the_lrp_family_at_the_pixels_and_leave_the_rest(tmp_path, monkeypatch):
    module, watcher, passed = watched_fit(tmp_path, monkeypatch, pixel_maps=True)
    model, panel = module.backbone, watcher.last_panel
    assert watcher.settings()["pixel_maps"] is True
    # what the monitor drew from: each LRP explainer's pixel map of the panel's samples, for the predicted class
    (drawn,) = passed
    assert set(drawn) == {"lrp", "transformer_attribution"}
    predicted = panel.probabilities.argmax(dim=1)
    for name, maps in drawn.items():
        assert maps.shape == (4, 32, 32)
        torch.testing.assert_close(maps, X.create(name, model).pixel_relevance(panel.images, predicted))
    # drawn on a signed scale in place of the patch map; rollout's picture is the same as without the option
    shown = MonitorPass(ExplainingRun(model, torch.device("cpu"), 4), {}, {}, [])
    with_pixels = pass_record(PassRecord(0, 0, {}), shown, panel, pixel_maps=drawn)
    without = pass_record(PassRecord(0, 0, {}), shown, panel)
    mean, std = model_mean_std(model)
    for name, maps in drawn.items():
        expected = pictures(overlay(panel.images, maps, mean, std, scale=shared_scale(maps, True), signed=True))
        found = with_pixels.images[f"explain/{name}/maps"].pictures
        assert all(np.array_equal(a[: b.shape[0]], b) for a, b in zip(found, expected, strict=True))  # above its bar
        patch_drawn = without.images[f"explain/{name}/maps"].pictures
        assert not all(np.array_equal(a, b) for a, b in zip(found, patch_drawn, strict=True))
    rollout_with, rollout_without = (r.images["explain/rollout/maps"].pictures for r in (with_pixels, without))
    assert all(np.array_equal(a, b) for a, b in zip(rollout_with, rollout_without, strict=True))


def test_without_the_option_no_pixel_pass_runs(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pixel_relevance ran without pixel_maps=True")

    monkeypatch.setattr(LRP, "pixel_relevance", forbidden)
    _, watcher, passed = watched_fit(tmp_path, monkeypatch)
    assert passed == [{}] and watcher.settings()["pixel_maps"] is False


def test_a_failing_pixel_map_warns_once_and_its_patch_map_is_drawn(tmp_path, monkeypatch):
    def broken(self, images, target=None):
        raise RuntimeError("pixel pass broken on purpose")

    monkeypatch.setattr(LRP, "pixel_relevance", broken)
    with pytest.warns(UserWarning, match="lrp's pixel map could not be drawn, its patch map is: RuntimeError"):
        _, watcher, passed = watched_fit(tmp_path, monkeypatch, pixel_maps=True)
    assert set(passed[0]) == {"transformer_attribution"}
    assert "explain/lrp/pointing_game" in watcher.history[-1]
    with pytest.raises(RuntimeError, match="broken on purpose"):
        watched_fit(tmp_path, monkeypatch, pixel_maps=True, on_error="raise")


def test_panel_pixel_maps_explain_the_labels_when_given(tmp_path, monkeypatch):
    module, watcher, _ = watched_fit(tmp_path, monkeypatch)
    panel, model = watcher.last_panel, module.backbone
    labels = (panel.probabilities.argmax(dim=1) + 1) % panel.probabilities.shape[1]  # never the predicted class
    found, errors = panel_pixel_maps(model, panel, watcher.explainer_options, labels)
    assert not errors
    torch.testing.assert_close(found["lrp"], X.create("lrp", model).pixel_relevance(panel.images, labels))
    assert not torch.allclose(found["lrp"], X.create("lrp", model).pixel_relevance(panel.images))
