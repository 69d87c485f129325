"""The monitor's perturbation curves: every explainer's and the random order's, in one stream of forwards.

The ends of a perturbation curve do not depend on the map (no patch perturbed: the image or the baseline as they
are; every patch: the other one), so they come once per sample: the clean images from the scoring's clean forward,
each baseline from one forward. The interior points of every explainer, metric and the reference then go through
the model ``batch_size`` images per forward (:func:`lightning_vitx.metrics.curve_stream.stream_logits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_vitx._batching import chunks
from lightning_vitx._state import eval_mode
from lightning_vitx.metrics.curve_stream import CurveJob, Source, stream_logits
from lightning_vitx.metrics.functional.perturbation import make_baseline

__all__ = ["stream_curves"]

Key = tuple[str | None, str, int]  # (explainer, or None for the random order; metric; batch of the held-out set)


def stream_curves(
    model: nn.Module,
    images: Tensor,
    maps: Mapping[str, Tensor],
    random_maps: Tensor | None,
    target: Tensor,
    logits: Tensor,
    metrics: Mapping[str | None, Mapping[str, Any]],
    batch_size: int,
) -> dict[Key, Tensor]:
    """The curves ``[n, S]`` of each metric's usable samples, per ``(explainer, metric, batch)``.

    ``images [N, ...]``, ``maps {explainer: [N, gh, gw]}`` (``random_maps``: the reference's, under None),
    ``target [N]`` and the clean forward's ``logits [N, classes]`` of the held-out set, cut into batches of
    ``batch_size`` as the scoring cuts them; ``metrics {explainer or None: {name: metric}}`` with ``curve_job``.
    Empty when a forward fails: each metric then evaluates its own curves and reports its own error.
    """
    device = logits.device
    owners: dict[str | None, Tensor | None] = {name: m for name, m in maps.items()}
    owners[None] = random_maps
    jobs: list[tuple[Key, CurveJob, Tensor, str]] = []  # key, job, usable samples [b], baseline kind
    substrates: dict[tuple[int, str], Tensor] = {}  # (batch, baseline kind) -> baseline images [b, C, H, W]
    try:
        for index, (image, tgt) in enumerate(chunks(batch_size, images, target)):
            image, tgt = image.to(device), tgt.to(device)
            rows = slice(index * batch_size, index * batch_size + image.shape[0])
            for owner, owner_maps in owners.items():
                if owner_maps is None:
                    continue
                for name, metric in metrics.get(owner, {}).items():
                    kind = metric.baseline
                    if (index, kind) not in substrates:
                        with torch.no_grad(), eval_mode(model):
                            substrates[index, kind] = make_baseline(image, kind, model)
                    keep, job = metric.curve_job(
                        model, image, owner_maps[rows].to(device), tgt, substrates[index, kind]
                    )
                    if job is not None:
                        jobs.append(((owner, name, index), job, keep.to(device), kind))
        needed = sorted({(key[2], kind) for key, job, _, kind in jobs if job.needs_substrate})
        sources: list[Source] = [(substrates[k].shape[0], _rows_of(substrates[k])) for k in needed]
        sources += [job.source() for _, job, _, _ in jobs]
        outputs = stream_logits(model, sources, batch_size)
    except Exception:  # noqa: BLE001 - each metric evaluates its own curves and reports its own error
        return {}
    baseline_logits = dict(zip(needed, outputs[: len(needed)], strict=True))
    curves = {}
    for (key, job, keep, kind), interior in zip(jobs, outputs[len(needed) :], strict=True):
        index = key[2]
        clean = logits[index * batch_size : (index + 1) * batch_size][keep]
        substrate = baseline_logits.get((index, kind))
        curves[key] = job.curves(interior, clean, None if substrate is None else substrate[keep])
    return curves


def _rows_of(images: Tensor) -> Any:
    return lambda index: images[index.to(images.device)]
