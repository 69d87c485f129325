"""The monitor on the trained tiny ViT: Grad-CAM's all-zero maps are counted per reason and never scored."""

import copy

import lightning as L
import pytest
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
