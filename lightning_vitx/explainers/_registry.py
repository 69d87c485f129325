"""A tiny declarative registry: one frozen ``ExplainerInfo`` per method name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from torch import nn

from lightning_vitx._registry import Registry

if TYPE_CHECKING:
    from lightning_vitx.explainers.base import Explainer

__all__ = ["READOUT_FAMILIES", "ExplainerInfo", "available", "create", "get_class", "get_info", "register"]

# The adapter families the readout explainers cover: every family whose adapter the shared capture pass reads
# (dense attention: ViT incl. attention-pool heads, EVA, BEiT, relpos ViT; windows: Swin, SwinV2). A readout that
# needs more of the blocks (token states, LayerNorm statistics) refuses the models without it at create
# (adapters.check_capture_supported).
READOUT_FAMILIES = ("vit", "swin", "swinv2", "eva", "beit", "vit_relpos", "vit_map", "cait")


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
        signed: True when maps can be negative (relevance with a sign, drawn with a diverging colormap centred
            at zero); False for maps that are non-negative by construction.
        class_sensitive: False when the map cannot depend on the explained class by construction (it reads no
            gradient and no relevance of the target: rollout, raw attention); the monitor then logs a
            ``class_sensitivity`` of 0 without explaining a second class. True does not promise that the map
            moves with the class: the monitor measures it.
        relevance_seed: for maps that decompose the target's score over the patches (each patch's relevance summed
            down to the input), what they start from: ``"logit"`` (the target logit: AttnLRP's Gradient x Input)
            or ``"one"`` (a relevance of 1 at the target: the full-LRP baseline); the monitor logs the map's sum
            over it as ``conservation``. None for every other map (rollout-type maps of attention relevance).
        pixel_map: True when ``pixel_relevance(images, target)`` gives a map at the pixels of its own, which the
            monitor draws with ``pixel_maps=True`` (``partial_lrp``'s would be ``lrp``'s map: False).
        receptive_field_figures: True when the monitor also draws the patch interactions behind the map (each
            patch's receptive field and its size per block).
        callable_target: True when ``target`` may be a callable ``f(outputs) -> Tensor[B]`` (the scalar to explain
            per sample: a regression output, a sum of classes, a feature similarity): the gradient explainers, which
            differentiate that scalar, and those that read no target. False where the method seeds a class (the
            LRP family's one-hot relevance): a callable raises a ``TypeError`` at call.
    """

    name: str
    needs_gradients: bool
    readout: bool
    families: tuple[str, ...]
    description: str
    reference: str
    signed: bool = False
    class_sensitive: bool = True
    relevance_seed: Literal["logit", "one"] | None = None
    pixel_map: bool = False
    receptive_field_figures: bool = False
    callable_target: bool = False


_EXPLAINERS: Registry[ExplainerInfo] = Registry("explainer")
E = TypeVar("E", bound="type[Explainer]")


def register(info: ExplainerInfo) -> Callable[[E], E]:
    """Class decorator adding an explainer under ``info.name``; a duplicate name raises ``ValueError``."""
    return _EXPLAINERS.register(info)


def available() -> list[str]:
    """Names of the registered explainers, sorted."""
    return _EXPLAINERS.available()


def get_info(name: str) -> ExplainerInfo:
    """What the registry says of ``name``: its families, whether it needs gradients, its reference, ..."""
    return _EXPLAINERS.get(name)[0]


def get_class(name: str) -> type:
    """The class registered as ``name`` (its constructor's defaults are the explainer's options)."""
    cls: type = _EXPLAINERS.get(name)[1]
    return cls


def create(name: str, model: nn.Module, **options: Any) -> Explainer:
    """Build the explainer registered as ``name`` for ``model``; ``options`` go to its constructor.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx import explainers
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> explainers.create("rollout", model, head_fusion="max")(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 14, 14])
    """
    explainer: Explainer = _EXPLAINERS.create(name, model, **options)
    return explainer
