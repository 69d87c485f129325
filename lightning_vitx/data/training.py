"""A tiny timm ViT for the synthetic shapes, and a training loop that stops once the model has learnt the task.

Tests, benchmarks and examples need a model that has really learnt what decides the class, not a fixed number of
steps whose outcome moves with the torch release or the thread count: :func:`train_on_shapes` trains until a
held-out accuracy is reached and raises, with the accuracy it did reach, when the step budget runs out first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_vitx.data.shapes import SHAPE_CLASSES, ShapesDataset

__all__ = [
    "SHAPES_IMAGE_SIZES",
    "ShapesTraining",
    "held_out_accuracy",
    "tiny_swin_for_shapes",
    "tiny_vit_for_shapes",
    "train_on_shapes",
    "trained_on_shapes",
]

SHAPES_IMAGE_SIZES = {"vit": 64, "swin": 56}  # the input size of each tiny model trained by trained_on_shapes
_SHAPES_LEARNING_RATES = {"vit": 2e-3, "swin": 1e-3}  # Swin: the fastest to 0.85 of 5e-4, 1e-3, 2e-3, 4e-3


def tiny_vit_for_shapes(image_size: int = 64, seed: int = 0) -> nn.Module:
    """A small timm ViT (patch 8, width 96, 4 blocks) sized for ``ShapesDataset``; random weights, no download."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=image_size,
        patch_size=8,
        embed_dim=96,
        depth=4,
        num_heads=3,
        num_classes=len(SHAPE_CLASSES),
    )


def tiny_swin_for_shapes(image_size: int = 56, seed: int = 0) -> nn.Module:
    """A small timm Swin (patch 4, width 32, windows of 4, depths 2-2-2) sized for ``ShapesDataset``; random weights.

    At 56 px the token grids are 14, 7 and 4 a side: windows of 4 need padding at the first two stages (14 -> 16,
    7 -> 8), every second block is shifted by 2, and two patch mergings run (the last stage is one 4x4 window).

    Example::

        >>> model = tiny_swin_for_shapes()
        >>> [(tuple(b.window_size), tuple(b.shift_size)) for stage in model.layers for b in stage.blocks][-3:]
        [((4, 4), (2, 2)), ((4, 4), (0, 0)), ((4, 4), (0, 0))]
    """
    import timm

    torch.manual_seed(seed)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=image_size,
        embed_dim=32,
        depths=(2, 2, 2),
        num_heads=(2, 4, 8),
        window_size=4,
        mlp_ratio=2.0,
        drop_path_rate=0.0,  # timm's Swin default is 0.1; without it the model learns the shapes in ~half the steps
        num_classes=len(SHAPE_CLASSES),
    )


class ShapesTraining(NamedTuple):
    """What :func:`train_on_shapes` returns: the model (eval mode, no ``.grad``), steps taken, held-out accuracy."""

    model: nn.Module
    steps: int
    accuracy: float  # NaN when no held-out set was given


def held_out_accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``images [N, 3, H, W]``, in eval mode and without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            hits = sum(
                int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
                for i in range(0, len(images), batch_size)
            )
    finally:
        model.train(was_training)
    return hits / len(images)


def _stack(data: Dataset) -> tuple[Tensor, Tensor]:
    items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
    return torch.stack([torch.as_tensor(x[0]) for x in items]), torch.as_tensor([int(x[1]) for x in items])


def _cycle(loader: DataLoader) -> Iterator[list[Tensor]]:
    while True:
        yield from loader


def train_on_shapes(
    model: nn.Module,
    data: Dataset,
    max_steps: int,
    held_out: Dataset | None = None,
    target_accuracy: float | None = None,
    check_every: int = 50,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup_steps: int = 50,
    log_every: int = 0,
) -> ShapesTraining:
    """AdamW with linear warm-up and cosine decay over ``max_steps``, gradients clipped at norm 1.

    ``data`` yields ``(image, label, ...)``; it is read in order, cycling when it runs out (``ShapesDataset``
    samples are independent draws, so a set of ``max_steps * batch_size`` samples never repeats one). With
    ``held_out`` and ``target_accuracy``, the held-out accuracy is checked every ``check_every`` steps and
    training stops at the first check that reaches it; if ``max_steps`` pass first, a ``RuntimeError`` says
    which accuracy was reached. Deterministic for a given model seed, data and thread count.

    Example::

        >>> from lightning_vitx.data import ShapesDataset
        >>> run = train_on_shapes(tiny_vit_for_shapes(32), ShapesDataset(64, 32), max_steps=2, batch_size=32)
        >>> run.steps, run.model.training, any(p.grad is not None for p in run.model.parameters())
        (2, False, False)
    """
    if max_steps < 1 or check_every < 1:
        raise ValueError(f"expected max_steps >= 1 and check_every >= 1, got {max_steps} and {check_every}")
    if (target_accuracy is None) != (held_out is None):
        raise ValueError("target_accuracy and held_out go together: pass both or neither")
    evaluation = _stack(held_out) if held_out is not None else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.99))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) * 0.5 * (1.0 + math.cos(math.pi * step / max_steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    batches = _cycle(DataLoader(data, batch_size=batch_size, drop_last=True))
    accuracy, step = math.nan, 0
    model.train()
    while step < max_steps:
        batch = next(batches)
        loss = F.cross_entropy(model(batch[0]), batch[1])
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        if log_every and (step % log_every == 0 or step == max_steps):
            print(f"  step {step:4d}  loss {loss.item():.3f}")
        if evaluation is not None and (step % check_every == 0 or step == max_steps):
            accuracy = held_out_accuracy(model, *evaluation)
            if target_accuracy is not None and accuracy >= target_accuracy:
                break
    model.zero_grad(set_to_none=True)
    model.eval()
    if target_accuracy is not None and not accuracy >= target_accuracy:
        raise RuntimeError(
            f"training did not reach held-out accuracy {target_accuracy:.3f} in {max_steps} steps: it reached "
            f"{accuracy:.3f}. Raise max_steps or lr, or check the data."
        )
    return ShapesTraining(model, step, accuracy)


def trained_on_shapes(
    kind: Literal["vit", "swin"], seed: int = 0, max_steps: int = 1500, target_accuracy: float = 0.85
) -> ShapesTraining:
    """The tiny ViT or Swin of the tests and benchmarks, trained on the shapes until it has learnt them.

    The model of ``seed`` (``tiny_vit_for_shapes`` at 64 px or ``tiny_swin_for_shapes`` at 56 px) sees fresh
    samples every step (``ShapesDataset`` of ``seed``) and stops at the first check where its accuracy on 256
    held-out images (seed ``10000 + seed``) reaches ``target_accuracy``; raises after ``max_steps`` (see
    :func:`train_on_shapes`). Seed 0 takes ~450-550 steps (ViT, lr 2e-3) or ~550 (Swin, lr 1e-3): a minute or two
    of one CPU core each.
    """
    size = SHAPES_IMAGE_SIZES[kind]
    model = tiny_vit_for_shapes(size, seed=seed) if kind == "vit" else tiny_swin_for_shapes(size, seed=seed)
    return train_on_shapes(
        model,
        ShapesDataset(64 * max_steps, size, seed=seed),  # fresh samples every step: no sample is seen twice
        max_steps=max_steps,
        held_out=ShapesDataset(256, size, seed=10_000 + seed),
        target_accuracy=target_accuracy,
        lr=_SHAPES_LEARNING_RATES[kind],
    )
