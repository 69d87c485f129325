"""Fine-tune a timm ViT / DeiT / Swin on an ImageFolder dataset with the ExplainabilityMonitor attached.

    root/train/<class>/*.jpg, root/val/<class>/*.jpg

    python examples/finetune_timm.py --data-root /data/flowers --model vit_small_patch16_224 --pretrained \\
        --epochs 10 --devices 2 --strategy ddp
    python examples/finetune_timm.py --data-root /data/flowers --model swin_tiny_patch4_window7_224 --pretrained

Swin maps come out at its first stage's grid (56x56 for 224 inputs). `--model-kwargs` passes JSON options to
`timm.create_model` (e.g. '{"drop_path_rate": 0.1}').

`--pretrained` downloads the model's weights from the Hugging Face hub (needs a network); without it the
model starts from random weights. Images are preprocessed with the model's own `pretrained_cfg` (size,
mean, std). ImageFolder batches carry no masks, so the monitor scores with the perturbation metrics.
"""

from __future__ import annotations

import argparse
import json
import os

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from lightning_vitx.callbacks import ExplainabilityMonitor
from lightning_vitx.classification import TimmClassifier
from lightning_vitx.data import ImageFolderDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--pretrained", action="store_true", help="download pretrained weights (needs a network)")
    parser.add_argument("--model-kwargs", type=json.loads, default={}, help="JSON options for timm.create_model")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--strategy", default="auto", help="e.g. ddp")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--logger", choices=["tensorboard", "wandb", "csv"], default="tensorboard")
    parser.add_argument("--out", default="outputs/finetune")
    parser.add_argument("--explainers", nargs="+", default=["rollout", "gradcam", "generic_attention"])
    parser.add_argument("--metrics", nargs="+", default=["deletion", "insertion", "positive_perturbation"])
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--limit-batches", type=int, default=None, help="cap train/val batches (smoke tests)")
    args = parser.parse_args()

    data = ImageFolderDataModule(args.data_root, model_name=args.model, batch_size=args.batch_size)
    classes = sorted(entry.name for entry in os.scandir(f"{args.data_root}/train") if entry.is_dir())
    module = TimmClassifier(
        args.model, num_classes=len(classes), pretrained=args.pretrained, lr=args.lr, model_kwargs=args.model_kwargs
    )
    loggers = {
        "tensorboard": lambda: TensorBoardLogger(args.out, default_hp_metric=False),
        "csv": lambda: CSVLogger(args.out),
        "wandb": lambda: WandbLogger(project="lightning-vitx", save_dir=args.out),
    }
    monitor = ExplainabilityMonitor(explainers=args.explainers, metrics=args.metrics, num_samples=args.num_samples)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        logger=loggers[args.logger](),
        callbacks=[monitor],
        default_root_dir=args.out,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
    )
    trainer.fit(module, datamodule=data)
    if trainer.is_global_zero:
        print("last epoch's scores:")
        for key, value in sorted(monitor.history[-1].items()):
            if key.startswith("explain/"):
                print(f"  {key:45s} {value:.3f}")


if __name__ == "__main__":
    main()
