"""`make demo`: train a tiny timm ViT on synthetic shapes, explain held-out images with every explainer.

No account, no network: the data is generated and the model starts from random weights. Writes a heatmap
panel PNG (rows = samples, columns = image and one overlay per explainer) and prints, per explainer, how
often the most relevant patch falls on the shape.

    python examples/explain_shapes.py --steps 600 --out outputs/demo
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import lightning_vitx.explainers as X
from lightning_vitx.data import SHAPE_CLASSES, ShapesDataset, tiny_vit_for_shapes, train_on_shapes
from lightning_vitx.rendering import model_mean_std, panel_figure


def patch_hits(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per sample: does the most relevant patch overlap the shape? (the pointing game at patch level)"""
    grid = maps.shape[-2:]
    patch_masks = F.adaptive_max_pool2d(masks[:, None].float(), grid)[:, 0].flatten(1)
    best = maps.flatten(1).argmax(dim=1)
    return patch_masks.gather(1, best[:, None])[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=6, help="held-out images in the panel")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    train_data = ShapesDataset(4096, args.image_size, seed=args.seed)
    held_out = ShapesDataset(256, args.image_size, seed=args.seed + 1)
    model = tiny_vit_for_shapes(args.image_size, seed=args.seed)
    print(f"training a tiny ViT ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) "
          f"on {len(train_data)} synthetic shapes for {args.steps} steps")
    start = time.perf_counter()
    train_on_shapes(model, train_data, args.steps, batch_size=64, log_every=100)
    print(f"trained in {time.perf_counter() - start:.0f}s")

    images, labels, masks = next(iter(DataLoader(held_out, batch_size=len(held_out))))
    with torch.no_grad():
        probabilities = model(images).softmax(dim=1)
    print(f"held-out accuracy: {(probabilities.argmax(1) == labels).float().mean():.1%} on {len(held_out)} images")

    group = X.create_many(X.available(), model)  # every readout explainer from one capture pass
    start = time.perf_counter()
    maps = group(images)
    print(f"explained {len(held_out)} images with {len(group.names)} explainers in {time.perf_counter() - start:.2f}s")
    print("most relevant patch on the shape (higher is better):")
    for name, explanation in maps.items():
        print(f"  {name:18s} {patch_hits(explanation, masks).mean():.1%}")

    shown = slice(0, args.samples)
    predicted = probabilities[shown].argmax(1)
    captions = [
        f"{SHAPE_CLASSES[int(y)]} -> {SHAPE_CLASSES[int(p)]} {probabilities[i, p]:.2f}"
        for i, (y, p) in enumerate(zip(labels[shown], predicted, strict=True))
    ]
    mean, std = model_mean_std(model)
    figure = panel_figure(images[shown], {n: m[shown] for n, m in maps.items()}, mean, std, captions=captions)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "explanations.png"
    figure.savefig(path, dpi=100)
    print(f"heatmap panel written to {path.resolve()}")


if __name__ == "__main__":
    main()
