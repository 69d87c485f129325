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

A model that learns a shortcut: `--shortcut 0.9` draws a white square in a corner that encodes the class on 90 % of
the training and validation images (`--val-shortcut` sets the validation share apart). The monitor scores the
relevance mass per region (`explain/<explainer>/relevance_mass/object` and `.../shortcut`) and raises an alert
when the mass on the watermark passes 0.15, about ten times a random map's share of it (the square is 1/64 of the
image); the run ends with the masses per epoch and the epoch of the first alert. The clean control, with the
watermark on the validation images only:

    python examples/shapes.py --shortcut 0.9 --run-name shortcut
    python examples/shapes.py --val-shortcut 0.9 --run-name clean
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
# With --shortcut: an alert when an explainer puts more than 15 % of its relevance on the watermark (1/64 of the
# image: a random map puts ~1.6 % there). Measured on the tests' ViT fixtures (tests/analysis/test_shortcut_fixture.py)
# on watermarked held-out images: 0.36-0.51 for the model that learnt the watermark, 0.06-0.07 for the one that
# learnt the shapes. Watched for the explainers measured there (the class-sensitive, gradient or LRP ones). In this
# demo (seed 0, 6 epochs): --shortcut 0.9 puts 0.16-0.48 there from epoch 0 (3 alerts at epoch 0), the clean control
# (--val-shortcut 0.9) at most 0.018 at any epoch (no alert).
SHORTCUT_ALERT = {"above": 0.15, "patience": 1}
SHORTCUT_EXPLAINERS = ("generic_attention", "transformer_attribution", "attnlrp")


def shortcut_alerts(prefix: str, explainers: list[str]) -> dict[str, dict[str, float]]:
    """The monitor's ``alerts=`` for a run with the watermark: one rule per watched explainer that runs."""
    watched = [name for name in explainers if name in SHORTCUT_EXPLAINERS]
    return {f"{prefix}/{name}/relevance_mass/shortcut": dict(SHORTCUT_ALERT) for name in watched}


def share(text: str) -> float:
    """An argparse type: a share in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1], got {text}")
    return value


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
        shortcut: float | None = None,
        val_shortcut: float | None = None,
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
            val_shortcut = self.hparams.shortcut if self.hparams.val_shortcut is None else self.hparams.val_shortcut
            self.val_set = self.dataset(self.hparams.val_size, seed=1, shortcut=val_shortcut).materialize()
        if stage == "fit" and self.train_set is None:
            self.train_set = self.dataset(self.hparams.train_size, seed=0, shortcut=self.hparams.shortcut).materialize()

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

    def dataset(self, size: int, seed: int, shortcut: float | None = None) -> ShapesDataset:
        # With a watermark share (even 0) the masks come as regions {"object", "shortcut"}, scored per region.
        hparams = self.hparams
        return ShapesDataset(size, hparams.image_size, seed=seed, distractors=hparams.distractors, shortcut=shortcut)

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


def print_shortcut_summary(
    history: list[dict[str, float]], labels: list[str], explainers: list[str], prefix: str, watched: list[str]
) -> None:
    """Relevance mass on the object and on the watermark per explainer and epoch, and the first alert's epoch."""
    width = max(len("explainer"), *(len(name) for name in explainers))
    print(f"\n{'explainer':{width}s} {'epoch':>5s} {'mass object':>12s} {'mass shortcut':>14s}")
    for explainer in explainers:
        for row, label in zip(history, labels, strict=True):
            cells = [row.get(f"{prefix}/{explainer}/relevance_mass/{region}") for region in ("object", "shortcut")]
            text = [f"{c:.3f}" if c is not None else "-" for c in cells]
            print(f"{explainer:{width}s} {label:>5s} {text[0]:>12s} {text[1]:>14s}")
    first = next(
        (label for row, label in zip(history, labels, strict=True) if row.get(f"{prefix}/alerts", 0) > 0), None
    )
    fired = int(history[-1].get(f"{prefix}/alerts", 0)) if history else 0
    where = f"first at epoch {first}" if first is not None else "none"
    print(
        f"shortcut alerts (relevance mass on the watermark above {SHORTCUT_ALERT['above']}, "
        f"{' or '.join(watched) or 'no watched explainer'}): {fired}, {where}"
    )


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
    parser.add_argument(
        "--shortcut",
        type=share,
        default=None,
        metavar="P",
        help="share of training and validation images with a class-coded corner watermark (a shortcut to learn); "
        "the monitor then scores relevance per region and alerts when it sits on the watermark",
    )
    parser.add_argument(
        "--val-shortcut",
        type=share,
        default=None,
        metavar="P",
        help="the validation images' share (default: --shortcut; alone: clean training, the control run)",
    )
    args = parser.parse_args()
    regions = args.shortcut is not None or args.val_shortcut is not None  # masks as {"object", "shortcut"}

    L.seed_everything(args.seed, verbose=False)
    explainers = args.explainers or DEMO_EXPLAINERS[args.model]
    if explainers == ["all"]:
        explainers = [name for name in X.available() if args.model in X.get_info(name).families]
    prefix = "explain"  # the monitor's name: the first part of its keys
    monitor = ExplainabilityMonitor(
        explainers=explainers,
        metrics=["deletion", "insertion", "pointing_game", "relevance_mass"],
        num_samples=args.samples,
        panel_size=6,
        name=prefix,
        alerts=shortcut_alerts(prefix, explainers) if regions else None,
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
        size,
        train_size=args.train_size,
        distractors=args.distractors,
        model=args.model,
        seed=args.seed,
        shortcut=args.shortcut,
        val_shortcut=args.val_shortcut,
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
    if regions:
        watched = [name for name in SHORTCUT_EXPLAINERS if name in explainers]
        print_shortcut_summary(monitor.history, labels, sorted(explainers), prefix, watched)
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
