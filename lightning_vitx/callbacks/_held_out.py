"""The monitor's held-out set: reading batches, checking what they hold, keeping samples under global ids.

Two kinds of problem, two behaviours. What ``batch_to_inputs`` returns is checked on the first batch the monitor
sees (a configuration mistake: :class:`MonitorConfigError` names the argument and the fix, before training).
Faults in single samples later on (an image with NaN, an image of another size) are data faults: the sample is
left out of the held-out set with one warning, and counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_vitx.callbacks.errors import MonitorConfigError
from lightning_vitx.metrics import as_masks

__all__ = [
    "REGION_PREFIX",
    "HeldOut",
    "Inputs",
    "check_batch_inputs",
    "collect_from_loader",
    "dataset_length",
    "default_batch_to_inputs",
    "read_inputs",
    "region_masks",
    "region_names",
]

Masks = Tensor | Mapping[str, Tensor]  # one mask [B, H, W], or named regions {"object": [B, H, W], ...}
Inputs = tuple[Tensor, Tensor | None, Masks | None]
REGION_PREFIX = "regions/"  # a named region's masks in ``HeldOut.samples``: "regions/<name>"
RESERVED_REGION_NAMES = ("random", "vs_random")  # the floor's key suffixes


def default_batch_to_inputs(batch: Any) -> Inputs:
    """``(images, labels[, masks])`` from a tuple/list, or a dict with image(s)/label(s)/target/mask(s) keys.

    ``masks`` may be one tensor or a dict of named regions (``{"object": ..., "shortcut": ...}``).
    """
    if isinstance(batch, Mapping):

        def pick(*keys: str) -> Any:
            return next((batch[k] for k in keys if k in batch), None)

        images = pick("images", "image", "x", "input")
        labels, masks = pick("labels", "label", "targets", "target", "y"), pick("masks", "mask")
    elif isinstance(batch, (tuple, list)):
        images = batch[0]
        labels = batch[1] if len(batch) > 1 else None
        masks = batch[2] if len(batch) > 2 else None
    else:
        images, labels, masks = batch, None, None
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise MonitorConfigError(
            "ExplainabilityMonitor could not find images [B, C, H, W] in the batch; pass "
            "batch_to_inputs=a function of the batch returning (images, labels_or_None, masks_or_None)"
        )
    if not isinstance(masks, Tensor) and not (isinstance(masks, Mapping) and masks):
        masks = None
    return images, labels if isinstance(labels, Tensor) else None, masks


def _described(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def check_batch_inputs(inputs: Any, needs_labels: bool) -> Inputs:
    """What ``batch_to_inputs`` returned, checked: raise :class:`MonitorConfigError` naming the fix, or return it.

    ``images``: float ``[B, C, H, W]``; ``labels``: None or integer ``[B]``; ``masks``: None or ``[B, H, W]`` /
    ``[B, 1, H, W]`` at the image size, or a dict of such tensors (named regions: strings without ``/``).
    ``needs_labels`` (``target="label"``) makes labels required.
    """
    fix = "batch_to_inputs must return (images, labels_or_None, masks_or_None) as torch tensors"
    if not isinstance(inputs, (tuple, list)) or len(inputs) != 3:
        raise MonitorConfigError(f"{fix}; it returned {_described(inputs)}")
    images, labels, masks = inputs
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.dtype.is_floating_point:
        raise MonitorConfigError(f"{fix}: images must be a float tensor [B, C, H, W], got {_described(images)}")
    batch, height, width = images.shape[0], images.shape[2], images.shape[3]
    if labels is not None:
        integer = isinstance(labels, Tensor) and not labels.dtype.is_floating_point and labels.dtype != torch.bool
        if not integer or labels.shape != (batch,):
            raise MonitorConfigError(
                f"{fix}: labels must be None or an integer tensor [{batch}] (class indices), got {_described(labels)}"
            )
    elif needs_labels:
        raise MonitorConfigError(
            "ExplainabilityMonitor(target='label') needs labels, but batch_to_inputs gave None: use target='pred' "
            "or return the labels from batch_to_inputs"
        )
    if isinstance(masks, Mapping):
        for region, mask in masks.items():
            if not isinstance(region, str) or not region or "/" in region or region in RESERVED_REGION_NAMES:
                raise MonitorConfigError(
                    f"{fix}: the masks' region names must be non-empty strings without '/', other than "
                    f"{list(RESERVED_REGION_NAMES)} (the floor's keys), got {region!r}"
                )
            _check_mask(mask, batch, height, width, f"{fix}: region {region!r}")
    elif masks is not None:
        _check_mask(masks, batch, height, width, fix)
    return images, labels, masks


def _check_mask(mask: Any, batch: int, height: int, width: int, fix: str) -> None:
    shape = tuple(mask.shape) if isinstance(mask, Tensor) else None
    if shape not in ((batch, height, width), (batch, 1, height, width)):
        raise MonitorConfigError(
            f"{fix}: masks must be None, a tensor [{batch}, {height}, {width}] (or [{batch}, 1, {height}, {width}]) "
            f"at the image size, or a dict of named regions of such tensors, got {_described(mask)}; resize them "
            "with the images"
        )


def region_names(masks: Masks | None) -> list[str]:
    """The named regions of one batch's masks (``[]`` for one unnamed mask or none)."""
    return list(masks) if isinstance(masks, Mapping) else []


def read_inputs(batch_to_inputs: Callable[[Any], Any], batch: Any, needs_labels: bool) -> Inputs:
    """``batch_to_inputs(batch)``, checked (``check_batch_inputs``); raises :class:`MonitorConfigError` on a mistake.

    An error inside ``batch_to_inputs`` (the user's function) is a ``MonitorConfigError`` naming it.
    """
    try:
        return check_batch_inputs(batch_to_inputs(batch), needs_labels=needs_labels)
    except MonitorConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's function raised: name it
        raise MonitorConfigError(f"batch_to_inputs raised on a validation batch: {error!r}") from error


class HeldOut:
    """The held-out samples one rank explains, in ascending global id order, as CPU tensors.

    ``samples`` holds ``ids``, ``images``, ``labels`` and ``masks`` (the last two may be None) and is what the
    monitor checkpoints. Masks given as named regions are kept per region (``regions/<name>``), and ``masks`` is
    their union (what the panel outlines). ``add`` leaves out samples with non-finite images, or of another size
    than the first kept, with one warning per kind; ``dropped`` counts them.
    """

    def __init__(self, samples: dict[str, Tensor | None] | None = None, strict: bool = False) -> None:
        self._samples: dict[str, Tensor | None] = dict(samples or {})
        self.strict = strict  # a sample that would be left out raises instead (on_error="raise")
        self._parts: list[dict[str, Tensor | None]] = []  # added since, concatenated once when read
        images = self._samples.get("images")
        self._count = 0 if images is None else int(images.shape[0])
        self._shape = None if images is None or self._count == 0 else images.shape[1:]
        self.dropped: dict[str, int] = {}
        self.seen = 0  # samples offered to ``add`` (kept or not): the next global id of a validation shard

    def __len__(self) -> int:
        return self._count

    @property
    def samples(self) -> dict[str, Tensor | None]:
        """``{ids, images, labels, masks}``; the parts added since the last read are concatenated once."""
        if self._parts:
            parts = [self._samples, *self._parts] if self._samples else self._parts
            self._samples = {key: _cat([part[key] for part in parts]) for key in parts[0]}
            self._parts = []
        return self._samples

    def add(
        self, ids: Tensor, rows: slice | Tensor, images: Tensor, labels: Tensor | None, masks: Masks | None
    ) -> None:
        """Keep ``images[rows]`` (and their labels, masks) under global ``ids``."""
        self.seen += int(ids.numel())
        kept = images[rows]
        good = torch.isfinite(kept).flatten(1).all(dim=1).cpu()
        self._drop("non-finite", int((~good).sum()), "their images hold NaN or inf")
        if self._shape is not None and self._shape != kept.shape[1:]:
            self._drop(
                "other-size", int(good.sum()), f"they are {list(kept.shape[1:])}, the first were {list(self._shape)}"
            )
            return
        if not bool(good.any()):
            return
        self._shape = kept.shape[1:]
        with torch.inference_mode(False):  # plain copies, not inference tensors
            part: dict[str, Tensor | None] = {"ids": ids.cpu()[good].clone()}
            regions: dict[str, Tensor] = {}
            union = masks if not isinstance(masks, Mapping) else None
            if isinstance(masks, Mapping):  # each region, and their union (what the panel outlines)
                regions = {f"{REGION_PREFIX}{name}": mask for name, mask in masks.items()}
                union = torch.stack([as_masks(mask) for mask in regions.values()]).any(dim=0)
            for key, value in [("images", images), ("labels", labels), ("masks", union), *regions.items()]:
                part[key] = None if value is None else value[rows].detach().cpu()[good].clone()
        self._parts.append(part)
        self._count += int(good.sum())

    def add_validation_batch(
        self, rank: int, world: int, limit: int, images: Tensor, labels: Tensor | None, masks: Masks | None
    ) -> bool:
        """Keep this rank's share of the first ``limit`` validation samples from a batch; False once it has all.

        Lightning shards validation with an unshuffled ``DistributedSampler``: rank r's i-th sample is global id
        ``r + i * world``. Keeping ids below the limit gives every rank its exact share of the first ``limit``
        (uneven when they don't divide) and drops the sampler's padding duplicates.
        """
        take = min(len(range(rank, limit, world)) - self.seen, images.shape[0])
        if take <= 0:
            return False
        ids = rank + (self.seen + torch.arange(take)) * world
        self.add(ids, slice(0, take), images, labels, masks)
        return True

    def _drop(self, kind: str, count: int, why: str) -> None:
        if count == 0:
            return
        if self.strict:
            raise ValueError(
                f"ExplainabilityMonitor(on_error='raise'): {count} held-out samples would be left out because {why}"
            )
        if kind not in self.dropped:
            warnings.warn(
                f"ExplainabilityMonitor: {count} held-out samples left out because {why}; later ones are left out "
                "too and counted (see the monitor's `dropped`)",
                stacklevel=4,
            )
        self.dropped[kind] = self.dropped.get(kind, 0) + count


def _cat(values: list[Tensor | None]) -> Tensor | None:
    """One tensor of all ``values``; None if any part lacks them (labels or masks missing from some batch)."""
    present = [value for value in values if value is not None]
    return torch.cat(present) if len(present) == len(values) else None


def collect_from_loader(
    held_out: HeldOut, loader: Any, to_inputs: Callable[[Any], Inputs], limit: int, rank: int, world: int
) -> None:
    """The first ``limit`` samples of ``loader``: this rank keeps global ids ``g % world == rank``."""
    seen = 0
    for batch in loader:
        images, labels, masks = to_inputs(batch)
        ids = seen + torch.arange(min(images.shape[0], limit - seen))
        mine = ids[ids % world == rank]
        if mine.numel() > 0:
            held_out.add(mine, mine - seen, images, labels, masks)
        seen += ids.numel()
        if seen >= limit:
            break


def dataset_length(trainer: Any) -> int | None:
    """The length of the first validation loader's dataset, if it has one (an iterable dataset may not)."""
    loaders = trainer.val_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    try:
        return len(getattr(loader, "dataset", None))  # type: ignore[arg-type]
    except TypeError:
        return None


def region_masks(samples: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
    """``{region: masks [N, H, W]}`` of the held-out samples' named regions (empty for one unnamed mask)."""
    return {
        key.removeprefix(REGION_PREFIX): value
        for key, value in samples.items()
        if key.startswith(REGION_PREFIX) and value is not None
    }
