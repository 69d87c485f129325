"""Run by test_monitor_ddp.py as ``ddp_monitor_run.py OUT STRATEGY...``: validate a tiny ViT with the monitor on one
CPU process ("single") or two (gloo, "ddp" or "ddp_spawn"). Every rank writes what its monitor saw to
OUT/<strategy>/<val|loader>/rank<r>.json."""

import json
import os
import sys

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
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


class Record(Callback):
    """Writes the monitor's held-out ids, synced scores and panel on every rank (under ddp_spawn, in the children)."""

    def __init__(self, out: str):
        self.out = out

    def on_validation_end(self, trainer, pl_module):
        (monitor,) = [c for c in trainer.callbacks if isinstance(c, ExplainabilityMonitor)]
        panel = monitor.last_panel
        record = {
            "ids": monitor.samples["ids"].tolist() if monitor.samples else [],
            "scores": scores(trainer),
            "panel_ids": panel.ids.tolist(),
            "panel_maps": {name: m.tolist() for name, m in panel.maps.items()},
            "failed": sorted(monitor._failed),
            "warned": sorted(monitor._warn_once.warned),
        }
        os.makedirs(self.out, exist_ok=True)
        with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(record, f)


def scores(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("explain/")}


def to_regions(batch):
    """The masks as two named regions: the object, and the image's left half (empty where the label is odd, so a
    sample's regions do not depend on the batch it comes in)."""
    images, labels, masks = batch
    left = torch.zeros_like(masks, dtype=torch.bool)
    left[labels % 2 == 0, :, : masks.shape[-1] // 2] = True
    return images, labels, {"object": masks, "left": left}


def validate(out: str, strategy: str, **options) -> L.Trainer:
    explainers = ["rollout", "gradcam", "generic_attention"]
    defaults = dict(explainers=explainers, metrics=["deletion", "pointing_game", "relevance_mass"])
    monitor = ExplainabilityMonitor(**{**defaults, "num_samples": 7, "panel_size": 4, **options})
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1 if strategy == "single" else 2,
        strategy="auto" if strategy == "single" else strategy,
        logger=CSVLogger(out),
        callbacks=[monitor, Record(out)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(Module())
    return trainer


def main(out: str, strategy: str) -> None:
    if strategy == "ddp_spawn":  # the children write their records; scores come back to this process
        trainer = validate(f"{out}/{strategy}/val", strategy)
        with open(f"{out}/{strategy}/val/parent.json", "w") as f:
            json.dump({"scores": scores(trainer)}, f)
        return
    validate(f"{out}/{strategy}/val", strategy)
    # The user's loader: more samples than num_samples, batches that do not match the shards.
    validate(f"{out}/{strategy}/loader", strategy, dataloader=DataLoader(ShapesDataset(10, 32, seed=1), batch_size=3))
    validate(f"{out}/{strategy}/regions", strategy, batch_to_inputs=to_regions)
    validate(f"{out}/{strategy}/one", strategy, num_samples=1)  # rank 1 holds no sample, yet enters every collective
    if strategy == "ddp" and os.environ.get("LOCAL_RANK") == "1":  # gmar and the pointing game fail on rank 1 only
        from lightning_vitx.explainers.gmar import GMAR
        from lightning_vitx.metrics.localization import PointingGame

        GMAR.read = lambda self, record: 1 / 0
        PointingGame.sample_scores = lambda self, geometry, maps, masks: 1 / 0
    validate(f"{out}/{strategy}/rank1fails", strategy, explainers=["rollout", "gmar"])


if __name__ == "__main__":
    torch.set_num_threads(1)
    for strategy in sys.argv[2:]:  # "ddp" must run alone: its second process runs this script again
        main(sys.argv[1], strategy)
