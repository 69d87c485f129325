"""LightningDataModules: the synthetic shapes, and an ImageFolder with the model's own preprocessing."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from lightning_vitx.data.shapes import ShapesDataset

__all__ = ["ImageFolderDataModule", "ShapesDataModule"]


class ShapesDataModule(L.LightningDataModule):
    """Synthetic shapes with masks (batches are ``(images, labels, masks)``), generated on the fly.

    ``distractors`` grey decoy shapes per image make the task need the coloured object (see ``ShapesDataset``).
    ``shortcut`` puts a class-coded watermark on that share of the training images, ``val_shortcut`` (default: the
    same share) on the validation images; with either set, the masks of that split come as named regions
    ``{"object": ..., "shortcut": ...}``.

    Example::

        >>> data = ShapesDataModule(image_size=32, train_size=8, val_size=4, batch_size=4)
        >>> images, labels, masks = next(iter(data.val_dataloader()))
        >>> images.shape, masks.shape
        (torch.Size([4, 3, 32, 32]), torch.Size([4, 32, 32]))
        >>> cued = ShapesDataModule(image_size=32, train_size=8, val_size=4, batch_size=4, shortcut=0.9)
        >>> images, labels, regions = next(iter(cued.val_dataloader()))
        >>> sorted(regions), regions["shortcut"].shape
        (['object', 'shortcut'], torch.Size([4, 32, 32]))
    """

    def __init__(
        self,
        image_size: int = 64,
        train_size: int = 4096,
        val_size: int = 256,
        batch_size: int = 64,
        seed: int = 0,
        distractors: int = 0,
        shortcut: float | None = None,
        val_shortcut: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.image_size, self.train_size, self.val_size = image_size, train_size, val_size
        self.batch_size, self.seed, self.distractors = batch_size, seed, distractors
        self.shortcut, self.val_shortcut = shortcut, shortcut if val_shortcut is None else val_shortcut
        self.classes = list(ShapesDataset.classes)  # read by ExplainabilityMonitor for its captions

    def dataset(self, size: int, seed: int, shortcut: float | None = None) -> ShapesDataset:
        return ShapesDataset(size, self.image_size, seed=seed, distractors=self.distractors, shortcut=shortcut)

    def train_dataloader(self) -> DataLoader:
        train = self.dataset(self.train_size, self.seed, self.shortcut)
        return DataLoader(train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset(self.val_size, self.seed + 1, self.val_shortcut), batch_size=self.batch_size)


class ImageFolderDataModule(L.LightningDataModule):
    """``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``, preprocessed as the timm model expects.

    The transforms come from ``timm.data.create_transform`` with the model's ``pretrained_cfg`` (input size,
    mean, std, interpolation), so a pretrained model sees what it was trained on.
    """

    def __init__(
        self, root: str, model_name: str = "vit_small_patch16_224", batch_size: int = 32, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root, self.model_name, self.batch_size, self.num_workers = root, model_name, batch_size, num_workers

    def _dataset(self, split: str, training: bool) -> Any:
        import timm
        from timm.data import create_transform, resolve_model_data_config
        from torchvision.datasets import ImageFolder

        config = resolve_model_data_config(timm.create_model(self.model_name, pretrained=False))
        return ImageFolder(f"{self.root}/{split}", transform=create_transform(**config, is_training=training))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self._dataset("train", True),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("val", False), batch_size=self.batch_size, num_workers=self.num_workers)
