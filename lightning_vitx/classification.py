"""A plain LightningModule around a timm classifier, for the CLI, the examples and quick experiments."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TimmClassifier"]


class TimmClassifier(L.LightningModule):
    """``timm.create_model(model_name, pretrained, num_classes)`` trained with cross-entropy and AdamW.

    ``pretrained=True`` downloads weights from the Hugging Face hub (needs a network). The explainers find the
    model as ``self.model``.

    Example::

        >>> module = TimmClassifier("vit_tiny_patch16_224", num_classes=3, model_kwargs={"img_size": 32})
        >>> module(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch16_224",
        num_classes: int = 1000,
        pretrained: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        import timm

        self.save_hyperparameters()
        self.lr, self.weight_decay = lr, weight_decay
        self.model = timm.create_model(
            model_name, pretrained=pretrained, num_classes=num_classes, **(model_kwargs or {})
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def _step(self, batch: tuple, stage: str) -> Tensor:
        images, labels = batch[0], batch[1]
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        self.log(f"{stage}_loss", loss, prog_bar=True, sync_dist=stage != "train")
        self.log(f"{stage}_acc", (logits.argmax(1) == labels).float().mean(), prog_bar=True, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: tuple, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
