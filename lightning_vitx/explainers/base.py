"""The explainer contract, and several explainers served from one capture pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_vitx.adapters import Capture, CaptureNeeds, capture_pass, detect, qualified_name
from lightning_vitx.adapters.capture import Target
from lightning_vitx.explainers._registry import ExplainerInfo, available, create, get_info

__all__ = ["Explainer", "ExplainerGroup", "ReadoutExplainer", "create_many"]


class Explainer:
    """The contract: ``explainer(images, target) -> maps``.

    Maps are float32 ``[B, gh, gw]`` at the model's patch grid, higher = more relevant, not normalised, on the
    images' device.

    ``target`` is ``None`` (the predicted class), an ``int`` for all samples, ``LongTensor[B]``, or, for the
    explainers whose ``info.callable_target`` is True, a callable ``f(outputs) -> Tensor[B]`` giving the scalar to
    explain per sample (the others raise a ``TypeError``). Subclasses register with
    ``@register(ExplainerInfo(...))`` and are built with ``lightning_vitx.explainers.create``.
    """

    info: ClassVar[ExplainerInfo]

    def __init__(self, model: nn.Module) -> None:
        self.adapter = detect(model)
        self.model = self.adapter.model
        if self.adapter.family not in self.info.families:
            # an adapter may name the explainers its model cannot take, with the reason (SwinV2: the LRP family)
            refusals: dict[str, str] = getattr(self.adapter, "refusals", {})
            working = [n for n in available() if self.adapter.family in get_info(n).families and n not in refusals]
            why = refusals.get(self.info.name)
            raise TypeError(
                f"{self.info.name} cannot explain this {qualified_name(self.model)}: it supports "
                f"{list(self.info.families)} models, got a {self.adapter.family!r} model"
                f"{f' ({why})' if why else ''}. Use one of {working} for this model."
            )

    def __call__(self, images: Tensor, target: Target = None) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r})"

    def _block_index(self, index: int, option: str) -> int:
        """Validate a block index option (negative counts from the last block) and return it as non-negative."""
        depth = len(self.adapter.blocks())
        if isinstance(index, bool) or not isinstance(index, int) or not -depth <= index < depth:
            raise ValueError(
                f"{option} must be an int in [{-depth}, {depth}) for this {depth}-block model, got {index!r}"
            )
        return index % depth


class ReadoutExplainer(Explainer):
    """An explainer that only reads the shared capture pass; ``read`` does the method's maths."""

    def capture_needs(self) -> CaptureNeeds:
        return CaptureNeeds(gradients=self.info.needs_gradients)

    def __call__(self, images: Tensor, target: Target = None) -> Tensor:
        return self.from_capture(capture_pass(self.adapter, images, target, self.capture_needs()))

    def from_capture(self, record: Capture) -> Tensor:
        """The maps ``[B, gh, gw]`` for a capture of the batch, computed in float32 whatever autocast is on."""
        with torch.autocast(device_type=record.logits.device.type, enabled=False):
            return self.read(record).float()

    def read(self, record: Capture) -> Tensor:
        """The method's maths: maps ``[B, gh, gw]`` from a capture. Subclasses implement it."""
        raise NotImplementedError


class ExplainerGroup:
    """Several explainers for one model; the readout ones share a single capture pass per batch.

    Calling the group returns ``{name: maps}``. Every map explains the same class per sample: the readouts'
    capture resolves ``target`` once and the other explainers receive that resolved target. Readouts whose
    gradients differentiate different objectives (``tokentm(score="probability")`` beside the logit-based ones)
    cannot share a backward: they get one capture pass per objective.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create_many
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> group = create_many(["rollout", "gradcam", "gmar"], model)
        >>> {name: tuple(maps.shape) for name, maps in group(torch.randn(2, 3, 224, 224)).items()}
        {'rollout': (2, 14, 14), 'gradcam': (2, 14, 14), 'gmar': (2, 14, 14)}
    """

    def __init__(self, explainers: Mapping[str, Explainer]) -> None:
        if not explainers:
            raise ValueError("expected at least one explainer")
        models = {id(explainer.model) for explainer in explainers.values()}
        if len(models) != 1:
            raise ValueError("all explainers of a group must explain the same model")
        self.explainers = dict(explainers)
        self.adapter = next(iter(self.explainers.values())).adapter

    @property
    def names(self) -> list[str]:
        return list(self.explainers)

    def __call__(self, images: Tensor, target: Target = None) -> dict[str, Tensor]:
        readouts: dict[str, ReadoutExplainer] = {
            n: e for n, e in self.explainers.items() if isinstance(e, ReadoutExplainer)
        }
        maps: dict[str, Tensor] = {}
        resolved: Target = target
        for names, needs in self._passes(readouts):
            record = capture_pass(self.adapter, images, resolved, needs)
            maps.update({name: readouts[name].from_capture(record) for name in names})
            resolved = record.target_fn if record.target_fn is not None else record.target
        for name, explainer in self.explainers.items():
            if name not in maps:
                maps[name] = explainer(images, resolved)
        return {name: maps[name] for name in self.explainers}

    @staticmethod
    def _passes(readouts: Mapping[str, ReadoutExplainer]) -> list[tuple[list[str], CaptureNeeds]]:
        """The capture passes the readouts need: one per gradient objective (logit, probability), usually one.

        Readouts without gradients join the first pass; later passes explain the class the first one resolved.
        """
        groups: dict[str | None, list[str]] = {}
        for name, readout in readouts.items():
            needs = readout.capture_needs()
            groups.setdefault(needs.objective if needs.gradients else None, []).append(name)
        free = groups.pop(None, [])
        passes = list(groups.values()) or [[]]
        passes[0] = free + passes[0]
        result = []
        for names in passes:
            needs = CaptureNeeds()
            for name in names:
                needs = needs | readouts[name].capture_needs()
            result.append((names, needs))
        return [(names, needs) for names, needs in result if names]


def create_many(explainers: Sequence[str] | Mapping[str, Mapping[str, Any]], model: nn.Module) -> ExplainerGroup:
    """Build several explainers for ``model`` that run from one capture pass per batch.

    Args:
        explainers: registry names, or ``{name: options}`` to pass options to each.
        model: the timm model to explain.
    """
    if isinstance(explainers, str):
        raise TypeError(f"expected a list of explainer names, got the string {explainers!r}; use [{explainers!r}]")
    specs = dict(explainers) if isinstance(explainers, Mapping) else {name: {} for name in explainers}
    if not isinstance(explainers, Mapping) and len(specs) != len(explainers):
        raise ValueError(f"duplicate explainer names in {list(explainers)}")
    return ExplainerGroup({name: create(name, model, **dict(options)) for name, options in specs.items()})
