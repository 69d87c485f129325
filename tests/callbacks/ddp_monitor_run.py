"""Run by test_monitor_ddp.py: validate a tiny ViT with the monitor on WORLD CPU processes (gloo) or one."""

import json
import sys

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_vitx.callbacks import ExplainabilityMonitor
from lightning_vitx.data import ShapesDataset, tiny_vit_for_shapes


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.backbone = tiny_vit_for_shapes(32, seed=0)

    def validation_step(self, batch, batch_idx):
        images, labels, _ = batch
        self.log("val_loss", F.cross_entropy(self.backbone(images), labels), sync_dist=True)

    def val_dataloader(self):
        return DataLoader(ShapesDataset(7, 32, seed=1), batch_size=2)  # 7 samples: shards of 4 and 3


def main(out: str, world: int) -> None:
    torch.set_num_threads(1)
    monitor = ExplainabilityMonitor(
        explainers=["rollout", "gradcam"],
        metrics=["deletion", "pointing_game", "relevance_mass"],
        num_samples=7,
        panel_size=4,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        logger=CSVLogger(out),
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(Module())
    ids = monitor.samples["ids"].tolist()
    scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("explain/")}
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
        json.dump({"ids": ids, "scores": scores, "log_dir": trainer.log_dir}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
