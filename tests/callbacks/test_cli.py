"""The LightningCLI entry point with the YAML presets in callbacks/ (run as a user would, in a subprocess)."""

import csv
import glob
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lightning_vitx.explainers as X
import lightning_vitx.metrics as M
from lightning_vitx.callbacks import ExplainabilityMonitor

PRESETS = sorted(Path(__file__).parents[2].joinpath("callbacks").glob("*.yaml"))


def test_presets_exist_and_build_the_monitor():
    assert {p.name for p in PRESETS} >= {"monitor.yaml", "monitor_all_methods.yaml"}
    for preset in PRESETS:
        (callback,) = yaml.safe_load(preset.read_text())["trainer"]["callbacks"]
        assert callback["class_path"] == "lightning_vitx.callbacks.ExplainabilityMonitor"
        ExplainabilityMonitor(**callback["init_args"])  # every option valid


def test_the_all_methods_preset_lists_every_registered_explainer_and_metric():
    preset = PRESETS[0].parent / "monitor_all_methods.yaml"
    (callback,) = yaml.safe_load(preset.read_text())["trainer"]["callbacks"]
    assert sorted(callback["init_args"]["explainers"]) == X.available()
    assert sorted(callback["init_args"]["metrics"]) == M.available()


@pytest.mark.parametrize("preset", ["monitor.yaml", "monitor_all_methods.yaml"])
def test_cli_fit_with_a_preset_logs_explanations(preset, tmp_path):
    command = [
        sys.executable,
        "-m",
        "lightning_vitx",
        "fit",
        "--config",
        str(PRESETS[0].parent / preset),
        "--model.model_name",
        "vit_tiny_patch16_224",
        "--model.num_classes",
        "3",
        "--model.model_kwargs",
        '{"img_size": 32, "patch_size": 8, "depth": 2}',
        "--data",
        "lightning_vitx.data.ShapesDataModule",
        "--data.image_size",
        "32",
        "--data.train_size",
        "16",
        "--data.val_size",
        "16",
        "--data.batch_size",
        "8",
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger",
        "CSVLogger",
        "--trainer.logger.save_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
    ]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)
    (metrics,) = glob.glob(f"{tmp_path}/lightning_logs/version_0/metrics.csv")
    columns = next(csv.reader(open(metrics)))
    assert "explain/rollout/deletion" in columns
    if preset == "monitor_all_methods.yaml":
        assert "explain/gmar/segmentation" in columns and "explain/raw_attention/negative_perturbation" in columns
    assert glob.glob(f"{tmp_path}/lightning_logs/version_0/explanations/explain_panel_epoch000_step*.png")
