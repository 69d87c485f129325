"""What the model expects of its images: the normalisation it was trained with (a fact about the model)."""

from __future__ import annotations

from torch import nn

__all__ = ["model_mean_std"]


def model_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation the model was trained with, from timm's ``pretrained_cfg`` (ImageNet stats if absent).

    Example::

        >>> import timm
        >>> model_mean_std(timm.create_model("vit_tiny_patch16_224", pretrained=False))
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    """
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    return tuple(config["mean"]), tuple(config["std"])
