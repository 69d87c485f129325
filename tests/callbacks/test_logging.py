"""What the loggers receive from the monitor, read back from their files: W&B offline runs, TensorBoard events, PNGs."""

import glob
import importlib.util
import io
import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

import lightning_vitx
from lightning_vitx.data import SHAPE_CLASSES
from lightning_vitx.rendering.heatmap import MASK_COLOUR


def _sibling(name):
    """A module beside this one (tests run with --import-mode=importlib: no relative imports)."""
    spec = importlib.util.spec_from_file_location(f"lvx_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_runs, _records = _sibling("test_monitor"), _sibling("wandb_records")
ShapesClassifier, fit, monitor = _runs.ShapesClassifier, _runs.fit, _runs.monitor
config, history, table_rows = _records.config, _records.history, _records.table_rows
table_chain = _records.table_chain
defined_metrics = _records.defined_metrics


def validate_then_fit(root, watcher, logger):
    """The demo's shape: a validation pass before training (explain/epoch -1), then two epochs of three batches."""
    L.seed_everything(0, verbose=False)
    module = ShapesClassifier()
    trainer = L.Trainer(
        max_epochs=2,
        logger=logger,
        callbacks=[watcher],
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        limit_train_batches=3,
        limit_val_batches=3,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.validate(module, verbose=False)
    trainer.fit(module)
    return trainer


def wandb_run(tmp_path, monkeypatch, name, watcher):
    """A W&B offline run of ``validate_then_fit``; returns its run folder."""
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    save_dir = tmp_path / name
    save_dir.mkdir()
    logger = WandbLogger(project="lvx-test", name=name, save_dir=str(save_dir), offline=True)
    validate_then_fit(save_dir, watcher, logger)
    logger.experiment.finish()
    return glob.glob(f"{save_dir}/wandb/offline-run-*")[0]


def test_two_wandb_runs_differing_in_one_setting_can_be_told_apart_and_joined(tmp_path, monkeypatch):
    runs = {}
    for name, steps in [("five", 5), ("four", 4)]:
        watcher = monitor(metrics={"deletion": {"steps": steps}, "pointing_game": {}}, panel_size=3)
        runs[name] = wandb_run(tmp_path, monkeypatch, name, watcher)

    settings = {name: config(run)["explainability_monitor"] for name, run in runs.items()}
    five, four = settings["five"], settings["four"]
    assert five["metric_options"]["deletion"]["steps"] == 5 and four["metric_options"]["deletion"]["steps"] == 4
    assert {k for k in five if five[k] != four[k]} == {"metric_options"}  # the one setting that differs
    assert five["metric_options"]["deletion"]["baseline"] == "blur"  # resolved defaults, not empty dicts
    assert five["explainer_options"]["rollout"] == {"head_fusion": "mean", "discard_ratio": 0.0, "start_layer": 0}
    assert five["explainers"] == ["rollout", "gmar"] and five["version"] == lightning_vitx.__version__
    assert five["model"] == "vit_tiny_patch16_224" and five["panel_size"] == 3 and five["held_out"] == "validation"
    assert five["class_names"] == list(SHAPE_CLASSES)  # from the dataset's `classes`

    defined = defined_metrics(runs["five"])
    assert defined["explain/*"][0] == "explain/epoch"  # the x-axis of every explain/ key
    assert defined["explain/rollout/deletion"] == ("explain/epoch", {"min"})  # lower is better
    assert defined["explain/gmar/pointing_game"] == ("explain/epoch", {"max"})

    samples = {}
    for name, run in runs.items():
        rows = [row for row in history(run) if any(key.startswith("explain/") for key in row)]
        epochs = [row.get("explain/epoch") for row in rows]
        assert epochs == [-1, 0, 1], [sorted(row) for row in rows]  # every record carries the epoch
        for row in rows:  # scores and pictures of one pass in one record
            assert "explain/rollout/deletion" in row and "explain/gmar/maps/captions" in row
            captions = row["explain/gmar/maps/captions"]
            assert len(captions) == 3 and all(any(c in text for c in SHAPE_CLASSES) for text in captions)
            assert any(key.startswith("explain/inputs/") and "mask" in key for key in row)  # the mask overlay
        columns, table = table_rows(run, "explain/samples")
        assert columns[:7] == ["sample", "epoch", "image", "label", "prediction", "probability", "correct"]
        epochs = [row[columns.index("epoch")] for row in table]
        assert sorted(set(epochs)) == [-1, 0, 1] and len(table) == 9  # one table across the three passes
        # one incremental chain from the validation before training on: W&B's merged table keeps epoch -1
        assert table_chain(run, "explain/samples") == [(0, 0), (1, 1), (2, 2)]
        curves = [key.split("/")[3] for row in rows for key in row if key.startswith("explain/curves/deletion/")]
        curve_keys = {key.removesuffix("_table") for key in curves}
        assert curve_keys == {"init", "epoch_000", "epoch_001"}  # one chart per pass, none overwritten
        assert all(row[columns.index("label")] in SHAPE_CLASSES for row in table)
        samples[name] = sorted({row[0] for row in table})
    assert samples["five"] == samples["four"] == [0, 1, 2]  # runs join on the sample id


def test_tensorboard_gets_scores_and_pictures_of_a_pass_at_one_step_a_layout_and_the_settings(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, TENSORS, EventAccumulator

    watcher = monitor()
    trainer, _ = fit(tmp_path, [watcher], logger=TensorBoardLogger(tmp_path, name="tb"))
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={IMAGES: 0, SCALARS: 0, TENSORS: 0})
    events.Reload()
    steps = {int(s.step) for s in events.Scalars("explain/rollout/deletion")}
    assert len(steps) == 2 and 0 not in steps
    assert [s.value for s in events.Scalars("explain/epoch")] == [0.0, 1.0]
    for tag in ["explain/rollout/maps", "explain/gmar/maps", "explain/inputs", "explain/curves"]:
        assert [int(image.step) for image in events.Images(tag)] == [1, 2], tag  # epochs trained: the slider
    captions = [t.tensor_proto.string_val[0].decode() for t in events.Tensors("explain/captions/text_summary")]
    assert [int(t.step) for t in events.Tensors("explain/captions/text_summary")] == [1, 2]
    assert captions[0].startswith("epoch 0 (after 1 epoch; global step ")
    grid = np.asarray(Image.open(io.BytesIO(events.Images("explain/inputs")[0].encoded_image_string)).convert("RGB"))
    outline = np.round(np.array(MASK_COLOUR) * 255)
    assert (np.abs(grid.astype(float) - outline).max(axis=-1) < 1).sum() > 50  # the objects' outlines are drawn
    tensors = set(events.Tags()["tensors"])
    assert "custom_scalars__config__" in tensors  # one chart per metric, one line per explainer
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["deletion"] == ["^explain/deletion$"]
    for explainer in ("rollout", "gmar"):  # each explainer its own run: TensorBoard gives each run its own colour
        run = EventAccumulator(f"{trainer.logger.log_dir}/explain_by_explainer/{explainer}", {SCALARS: 0})
        run.Reload()
        mine = [(s.step, s.value) for s in run.Scalars("explain/deletion")]
        assert mine == [(s.step, s.value) for s in events.Scalars(f"explain/{explainer}/deletion")]
    settings = events.Tensors("explain/settings/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"explainers": [' in settings and '"start_layer": 0' in settings
    captions = events.Tensors("explain/captions/text_summary")[0].tensor_proto.string_val[0].decode()
    assert any(name in captions for name in SHAPE_CLASSES)
    assert watcher.scoring.metrics["rollout"]["deletion"].fractions.numel() == 6  # the options reached the metric


def test_tensorboard_hparams_hold_the_settings_and_each_scores_best_value(tmp_path):
    """The HPARAMS tab: read back with EventAccumulator from the monitor's sub-run (``<log_dir>/explain_best``)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, TENSORS, EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    watcher = monitor()
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    trainer = validate_then_fit(tmp_path, watcher, logger)
    events = EventAccumulator(f"{trainer.logger.log_dir}/explain_best", size_guidance={SCALARS: 0, TENSORS: 0})
    events.Reload()
    content = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["monitor/explainers"].string_value == '["rollout", "gmar"]'
    assert hparams["monitor/explainer_options/rollout/head_fusion"].string_value == "mean"
    experiment = events.SummaryMetadata("_hparams_/experiment").plugin_data.content
    infos = plugin_data_pb2.HParamsPluginData.FromString(experiment).experiment.metric_infos
    metrics = {info.name.tag for info in infos}
    assert {"explain/rollout/deletion", "explain/gmar/pointing_game", "explain/rollout/stability"} <= metrics
    scores = [row["explain/rollout/deletion"] for row in watcher.history]  # epochs -1, 0, 1: lower is better
    best = [s.value for s in events.Scalars("explain/rollout/deletion")]
    assert best == pytest.approx([min(scores[: i + 1]) for i in range(3)])
    pointing = [row["explain/gmar/pointing_game"] for row in watcher.history if "explain/gmar/pointing_game" in row]
    assert events.Scalars("explain/gmar/pointing_game")[-1].value == pytest.approx(max(pointing))  # higher is better


def test_without_an_image_logger_each_pass_gets_its_own_png_and_csv_rows_carry_the_epoch(tmp_path):
    trainer = validate_then_fit(tmp_path, monitor(), CSVLogger(tmp_path))
    names = sorted(os.path.basename(p) for p in glob.glob(f"{tmp_path}/**/explanations/*.png", recursive=True))
    panels = [n for n in names if n.startswith("explain_panel_")]
    assert len(panels) == 3 and len(set(panels)) == 3  # the untrained pass no longer overwrites epoch 0
    assert panels[0].startswith("explain_panel_epoch-01_step0000000")
    assert sum(n.startswith("explain_curves_") for n in names) == 3
    metrics = open(f"{trainer.log_dir}/metrics.csv").read()
    assert "explain/gmar/pointing_game" in metrics and "explain/epoch" in metrics


def test_the_passes_history_carries_the_explained_epoch(tmp_path):
    watcher = monitor()
    fit(tmp_path, [watcher], epochs=2)
    assert [row["epoch"] for row in watcher.history] == [0.0, 1.0]


def test_class_names_must_be_strings():
    with pytest.raises(TypeError, match="class_names must be a list of strings"):
        monitor(class_names="circle,square")
    assert monitor(class_names=["a", "b"]).settings()["class_names"] == ["a", "b"]
    assert json.dumps(monitor().settings())  # plain values only


def test_with_patch_interaction_the_receptive_field_figures_are_logged_every_pass(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    watcher = monitor(explainers=["rollout", "patch_interaction"])
    trainer, _ = fit(tmp_path, [watcher], logger=TensorBoardLogger(tmp_path, name="tb"))
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={IMAGES: 0})
    events.Reload()
    steps = [int(image.step) for image in events.Images("explain/rollout/maps")]
    for tag in ["explain/patch_interaction/erf", "explain/patch_interaction/erf_size"]:
        assert [int(image.step) for image in events.Images(tag)] == steps, tag
