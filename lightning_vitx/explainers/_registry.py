"""A tiny declarative registry: one frozen ``ExplainerInfo`` per method name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from torch import nn

if TYPE_CHECKING:
    from lightning_vitx.explainers.base import Explainer

__all__ = ["ExplainerInfo", "available", "create", "get_info", "register"]


@dataclass(frozen=True)
class ExplainerInfo:
    """Metadata of one registered explainer.

    Args:
        name: the registry name users pass to ``create``.
        needs_gradients: whether the method backpropagates the target logit.
        readout: True when it only reads the shared capture pass (several such methods share one pass).
        families: model families it supports (adapter ``family`` values, e.g. ``("vit",)``).
        description: one line for docs and ``--help`` listings.
        reference: the paper it follows.
    """

    name: str
    needs_gradients: bool
    readout: bool
    families: tuple[str, ...]
    description: str
    reference: str


_REGISTRY: dict[str, tuple[ExplainerInfo, type[Explainer]]] = {}
E = TypeVar("E", bound="type[Explainer]")


def register(info: ExplainerInfo) -> Callable[[E], E]:
    """Class decorator adding an explainer under ``info.name``; a duplicate name raises ``ValueError``."""

    def decorate(cls: E) -> E:
        if info.name in _REGISTRY:
            raise ValueError(f"an explainer named {info.name!r} is already registered ({_REGISTRY[info.name][1]})")
        cls.info = info
        _REGISTRY[info.name] = (info, cls)
        return cls

    return decorate


def available() -> list[str]:
    """Names of the registered explainers, sorted."""
    return sorted(_REGISTRY)


def get_info(name: str) -> ExplainerInfo:
    return _lookup(name)[0]


def _lookup(name: str) -> tuple[ExplainerInfo, type[Explainer]]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown explainer {name!r}; expected one of {available()}")
    return _REGISTRY[name]


def create(name: str, model: nn.Module, **options: Any) -> Explainer:
    """Build the explainer registered as ``name`` for ``model``; ``options`` go to its constructor.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx import explainers
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> explainers.create("rollout", model, head_fusion="max")(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 14, 14])
    """
    return _lookup(name)[1](model, **options)
