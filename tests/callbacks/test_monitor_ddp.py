"""Two CPU processes (gloo, strategy="ddp") with uneven shards: same scores as one process; no hang."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_monitor_run.py")


def run(out: Path, world: int) -> None:
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(world)], check=True, timeout=240, env=env, capture_output=True
    )


def test_ddp_scores_equal_single_process_and_only_rank_zero_draws(tmp_path):
    run(tmp_path / "single", 1)
    run(tmp_path / "ddp", 2)
    single = json.load(open(tmp_path / "single" / "rank0.json"))
    rank0 = json.load(open(tmp_path / "ddp" / "rank0.json"))
    rank1 = json.load(open(tmp_path / "ddp" / "rank1.json"))
    assert single["ids"] == list(range(7))
    assert rank0["ids"] == [0, 2, 4, 6] and rank1["ids"] == [1, 3, 5]  # uneven shards, no padding duplicate
    assert set(rank0["scores"]) == set(single["scores"]) and len(single["scores"]) >= 6
    for key, value in single["scores"].items():
        if key != "explain/time_s":
            assert rank0["scores"][key] == pytest.approx(value, abs=1e-6), key
            assert rank1["scores"][key] == pytest.approx(value, abs=1e-6), key
    pngs = glob.glob(f"{tmp_path}/ddp/**/explain_panel_*.png", recursive=True)
    assert len(pngs) == 1  # rank 0 only
