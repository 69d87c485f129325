"""examples/shapes.py (`make demo`), shortened: the untrained baseline row, the decoys, the closing summary."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "examples" / "shapes.py"


@pytest.mark.slow
def test_shapes_demo_explains_the_untrained_model_then_every_epoch(tmp_path):
    options = ["--epochs", "1", "--train-size", "128", "--samples", "8", "--logger", "csv", "--out", str(tmp_path)]
    command = [sys.executable, str(SCRIPT), *options]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("rollout ")]
    assert [row[1] for row in rows] == ["init", "0"]
    for name in ("generic_attention", "gmar", "gradcam", "raw_attention", "rollout"):
        assert f"pointing game, {name}: untrained " in result.stdout
        assert f"relevance mass, {name}: untrained " in result.stdout
    assert "val_acc, last epoch: " in result.stdout
    assert (tmp_path / "explanations.png").is_file()


@pytest.mark.slow
def test_shapes_demo_with_a_swin(tmp_path):
    options = ["--epochs", "1", "--train-size", "64", "--samples", "4", "--logger", "csv", "--out", str(tmp_path)]
    command = [sys.executable, str(SCRIPT), *options, "--model", "swin"]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "pointing game, layernorm_stats: untrained " in result.stdout
    assert "SwinTransformer" in result.stdout or (tmp_path / "explanations.png").is_file()
