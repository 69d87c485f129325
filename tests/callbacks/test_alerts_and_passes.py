"""The monitor's alerts, focus scores and saved passes in real fits; W&B alerts only from online runs; MLflow."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from lightning_vitx.callbacks import MonitorConfigError
from lightning_vitx.loggers import PassLogger, load_passes


def _sibling(name):
    spec = importlib.util.spec_from_file_location(f"lvx_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_runs = _sibling("test_monitor")
fit, monitor = _runs.fit, _runs.monitor


def test_an_alert_warns_counts_and_stops_the_run_through_early_stopping(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    watcher = monitor(alerts={"explain/rollout/deletion": {"above": -1.0}})  # fires on the first explained pass
    stop = EarlyStopping(monitor="explain/alerts", mode="min", divergence_threshold=0.5, patience=1000)
    with pytest.warns(UserWarning, match=r"alert: explain/rollout/deletion = .* at epoch 0, above -1"):
        trainer, _ = fit(tmp_path, [watcher, stop], logger=TensorBoardLogger(tmp_path, name="tb"), epochs=4)
    assert trainer.current_epoch == 1 and trainer.should_stop  # stopped after the first epoch's validation
    assert float(trainer.callback_metrics["explain/alerts"]) == 1.0
    assert watcher.state_dict()["alerts"]["fired"] == 1
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={TENSORS: 0})
    events.Reload()
    (entry,) = events.Tensors("explain/alerts/text_summary")
    assert "explain/rollout/deletion" in entry.tensor_proto.string_val[0].decode()


def test_alert_rules_on_keys_the_monitor_never_logs_fail_at_setup(tmp_path):
    with pytest.raises(MonitorConfigError, match=r"alerts=.*never logs: \['explain/gradcam/deletion'\]"):
        fit(tmp_path, [monitor(alerts={"explain/gradcam/deletion": {"below": 0.1}})], epochs=1)
    with pytest.raises(ValueError, match="exactly one of"):
        monitor(alerts={"explain/rollout/deletion": {"under": 0.1}})


def test_focus_scores_and_saved_passes(tmp_path):
    watcher = monitor(save_passes=True)
    trainer, _ = fit(tmp_path, [watcher], logger=TensorBoardLogger(tmp_path, name="tb"), epochs=2)
    for explainer in ("rollout", "gmar"):
        for stat in ("entropy", "gini", "top10"):
            value = float(trainer.callback_metrics[f"explain/{explainer}/focus/{stat}"])
            assert 0.0 <= value <= 1.0, (explainer, stat, value)
    saved = load_passes(str(Path(trainer.logger.log_dir) / "explain_passes"))
    assert [p.epoch for p in saved] == [0, 1]
    last = saved[-1]
    assert last.sample_ids.tolist() == [0, 1, 2, 3]  # the panel's samples, by global id
    for name in ("rollout", "gmar"):  # the panel's maps: the first held-out samples' maps, bit for bit
        assert torch.equal(last.maps[name], watcher.last_maps[name][:4])
    assert last.scores == {k: v for k, v in watcher.history[-1].items() if k != "epoch"}
    assert last.settings["explainers"] == watcher.settings()["explainers"]
    assert {"explain/inputs", "explain/rollout/maps", "explain/curves"} <= set(last.pictures)


def wandb_logger(mode: str):
    run = SimpleNamespace(settings=SimpleNamespace(mode=mode), offline=mode != "online", alert=mock.Mock())
    logger = mock.MagicMock(spec=WandbLogger)
    logger.experiment = run
    return logger, run


@pytest.mark.parametrize("mode", ["online", "offline", "disabled"])
def test_wandb_alerts_go_from_online_runs_only(mode):
    logger, run = wandb_logger(mode)
    PassLogger("explain").alert(SimpleNamespace(loggers=[logger], global_step=3), ["alert: a", "alert: b"], epoch=2)
    if mode == "online":
        run.alert.assert_called_once_with(title="explain: explanation alert (epoch 2)", text="alert: a\n\nalert: b")
    else:
        run.alert.assert_not_called()


def test_a_wandb_version_without_alerts_or_a_failing_alert_costs_nothing():
    logger, run = wandb_logger("online")
    run.alert.side_effect = RuntimeError("no network")
    PassLogger("explain").alert(SimpleNamespace(loggers=[logger], global_step=0), ["alert: a"], epoch=0)
    del run.alert
    PassLogger("explain").alert(SimpleNamespace(loggers=[logger], global_step=0), ["alert: a"], epoch=0)


def test_mlflow_gets_each_pass_as_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database; a test wants a folder
    logger = MLFlowLogger(experiment_name="lvx", tracking_uri=f"file:{tmp_path}/mlruns")
    trainer, _ = fit(tmp_path, [monitor()], logger=logger, epochs=1)
    client, run_id = logger.experiment, logger.run_id
    files = {Path(a.path).name for a in client.list_artifacts(run_id, "explain/epoch_000")}
    assert {"manifest.json", "maps.pt", "explain_inputs.png", "explain_rollout_maps.png"} <= files
    # the file store keeps one file per key: a score with its floor beside it (".../deletion/random") is ".../all"
    history = client.get_metric_history(run_id, "explain/rollout/deletion/all")
    assert len(history) == 1 and math.isfinite(history[0].value)
    (floor,) = client.get_metric_history(run_id, "explain/rollout/deletion/random")
    (difference,) = client.get_metric_history(run_id, "explain/rollout/deletion/vs_random")
    assert difference.value == pytest.approx(history[0].value - floor.value, abs=1e-6)
    assert not (Path(trainer.default_root_dir) / "explanations").exists()  # MLflow takes the pictures
