"""A saved pass reads back as it was written: maps bit for bit, scores, settings, pictures; many runs load sorted."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_vitx.loggers import PassRecord, SampleImages, load_pass, load_passes, save_pass
from lightning_vitx.loggers.bundle import FORMAT, MANIFEST


def record(epoch: int, seed: int = 0) -> PassRecord:
    generator = torch.Generator().manual_seed(seed)
    pictures = [np.full((6, 6, 3), 40 * i, dtype=np.uint8) for i in range(3)]
    masks = [np.zeros((6, 6), dtype=bool) for _ in range(3)]
    masks[0][2:4, 2:4] = True
    figure = plt.figure(figsize=(1, 1), dpi=20)
    return PassRecord(
        epoch=epoch,
        step=7 * (epoch + 1),
        scalars={"explain/rollout/deletion": 0.125 + epoch, "explain/gmar/pointing_game": 0.5},
        images={"explain/rollout/maps": SampleImages(pictures, ["a", "b", "c"], masks)},
        figures={"explain/curves": figure},
        fallback_figures={"explain/panel": lambda: plt.figure(figsize=(1, 1), dpi=20)},
        maps={"rollout": torch.rand(3, 4, 4, generator=generator), "gmar": torch.randn(3, 4, 4, generator=generator)},
        sample_ids=[5, 1, 9],
    )


def test_a_saved_pass_reads_back_as_written(tmp_path):
    written = record(epoch=2)
    settings = {"explainers": ["rollout", "gmar"], "every_n_epochs": 1}
    path = save_pass(written, str(tmp_path), settings)
    assert path.endswith("epoch_002")
    saved = load_pass(path)
    assert (saved.epoch, saved.step, saved.settings) == (2, 21, settings)
    assert saved.scores == written.scalars
    assert sorted(saved.maps) == ["gmar", "rollout"]
    for name, maps in written.maps.items():
        assert torch.equal(saved.maps[name], maps)  # bit for bit
    assert saved.sample_ids.tolist() == [5, 1, 9]
    assert sorted(saved.pictures) == ["explain/curves", "explain/panel", "explain/rollout/maps"]
    grid = np.asarray(Image.open(saved.pictures["explain/rollout/maps"]))
    assert grid.shape[1] > 3 * 6  # three pictures side by side with padding
    manifest = json.loads((tmp_path / "epoch_002" / MANIFEST).read_text())
    assert manifest["format"] == FORMAT and manifest["explainers"] == ["gmar", "rollout"]


def test_passes_of_several_runs_load_sorted_by_run_and_epoch(tmp_path):
    for run in ("run_b", "run_a"):
        for epoch in (1, -1, 0):
            save_pass(record(epoch), str(tmp_path / run))
    found = load_passes(str(tmp_path))
    assert [(saved.path.split("/")[-2], saved.epoch) for saved in found] == [
        ("run_a", -1),
        ("run_a", 0),
        ("run_a", 1),
        ("run_b", -1),
        ("run_b", 0),
        ("run_b", 1),
    ]
    assert found[0].path.endswith("init")


def test_a_folder_that_is_not_a_pass_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved pass"):
        load_pass(str(tmp_path))
    save_pass(record(0), str(tmp_path))
    manifest = tmp_path / "epoch_000" / MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": "other/9"}))
    with pytest.raises(ValueError, match="format 'other/9'"):
        load_pass(str(tmp_path / "epoch_000"))
