"""`make demo`: train a tiny timm ViT from scratch on synthetic shapes with the ExplainabilityMonitor attached.

No account, no network: the data is generated (coloured shapes on noise, with masks, so localisation scores
are real) and the model starts from random weights. Logs to TensorBoard by default (`--logger wandb` logs to
W&B, offline unless you are logged in; `--logger csv` writes PNG panels), and ends with a table of scores per
explainer and epoch, and where the pictures are.

    python examples/shapes.py --epochs 6
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import lightning_vitx.explainers as X
from lightning_vitx.callbacks import ExplainabilityMonitor
from lightning_vitx.data import ShapesDataset, tiny_vit_for_shapes
from lightning_vitx.rendering import model_mean_std, panel_figure


class ShapesClassifier(L.LightningModule):
    def __init__(self, image_size: int = 64, train_size: int = 4096, val_size: int = 256, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vit = tiny_vit_for_shapes(image_size)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        images, labels, _ = batch
        loss = F.cross_entropy(self.vit(images), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        images, labels, _ = batch
        logits = self.vit(images)
        self.log("val_loss", F.cross_entropy(logits, labels))
        self.log("val_acc", (logits.argmax(1) == labels).float().mean(), prog_bar=True)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.05)

    def train_dataloader(self) -> DataLoader:
        data = ShapesDataset(self.hparams.train_size, self.hparams.image_size, seed=0)
        return DataLoader(data, batch_size=64, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(ShapesDataset(self.hparams.val_size, self.hparams.image_size, seed=1), batch_size=64)


def make_logger(kind: str, root: Path):  # type: ignore[no-untyped-def]
    if kind == "tensorboard":
        return L.pytorch.loggers.TensorBoardLogger(root, name="shapes")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        offline = not os.environ.get("WANDB_API_KEY")
        return WandbLogger(project="lightning-vitx-demo", save_dir=str(root), offline=offline)
    return L.pytorch.loggers.CSVLogger(root, name="shapes")


def print_table(history: list[dict[str, float]]) -> None:
    keys = sorted({k for row in history for k in row if k.startswith("explain/")})
    explainers = sorted({k.split("/")[1] for k in keys})
    metrics = [
        m for m in ("deletion", "insertion", "pointing_game", "relevance_mass", "stability")
        if any(k.endswith("/" + m) for k in keys)
    ]
    print(f"\n{'explainer':18s} {'epoch':>5s} " + " ".join(f"{m:>14s}" for m in metrics))
    for explainer in explainers:
        for row in history:
            cells = [row.get(f"explain/{explainer}/{m}") for m in metrics]
            text = " ".join(f"{c:14.3f}" if c is not None else f"{'-':>14s}" for c in cells)
            print(f"{explainer:18s} {int(row['epoch']):5d} {text}")
    print("(deletion: lower is better; insertion, pointing_game, relevance_mass: higher is better)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--logger", choices=["tensorboard", "wandb", "csv"], default="tensorboard")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--samples", type=int, default=32, help="held-out images explained every epoch")
    args = parser.parse_args()

    L.seed_everything(0, verbose=False)
    monitor = ExplainabilityMonitor(
        explainers=X.available(),
        metrics=["deletion", "insertion", "pointing_game", "relevance_mass"],
        num_samples=args.samples,
        panel_size=6,
    )
    logger = make_logger(args.logger, args.out)
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=logger, callbacks=[monitor],
        default_root_dir=args.out, enable_checkpointing=False, log_every_n_steps=16,
    )
    module = ShapesClassifier()
    trainer.fit(module)

    print_table(monitor.history)
    first, last = monitor.history[0], monitor.history[-1]
    for name in X.available():
        key = f"explain/{name}/pointing_game"
        if key in first and key in last:
            print(f"pointing game, {name}: first epoch {first[key]:.3f} -> last epoch {last[key]:.3f}")
    images = monitor.samples["images"][:6]
    mean, std = model_mean_std(module.vit)
    figure = panel_figure(images, {n: m[:6] for n, m in monitor.last_maps.items()}, mean, std)
    path = args.out / "explanations.png"
    figure.savefig(path, dpi=100)
    print(f"\nlast epoch's heatmap panel: {path.resolve()}")
    print(f"logs ({args.logger}): {Path(trainer.log_dir or args.out).resolve()}")
    if args.logger == "tensorboard":
        print(f"  view them with: tensorboard --logdir {Path(trainer.log_dir).resolve()}")


if __name__ == "__main__":
    main()
