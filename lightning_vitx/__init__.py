"""lightning-vitx: explain vision transformers while they train.

Example::

    >>> import timm, torch
    >>> import lightning_vitx as lvx
    >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
    >>> lvx.explainers.create("rollout", model)(torch.randn(1, 3, 224, 224)).shape
    torch.Size([1, 14, 14])
"""

from lightning_vitx import adapters, analysis, explainers
from lightning_vitx._version import __version__
from lightning_vitx.adapters import detect
from lightning_vitx.explainers import available, create, create_many

__all__ = ["__version__", "adapters", "analysis", "available", "create", "create_many", "detect", "explainers"]
