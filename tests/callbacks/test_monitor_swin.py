"""The monitor on a timm Swin inside a LightningModule: found, explained at the first-stage grid, scored."""

import lightning as L
import torch
from torch.utils.data import DataLoader

import lightning_vitx.explainers as X
from lightning_vitx.callbacks import ExplainabilityMonitor
from lightning_vitx.classification import TimmClassifier
from lightning_vitx.data import ShapesDataset

SWIN = {"embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "window_size": 4, "img_size": 32}


class SwinShapes(TimmClassifier):
    def train_dataloader(self):
        return DataLoader(ShapesDataset(32, 32, seed=0), batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(ShapesDataset(16, 32, seed=1), batch_size=8)


def test_monitor_explains_and_scores_a_swin(tmp_path):
    L.seed_everything(0, verbose=False)
    module = SwinShapes("swin_tiny_patch4_window7_224", num_classes=3, model_kwargs=SWIN)
    names = ["rollout", "raw_attention", "gradcam", "generic_attention", "gmar"]
    monitor = ExplainabilityMonitor(
        explainers=names, metrics={"deletion": {"steps": 4}, "pointing_game": {}}, num_samples=6, panel_size=2
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[monitor],
        default_root_dir=tmp_path,
        limit_train_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module)
    for name in names:
        assert f"explain/{name}/deletion" in trainer.callback_metrics
        assert 0.0 <= float(trainer.callback_metrics[f"explain/{name}/pointing_game"]) <= 1.0
    # Maps at Swin's first-stage grid (32 / 4 = 8), equal to the explainers called directly on the same samples.
    images = torch.stack([torch.as_tensor(ShapesDataset(16, 32, seed=1)[i][0]) for i in range(6)])
    expected = X.create("rollout", module.model)(images)
    torch.testing.assert_close(monitor.last_maps["rollout"], expected, rtol=1e-5, atol=1e-7)
