"""Synthetic shapes: one coloured shape on noise per image, with its mask, generated on the fly.

The class is the shape (circle, square, triangle); colour, size and position vary, so a model must look at
the shape to be right, and the mask says where a faithful explanation should point.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SHAPE_CLASSES", "ShapesDataset"]

SHAPE_CLASSES = ("circle", "square", "triangle")


def _shape_mask(kind: int, size: int, cy: float, cx: float, radius: float) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dy, dx = ys - cy, xs - cx
    if kind == 0:
        return dy.square() + dx.square() <= radius**2
    if kind == 1:
        half = radius * 0.85
        return (dy.abs() <= half) & (dx.abs() <= half)
    # upward triangle: apex at the top, base at the bottom
    inside_height = (dy >= -radius) & (dy <= radius * 0.8)
    half_width = (dy + radius) / (1.8 * radius) * radius
    return inside_height & (dx.abs() <= half_width)


class ShapesDataset(Dataset[tuple[Tensor, int, Tensor]]):
    """``(image [3, S, S], label, mask [S, S] bool)``; sample ``i`` is the same for the same ``seed``.

    Images are normalised with ``mean`` and ``std`` (timm's default ViT statistics: 0.5 and 0.5), as a model
    takes them.

    Example::

        >>> data = ShapesDataset(num_samples=4, image_size=32, seed=0)
        >>> image, label, mask = data[0]
        >>> image.shape, SHAPE_CLASSES[label] in SHAPE_CLASSES, mask.dtype, bool(mask.any())
        (torch.Size([3, 32, 32]), True, torch.bool, True)
    """

    num_classes = len(SHAPE_CLASSES)

    def __init__(
        self,
        num_samples: int = 1024,
        image_size: int = 64,
        seed: int = 0,
        noise: float = 0.25,
        mean: float = 0.5,
        std: float = 0.5,
    ) -> None:
        if num_samples < 1 or image_size < 16:
            raise ValueError(f"expected num_samples >= 1 and image_size >= 16, got {num_samples} and {image_size}")
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.noise = noise
        self.mean = mean
        self.std = std

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        size = self.image_size

        def uniform(low: float, high: float) -> float:
            return low + (high - low) * float(torch.rand((), generator=generator))

        label = int(torch.randint(len(SHAPE_CLASSES), (), generator=generator))
        radius = uniform(0.12, 0.22) * size
        cy, cx = uniform(radius, size - radius), uniform(radius, size - radius)
        mask = _shape_mask(label, size, cy, cx, radius)
        background = torch.rand(3, 1, 1, generator=generator) * 0.4 + 0.1
        image = background + self.noise * torch.randn(3, size, size, generator=generator)
        colour = torch.rand(3, generator=generator) * 0.5 + 0.5
        colour[int(torch.randint(3, (), generator=generator))] *= 0.3  # saturated colours, far from the background
        image = torch.where(mask, colour[:, None, None], image).clamp(0.0, 1.0)
        return (image - self.mean) / self.std, label, mask


def tiny_vit_for_shapes(image_size: int = 64, seed: int = 0) -> torch.nn.Module:
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


def train_on_shapes(
    model: torch.nn.Module, data: ShapesDataset, steps: int, batch_size: int = 64, log_every: int = 0
) -> torch.nn.Module:
    """Plain AdamW training for ``steps`` batches (seeded shuffling); returns the model in eval mode, no ``.grad``."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loader = DataLoader(
        data, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(data.seed)
    )
    model.train()
    step = 0
    while step < steps:
        for images, labels, _ in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if log_every and (step % log_every == 0 or step == steps):
                print(f"  step {step:4d}  loss {loss.item():.3f}")
            if step == steps:
                break
    model.zero_grad(set_to_none=True)
    return model.eval()
