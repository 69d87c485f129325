"""The monitor on the trained tiny models (tests/conftest.py's shapes_model, shapes_swin): real maps, real faults."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_vitx.explainers as X
import lightning_vitx.metrics as M
from lightning_vitx.callbacks import ExplainabilityMonitor
from lightning_vitx.metrics._common import degenerate_maps


class Wrapped(L.LightningModule):
    def __init__(self, model, images, labels, masks):
        super().__init__()
        self.backbone = model
        self.data = TensorDataset(images, labels, masks)

    def validation_step(self, batch, batch_idx):
        images, labels, _ = batch
        self.log("val_acc", (self.backbone(images).argmax(1) == labels).float().mean())

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=16)


def test_monitor_explains_the_trained_swin(tmp_path, shapes_swin):
    model, images, labels, masks = shapes_swin
    model = copy.deepcopy(model)
    readouts = ["layernorm_stats", "generic_attention", "rollout"]
    names = [*readouts, "transformer_attribution", "lrp", "partial_lrp", "attnlrp"]
    watcher = ExplainabilityMonitor(
        explainers=names, metrics={"pointing_game": {}, "relevance_mass": {}}, num_samples=16, panel_size=2
    )
    trainer = L.Trainer(
        logger=False,
        callbacks=[watcher],
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.validate(Wrapped(model, images[:16], labels[:16], masks[:16]), verbose=False)
    assert not watcher._failed
    for name in names:
        for metric in ("pointing_game", "relevance_mass"):
            value = float(trainer.callback_metrics[f"explain/{name}/{metric}"])
            assert 0.0 <= value <= 1.0, (name, metric, value)
    # maps at the first-stage grid (56 / 4 = 14), equal to the explainers called directly on the same samples
    expected = {name: X.create(name, model)(images[:16]) for name in names}
    for name in names:
        assert watcher.last_maps[name].shape[-2:] == (14, 14), name
        torch.testing.assert_close(watcher.last_maps[name], expected[name][: len(watcher.last_maps[name])])


def test_gradcams_zero_maps_are_counted_and_left_out_of_every_score(tmp_path, shapes_model):
    model, images, labels, masks = shapes_model
    model = copy.deepcopy(model)
    watcher = ExplainabilityMonitor(
        explainers=["gradcam", "rollout"], metrics=["pointing_game", "deletion"], num_samples=32, target="label"
    )
    trainer = L.Trainer(
        logger=False,
        callbacks=[watcher],
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with pytest.warns(UserWarning, match=r"'gradcam': \d+ of 32 maps zero on this rank; they rank no patch"):
        trainer.validate(Wrapped(model, images[:32], labels[:32], masks[:32]), verbose=False)
    maps = X.create("gradcam", model)(images[:32], labels[:32])
    zero = int(degenerate_maps(maps)["zero"].sum())
    assert zero > 0
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    assert metrics["explain/gradcam/skipped/zero"] == zero == metrics["explain/gradcam/skipped"]
    assert metrics["explain/gradcam/skipped/flat"] == metrics["explain/gradcam/skipped/nonfinite"] == 0
    assert metrics["explain/gradcam/degenerate"] == pytest.approx(zero / 32)
    assert metrics["explain/rollout/degenerate"] == 0.0
    # the pointing game is the share of the usable maps that hit, as the metric alone gives on them
    usable = ~degenerate_maps(maps)["zero"]
    alone = M.create("pointing_game")
    alone.update(model, images[:32][usable], maps[usable], labels[:32][usable], masks[:32][usable])
    assert metrics["explain/gradcam/pointing_game"] == pytest.approx(float(alone.compute()["score"]), abs=1e-6)
