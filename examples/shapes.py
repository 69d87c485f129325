"""`make demo`: train a tiny timm ViT from scratch on synthetic shapes with the ExplainabilityMonitor attached.

No account, no network: the data is generated (coloured shapes on noise, with masks, so localisation scores
are real) and the model starts from random weights. The class is the shape of the coloured object; every image
also holds grey decoy shapes (`--distractors`), so attending to any salient object is not enough: the
explanations point at the coloured shape only once the model has learnt what decides the class. The monitor
explains the untrained model first (row `init`, a validation pass before training), then every epoch, with five
explainers chosen to show the literature's main lines (`--explainers all` runs every explainer that takes the model).

Logs to TensorBoard by default (`--logger wandb` logs to W&B, offline unless you are logged in; `--logger csv`
writes PNG panels), and ends with a table of scores per explainer and epoch, and where the pictures are.
Two runs to compare (same held-out samples, different seeds or explainers), each under its own name:

    python examples/shapes.py --epochs 6
    python examples/shapes.py --logger wandb --seed 1 --run-name seed1
    python examples/shapes.py --logger wandb --explainers rollout gradcam --run-name two-methods
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning_vitx.explainers as X
from lightning_vitx.callbacks import ExplainabilityMonitor
from lightning_vitx.data import ShapesDataset, tiny_swin_for_shapes, tiny_vit_for_shapes
from lightning_vitx.rendering import model_mean_std, panel_figure

# What a first run shows: the classic readout (rollout, class-blind), Chefer et al.'s two methods (the LRP-based
# transformer attribution and its gradient-weighted successor), AttnLRP (the LRP family today), and a token-norm
# method: TokenTM on a ViT, LayerNorm token statistics (the method made for Swin) on a Swin.
DEMO_EXPLAINERS = {
    "vit": ["rollout", "generic_attention", "transformer_attribution", "attnlrp", "tokentm"],
    "swin": ["rollout", "generic_attention", "transformer_attribution", "attnlrp", "layernorm_stats"],
}


class ShapesClassifier(L.LightningModule):
    def __init__(
        self,
        image_size: int = 64,
        train_size: int = 8192,
        val_size: int = 256,
        lr: float = 1e-3,
        distractors: int = 2,
        model: str = "vit",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        build = tiny_swin_for_shapes if model == "swin" else tiny_vit_for_shapes
        self.vit = build(image_size, seed=seed)
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str) -> None:
        # Drawn once and read every epoch: drawing the images each epoch would cost a quarter of the training time.
        if self.val_set is None:
            self.val_set = self.dataset(self.hparams.val_size, seed=1).materialize()
        if stage == "fit" and self.train_set is None:
            self.train_set = self.dataset(self.hparams.train_size, seed=0).materialize()

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
        # A ViT from scratch on a few hundred steps: warm up, then anneal (one cycle), with a short Adam memory.
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.05, betas=(0.9, 0.99))
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, self.hparams.lr, total_steps=total, pct_start=0.15)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def dataset(self, size: int, seed: int) -> ShapesDataset:
        return ShapesDataset(size, self.hparams.image_size, seed=seed, distractors=self.hparams.distractors)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup('fit') draws the training set"
        return DataLoader(self.train_set, batch_size=64, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup draws the validation set"
        return DataLoader(self.val_set, batch_size=64)


def make_logger(kind: str, root: Path, run_name: str | None):  # type: ignore[no-untyped-def]
    if kind == "tensorboard":
        # default_hp_metric=False: the HPARAMS tab gets the monitor's entry (<log_dir>/explain_best), no placeholder
        return L.pytorch.loggers.TensorBoardLogger(root, name="shapes", version=run_name, default_hp_metric=False)
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        offline = not os.environ.get("WANDB_API_KEY")
        return WandbLogger(project="lightning-vitx-demo", name=run_name, save_dir=str(root), offline=offline)
    return L.pytorch.loggers.CSVLogger(root, name="shapes", version=run_name)


def print_table(history: list[dict[str, float]], labels: list[str], explainers: list[str]) -> None:
    keys = sorted({k for row in history for k in row if k.startswith("explain/")})
    metrics = [
        m
        for m in ("deletion", "insertion", "pointing_game", "relevance_mass", "stability")
        if any(k.endswith("/" + m) for k in keys)
    ]
    width = max(len("explainer"), *(len(name) for name in explainers))
    print(f"\n{'explainer':{width}s} {'epoch':>5s} " + " ".join(f"{m:>14s}" for m in metrics))
    for explainer in explainers:
        for row, label in zip(history, labels, strict=True):
            cells = [row.get(f"explain/{explainer}/{m}") for m in metrics]
            text = " ".join(f"{c:14.3f}" if c is not None else f"{'-':>14s}" for c in cells)
            print(f"{explainer:{width}s} {label:>5s} {text}")
    print("(deletion: lower is better; insertion, pointing_game, relevance_mass: higher is better)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--logger", choices=["tensorboard", "wandb", "csv"], default="tensorboard")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--samples", type=int, default=32, help="held-out images explained every epoch")
    parser.add_argument("--distractors", type=int, default=2, help="grey decoy shapes per image (0: the shape alone)")
    parser.add_argument("--train-size", type=int, default=8192, help="training images per epoch")
    parser.add_argument("--seed", type=int, default=0, help="weights and training order (the data stay the same)")
    parser.add_argument(
        "--explainers",
        nargs="+",
        choices=[*X.available(), "all"],
        metavar="NAME",
        help=f"default: {', '.join(DEMO_EXPLAINERS['vit'])} (Swin: layernorm_stats for tokentm); "
        "'all': every explainer that takes the model",
    )
    parser.add_argument("--run-name", default=None, help="the run's name in W&B / its folder for TensorBoard and CSV")
    parser.add_argument("--model", choices=["vit", "swin"], default="vit", help="tiny ViT (64 px) or Swin (56 px)")
    args = parser.parse_args()

    L.seed_everything(args.seed, verbose=False)
    explainers = args.explainers or DEMO_EXPLAINERS[args.model]
    if explainers == ["all"]:
        explainers = [name for name in X.available() if args.model in X.get_info(name).families]
    monitor = ExplainabilityMonitor(
        explainers=explainers,
        metrics=["deletion", "insertion", "pointing_game", "relevance_mass"],
        num_samples=args.samples,
        panel_size=6,
    )
    logger = make_logger(args.logger, args.out, args.run_name)
    logger.log_hyperparams({"seed": args.seed, "epochs": args.epochs})
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[monitor],
        default_root_dir=args.out,
        enable_checkpointing=False,
        log_every_n_steps=16,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,  # the validation before training below checks the loop, and is explained
    )
    size = 56 if args.model == "swin" else 64  # tiny_swin_for_shapes: windows of 4 padded, two patch mergings
    module = ShapesClassifier(
        size, train_size=args.train_size, distractors=args.distractors, model=args.model, seed=args.seed
    )
    trainer.validate(module, verbose=False)  # the untrained model: the baseline the epochs are compared with
    trainer.fit(module)

    labels = ["init" if row["epoch"] < 0 else str(int(row["epoch"])) for row in monitor.history]
    print_table(monitor.history, labels, sorted(explainers))
    untrained, first, last = monitor.history[0], monitor.history[1], monitor.history[-1]
    for metric in ("pointing_game", "relevance_mass"):
        for name in explainers:
            key = f"explain/{name}/{metric}"
            if key in untrained and key in first and key in last:
                print(
                    f"{metric.replace('_', ' ')}, {name}: untrained {untrained[key]:.3f} -> first epoch "
                    f"{first[key]:.3f} -> last epoch {last[key]:.3f}"
                )
    print(f"val_acc, last epoch: {float(trainer.callback_metrics['val_acc']):.3f}")
    images, masks = monitor.samples["images"][:6], monitor.samples["masks"]
    mean, std = model_mean_std(module.vit)
    signed = {name: X.get_info(name).signed for name in monitor.last_maps}
    title = f"epoch {int(monitor.history[-1]['epoch'])}, {type(module.vit).__name__}, predicted class explained"
    maps = {n: m[:6] for n, m in monitor.last_maps.items()}
    names = monitor.class_names or [str(i) for i in range(3)]
    labels_shown = monitor.samples["labels"][:6].tolist()
    with torch.no_grad():
        predicted = module.vit.eval()(images).argmax(1).tolist()
    captions = [f"true {names[t]}, pred {names[p]}" for t, p in zip(labels_shown, predicted, strict=True)]
    outlines = None if masks is None else masks[:6].bool()
    figure = panel_figure(images, maps, mean, std, captions, signed=signed, title=title, masks=outlines)
    path = args.out / "explanations.png"
    figure.savefig(path, dpi=100)
    print(f"\nlast epoch's heatmap panel: {path.resolve()}")
    print(f"logs ({args.logger}): {Path(trainer.log_dir or args.out).resolve()}")
    if args.logger == "tensorboard":
        print(f"  view them with: tensorboard --logdir {Path(trainer.log_dir).resolve()}")


if __name__ == "__main__":
    main()
