"""The monitor on the trained tiny Swin (tests/conftest.py's shapes_swin), with layernorm_stats among the readouts."""

import copy

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_vitx.explainers as X
from lightning_vitx.callbacks import ExplainabilityMonitor


class Wrapped(L.LightningModule):
    def __init__(self, model, images, labels, masks):
        super().__init__()
        self.backbone = model
        self.data = TensorDataset(images, labels, masks)

    def validation_step(self, batch, batch_idx):
        images, labels, _ = batch
        self.log("val_acc", (self.backbone(images).argmax(1) == labels).float().mean())

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=8)


def test_monitor_explains_the_trained_swin_with_layernorm_stats(tmp_path, shapes_swin):
    model, images, labels, masks = shapes_swin
    model = copy.deepcopy(model)
    names = ["layernorm_stats", "generic_attention", "rollout"]
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
    for name in names:
        assert 0.0 <= float(trainer.callback_metrics[f"explain/{name}/pointing_game"]) <= 1.0
    # maps at the first-stage grid (56 / 4 = 14), equal to the explainers called directly on the same samples
    assert watcher.last_maps["layernorm_stats"].shape[-2:] == (14, 14)
    expected = X.create_many(names, model)(images[:16])
    for name in names:
        torch.testing.assert_close(watcher.last_maps[name], expected[name][: len(watcher.last_maps[name])])
