"""Synthetic shapes: one coloured shape on noise per image, with its mask, generated on the fly.

The class is the shape (circle, square, triangle); colour, size and position vary, so a model must look at
the shape to be right, and the mask says where a faithful explanation should point. Optional grey decoys
(``distractors``) make "a salient object" and "the object that decides the class" different things, so
that pointing at the shape is something a model has to learn, not something any attention map does. An optional
class-coded watermark (``shortcut``) gives a model a cue to learn instead of the shape, for watching a monitor catch
it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

__all__ = ["SHAPE_CLASSES", "ShapesDataset", "ShapesSample", "shortcut_mask"]

SHAPE_CLASSES = ("circle", "square", "triangle")

# Distance from the centre to the farthest point of each shape, in radii: objects whose centres are farther
# apart than the sum of their reaches (plus a gap) cannot touch.
_REACH = (1.0, 0.85 * 2**0.5, (1.0 + 0.8**2) ** 0.5)  # circle, square (corner), triangle (base corner)
_RADIUS = (0.12, 0.22)  # of the image size
_PLACEMENT_TRIES = 1024  # layouts drawn before one decoy is given up
_TRIES_PER_BATCH = 64
SHORTCUT_SIDE = 1 / 8  # the watermark's side, of the image size (one patch of the demo's ViT)
SHORTCUT_MARGIN = 2  # pixels between the watermark and the image's edge


def _place(draw: list[float], size: int) -> tuple[float, float, float]:
    """``(radius, cy, cx)`` from three uniform draws, distributed as the shape's own."""
    radius = (_RADIUS[0] + (_RADIUS[1] - _RADIUS[0]) * draw[0]) * size
    return radius, radius + (size - 2 * radius) * draw[1], radius + (size - 2 * radius) * draw[2]


def _layout(
    kinds: list[int], first: tuple[float, float, float], size: int, gap: float, generator: torch.Generator
) -> list[tuple[float, float, float]] | None:
    """``(radius, cy, cx)`` per object of ``kinds``, no two closer than ``gap``; None when no try fits.

    Tries are drawn in batches; the first try places object 0 at ``first`` (the shape's own draw).
    """
    reach = [_REACH[kind] for kind in kinds]
    pairs = [(i, j) for i in range(len(kinds)) for j in range(i + 1, len(kinds))]
    for batch in range(_PLACEMENT_TRIES // _TRIES_PER_BATCH):
        draws = torch.rand(_TRIES_PER_BATCH, len(kinds), 3, generator=generator, dtype=torch.float64).tolist()
        for attempt, objects in enumerate(draws):
            layout = [_place(draw, size) for draw in objects]
            if batch == attempt == 0:
                layout[0] = first
            if all(
                (layout[i][1] - layout[j][1]) ** 2 + (layout[i][2] - layout[j][2]) ** 2
                >= (reach[i] * layout[i][0] + reach[j] * layout[j][0] + gap) ** 2
                for i, j in pairs
            ):
                return layout
    return None


def _shape_mask(kind: int, size: int, cy: float, cx: float, radius: float) -> Tensor:
    # Worked out on the pixels of the shape's bounding box only (the same values as on the whole image).
    top, left = max(0, int(cy - 1.5 * radius)), max(0, int(cx - 1.5 * radius))
    bottom, right = min(size, int(cy + 1.5 * radius) + 1), min(size, int(cx + 1.5 * radius) + 1)
    ys, xs = torch.meshgrid(torch.arange(top, bottom) + 0.5, torch.arange(left, right) + 0.5, indexing="ij")
    dy, dx = ys - cy, xs - cx
    if kind == 0:
        inside = dy.square() + dx.square() <= radius**2
    elif kind == 1:
        half = radius * 0.85
        inside = (dy.abs() <= half) & (dx.abs() <= half)
    else:  # upward triangle: apex at the top, base at the bottom
        inside_height = (dy >= -radius) & (dy <= radius * 0.8)
        half_width = (dy + radius) / (1.8 * radius) * radius
        inside = inside_height & (dx.abs() <= half_width)
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:bottom, left:right] = inside
    return mask


def shortcut_mask(label: int, size: int) -> Tensor:
    """``[S, S]`` bool: where the watermark of class ``label`` sits, one corner per class (clockwise from top left).

    Example::

        >>> mask = shortcut_mask(1, 32)
        >>> int(mask.sum()), bool(mask[2, -3]), bool(mask[2, 2])
        (16, True, False)
    """
    side = max(2, round(size * SHORTCUT_SIDE))
    near, far = SHORTCUT_MARGIN, size - SHORTCUT_MARGIN - side
    top, left = ((near, near), (near, far), (far, far), (far, near))[label % 4]
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


class ShapesSample(NamedTuple):
    """One sample and its layout: ``distractors`` holds one ``[S, S]`` bool mask per decoy drawn."""

    image: Tensor
    label: int
    mask: Tensor
    distractors: Tensor  # [K, S, S] bool, K <= the dataset's ``distractors``
    shortcut: Tensor  # [S, S] bool: the class-coded watermark, all False where the image has none


class ShapesDataset(Dataset[tuple[Tensor, int, Tensor]]):
    """``(image [3, S, S], label, mask [S, S] bool)``; sample ``i`` is the same for the same ``seed`` and options.

    Images are normalised with ``mean`` and ``std`` (timm's default ViT statistics: 0.5 and 0.5), as a model
    takes them.

    Options (the defaults give one coloured shape on noise, bit for bit as before ``distractors`` existed):

    - ``noise``: standard deviation of the per-pixel Gaussian noise on the background (image range 0..1).
    - ``distractors``: number of grey decoys per image. A decoy is a circle, square or triangle (any class,
      drawn independently of the label) in one flat achromatic grey (0.4 to 0.8). The class is the shape of
      the *coloured* object: decoys of every class take away "which shapes are in the image" as a cue, so a
      model has to find the coloured object to be right. The mask covers the coloured shape only, so an
      explanation that merely finds salient objects points at a decoy about as often as at the shape. Sizes
      and places of the shape and its decoys are drawn together, again until no two objects come closer
      than ``gap``: the shape is then no bigger, on average, than a decoy. When 1024 layouts all fail (small
      crowded images; never seen at 64 pixels and 2 decoys), the image holds one decoy fewer, and so on;
      :meth:`sample` returns the decoys an image holds.
    - ``gap``: the least distance in pixels between two objects when there are decoys.
    - ``shortcut``: the share of images (0 to 1) that carry a class-coded watermark: a white square of an eighth of
      the image's side in the corner of their class (``shortcut_mask``), drawn over everything else. A model can
      learn the corner instead of the shape. With ``shortcut`` set (even to 0) the masks come as named regions,
      ``{"object": [S, S], "shortcut": [S, S]}`` (the watermark's pixels are not the object's); without it as one
      ``[S, S]`` mask. Whether an image has the watermark is drawn from its own stream: the rest of the sample is
      as without it.

    Example::

        >>> data = ShapesDataset(num_samples=4, image_size=32, seed=0)
        >>> image, label, mask = data[0]
        >>> image.shape, SHAPE_CLASSES[label] in SHAPE_CLASSES, mask.dtype, bool(mask.any())
        (torch.Size([3, 32, 32]), True, torch.bool, True)
        >>> sample = ShapesDataset(num_samples=4, image_size=64, seed=0, distractors=2).sample(0)
        >>> sample.distractors.shape, bool((sample.distractors & sample.mask).any())
        (torch.Size([2, 64, 64]), False)
        >>> image, label, regions = ShapesDataset(num_samples=4, image_size=32, shortcut=1.0)[0]
        >>> sorted(regions), bool(regions["shortcut"].any())
        (['object', 'shortcut'], True)
    """

    num_classes = len(SHAPE_CLASSES)
    classes = list(SHAPE_CLASSES)  # class index -> name, as torchvision datasets have it

    def __init__(
        self,
        num_samples: int = 1024,
        image_size: int = 64,
        seed: int = 0,
        noise: float = 0.25,
        mean: float = 0.5,
        std: float = 0.5,
        distractors: int = 0,
        gap: float = 2.0,
        shortcut: float | None = None,
    ) -> None:
        if num_samples < 1 or image_size < 16:
            raise ValueError(f"expected num_samples >= 1 and image_size >= 16, got {num_samples} and {image_size}")
        if isinstance(distractors, bool) or not isinstance(distractors, int) or distractors < 0:
            raise ValueError(f"distractors must be an int >= 0, got {distractors!r}")
        if gap < 0:
            raise ValueError(f"gap must be >= 0, got {gap!r}")
        if shortcut is not None and not 0.0 <= shortcut <= 1.0:
            raise ValueError(f"shortcut must be a share in [0, 1] (or None), got {shortcut!r}")
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.noise = noise
        self.mean = mean
        self.std = std
        self.distractors = distractors
        self.gap = gap
        self.shortcut = shortcut

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, int, Any]:
        sample = self.sample(index)
        if self.shortcut is None:
            return sample.image, sample.label, sample.mask
        return sample.image, sample.label, {"object": sample.mask, "shortcut": sample.shortcut}

    def materialize(self) -> TensorDataset:
        """Every sample generated once: a ``TensorDataset`` of ``(images [N, 3, S, S], labels [N], masks [N, S, S])``.

        With ``shortcut`` set it holds the watermarks' masks too, and yields the named regions as ``__getitem__``.

        The same samples (bit for bit) for loops that read the set every epoch: drawing a sample costs about a
        third of a training step's share of it on the demo's tiny ViT. Holds ``N * 3 * S * S`` floats (400 MB for
        8192 images of 64 px).

        Example::

            >>> data = ShapesDataset(num_samples=4, image_size=32, seed=0)
            >>> images, labels, masks = data.materialize().tensors
            >>> images.shape, bool(torch.equal(images[2], data[2][0])), int(labels[2]) == data[2][1]
            (torch.Size([4, 3, 32, 32]), True, True)
        """
        samples = [self.sample(index) for index in range(self.num_samples)]
        tensors = (
            torch.stack([sample.image for sample in samples]),
            torch.tensor([sample.label for sample in samples]),
            torch.stack([sample.mask for sample in samples]),
        )
        if self.shortcut is None:
            return TensorDataset(*tensors)
        return _RegionsDataset(*tensors, torch.stack([sample.shortcut for sample in samples]))

    def sample(self, index: int) -> ShapesSample:
        """Sample ``index`` with the masks of its decoys (``[0, S, S]`` without decoys)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        size = self.image_size

        def uniform(low: float, high: float) -> float:
            return low + (high - low) * float(torch.rand((), generator=generator))

        label = int(torch.randint(len(SHAPE_CLASSES), (), generator=generator))
        radius = uniform(*_RADIUS) * size
        cy, cx = uniform(radius, size - radius), uniform(radius, size - radius)
        background = torch.rand(3, 1, 1, generator=generator) * 0.4 + 0.1
        image = background + self.noise * torch.randn(3, size, size, generator=generator)
        colour = torch.rand(3, generator=generator) * 0.5 + 0.5
        colour[int(torch.randint(3, (), generator=generator))] *= 0.3  # saturated colours, far from the background
        # Decoys draw after all of the above, so without them a sample is what it always was.
        kinds = [int(torch.randint(len(SHAPE_CLASSES), (), generator=generator)) for _ in range(self.distractors)]
        greys = [uniform(0.4, 0.8) for _ in kinds]
        layout: list[tuple[float, float, float]] = []  # the decoys' (radius, cy, cx)
        while kinds and not layout:
            # Whole layouts (the shape's and the decoys' sizes and places) are drawn until no two objects touch:
            # the shape's size and place are then distributed as a decoy's, and neither tells the shape apart.
            found = _layout([label, *kinds], (radius, cy, cx), size, self.gap, generator)
            if found is None:  # no room for this many decoys: one fewer
                kinds, greys = kinds[:-1], greys[:-1]
            else:
                (radius, cy, cx), *layout = found
        decoy_masks = [_shape_mask(kind, size, y, x, r) for kind, (r, y, x) in zip(kinds, layout, strict=True)]
        for decoy_mask, grey in zip(decoy_masks, greys, strict=True):
            image = torch.where(decoy_mask, torch.tensor(grey), image)
        mask = _shape_mask(label, size, cy, cx, radius)
        image = torch.where(mask, colour[:, None, None], image).clamp(0.0, 1.0)
        stacked = torch.stack(decoy_masks) if decoy_masks else torch.zeros(0, size, size, dtype=torch.bool)
        cue = self._shortcut(index, label)
        image = torch.where(cue, torch.tensor(1.0), image)
        return ShapesSample((image - self.mean) / self.std, label, mask & ~cue, stacked, cue)

    def _shortcut(self, index: int, label: int) -> Tensor:
        """The watermark's mask for sample ``index``: drawn with probability ``shortcut``, from its own stream."""
        size = self.image_size
        if not self.shortcut:
            return torch.zeros(size, size, dtype=torch.bool)
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + index) * 2 + 1)
        if float(torch.rand((), generator=generator, dtype=torch.float64)) >= self.shortcut:
            return torch.zeros(size, size, dtype=torch.bool)
        return shortcut_mask(label, size)


class _RegionsDataset(TensorDataset):
    """``ShapesDataset.materialize`` with a watermark: ``(image, label, {"object": mask, "shortcut": mask})``."""

    def __getitem__(self, index: Any) -> tuple[Tensor, Tensor, dict[str, Tensor]]:  # type: ignore[override]
        image, label, mask, shortcut = (tensor[index] for tensor in self.tensors)
        return image, label, {"object": mask, "shortcut": shortcut}
