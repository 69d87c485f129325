"""examples/finetune_timm.py on a generated image folder, pretrained=False (no network)."""

import csv
import glob
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).parents[2] / "examples" / "finetune_timm.py"


def make_image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in [("train", 4), ("val", 4)]:
        for label, colour in [("red", (200, 30, 30)), ("blue", (30, 30, 200))]:
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, size=(48, 64, 3), dtype=np.uint8)
                pixels[10:30, 20:40] = colour
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.mark.parametrize(
    "model, model_kwargs",
    [
        ("vit_tiny_patch16_224", "{}"),
        # A narrow Swin-T (224 input: 56 -> 28 -> 14 -> 7 token grids, shifted windows of 7) to keep CPU time low.
        ("swin_tiny_patch4_window7_224", '{"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 1, 2, 2]}'),
    ],
)
def test_finetune_script_runs_and_logs_explanations(tmp_path, model, model_kwargs):
    make_image_folder(tmp_path / "data")
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(SCRIPT),
        "--data-root",
        str(tmp_path / "data"),
        "--model",
        model,
        "--model-kwargs",
        model_kwargs,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--accelerator",
        "cpu",
        "--devices",
        "1",
        "--logger",
        "csv",
        "--out",
        str(out),
        "--num-samples",
        "4",
        "--limit-batches",
        "2",
    ]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "explain/rollout/deletion" in result.stdout
    (metrics,) = glob.glob(f"{out}/lightning_logs/version_0/metrics.csv")
    columns = next(csv.reader(open(metrics)))
    # Grad-CAM's maps are often all zero at random init (skipped, so its scores may be NaN and not logged); the
    # count of skipped maps always is
    assert {"explain/gradcam/skipped/zero", "explain/generic_attention/insertion"} <= set(columns)
