"""The monitor on the trained tiny Swin (tests/conftest.py's shapes_swin): readouts and the four LRP explainers."""

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
