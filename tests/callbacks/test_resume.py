"""Resuming with other monitor settings: a warning, and what the change asks for."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_vitx.callbacks import ExplainabilityMonitor


def monitor(**options):
    defaults = dict(explainers=["rollout", "gmar"], metrics={"deletion": {"steps": 4}}, num_samples=8, panel_size=2)
    return ExplainabilityMonitor(**{**defaults, **options})


def first_run(tmp_path, fit, **options):
    watcher = monitor(**options)
    fit(tmp_path, [watcher, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)], epochs=1)
    return watcher, str(tmp_path / "ckpt" / "last.ckpt")


def resume(tmp_path, fit, checkpoint, watcher):
    return fit(tmp_path, [watcher], epochs=2, ckpt_path=checkpoint)[0]


@pytest.fixture
def fit():
    """test_monitor.py's Trainer.fit helper (tiny ViT, three batches, CPU)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("test_monitor", Path(__file__).with_name("test_monitor.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fit


def test_resume_with_the_same_settings_keeps_samples_history_and_stability(tmp_path, fit):
    before, checkpoint = first_run(tmp_path, fit)
    after = monitor()
    resume(tmp_path, fit, checkpoint, after)
    assert torch.equal(after.samples["images"], before.samples["images"])
    assert len(after.history) == 2 and "explain/rollout/stability" in after.history[-1]


def test_another_num_samples_collects_the_held_out_set_again(tmp_path, fit):
    _, checkpoint = first_run(tmp_path, fit)
    after = monitor(num_samples=5)
    with pytest.warns(UserWarning, match="held-out set was 8 samples from validation batches; collecting 5"):
        resume(tmp_path, fit, checkpoint, after)
    assert after.samples["ids"].tolist() == [0, 1, 2, 3, 4]
    assert "explain/rollout/stability" not in after.history[-1]  # no last maps of these samples


def test_changed_explainer_options_restart_its_stability_and_history(tmp_path, fit):
    _, checkpoint = first_run(tmp_path, fit)
    after = monitor(explainers={"rollout": {"discard_ratio": 0.5}, "gmar": {}})
    with pytest.warns(UserWarning, match=r"options changed since the checkpoint for explainers \['rollout'\]"):
        resume(tmp_path, fit, checkpoint, after)
    first, last = after.history
    assert "explain/rollout/deletion" not in first and "explain/gmar/deletion" in first
    assert "explain/rollout/stability" not in last and "explain/gmar/stability" in last


def test_an_explainer_disabled_before_the_checkpoint_is_tried_again(tmp_path, fit, monkeypatch):
    from lightning_vitx.explainers.gmar import GMAR

    original = GMAR.read
    monkeypatch.setattr(GMAR, "read", lambda self, record: 1 / 0)
    with pytest.warns(UserWarning, match="explainer 'gmar' failed"):
        _, checkpoint = first_run(tmp_path, fit)
    monkeypatch.setattr(GMAR, "read", original)
    after = monitor()
    with pytest.warns(UserWarning, match=r"explainers \['gmar'\] were disabled before the checkpoint; trying"):
        trainer = resume(tmp_path, fit, checkpoint, after)
    assert "explain/gmar/deletion" in after.history[-1]
    assert torch.isfinite(trainer.callback_metrics["explain/gmar/deletion"])
