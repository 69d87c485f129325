"""One explained pass saved as a folder, and read back for analysis across passes and runs.

A pass folder holds::

    manifest.json   format, epoch, step, scores, settings, explainers, sample ids, the picture files
    maps.pt         {"maps": {explainer: float32 [N, gh, gw]}, "sample_ids": int64 [N]} (``torch.load``-safe)
    <key>.png       the pass's pictures: one grid per per-sample key, one file per figure

``save_pass`` writes one (the monitor's ``save_passes=True`` does, under ``<log dir>/<prefix>_passes/``; with an
``MLFlowLogger`` attached the same folder goes to the run's artifacts under ``<prefix>/<pass>``); ``load_pass``
reads one back, ``load_passes`` every pass under a folder (several runs' too), sorted by run and epoch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_vitx.loggers.figures import close_figures, figure_to_array
from lightning_vitx.loggers.passes import PassRecord, image_grid, pass_name

__all__ = ["FORMAT", "SavedPass", "load_pass", "load_passes", "save_pass"]

FORMAT = "lightning_vitx.pass/1"
MANIFEST = "manifest.json"
MAPS = "maps.pt"


@dataclass
class SavedPass:
    """One explained pass as ``load_pass`` reads it back.

    Attributes:
        path: the pass folder.
        epoch: the training epoch whose end state was explained (``-1``: before training).
        step: the trainer's global step.
        scores: ``{key: value}`` as logged (e.g. ``explain/rollout/deletion``).
        settings: the monitor's settings (``ExplainabilityMonitor.settings()``).
        maps: ``{explainer: float32 [N, gh, gw]}`` on the CPU, one row per shown sample.
        sample_ids: ``int64 [N]``: the held-out samples' ids, which join passes and runs.
        pictures: ``{key: PNG path}``.
    """

    path: str
    epoch: int
    step: int
    scores: dict[str, float]
    settings: dict[str, Any]
    maps: dict[str, Tensor]
    sample_ids: Tensor
    pictures: dict[str, str]


def save_pass(record: PassRecord, folder: str, settings: dict[str, Any] | None = None) -> str:
    """Write ``record`` as ``<folder>/<pass>`` (``init`` or ``epoch_007``); returns that path.

    Example::

        >>> import tempfile, torch
        >>> from lightning_vitx.loggers import PassRecord, load_pass, save_pass
        >>> record = PassRecord(epoch=0, step=10, scalars={"explain/rollout/deletion": 0.25},
        ...                     maps={"rollout": torch.ones(2, 4, 4)}, sample_ids=[3, 7])
        >>> saved = load_pass(save_pass(record, tempfile.mkdtemp()))
        >>> saved.epoch, saved.scores, saved.maps["rollout"].shape, saved.sample_ids.tolist()
        (0, {'explain/rollout/deletion': 0.25}, torch.Size([2, 4, 4]), [3, 7])
    """
    path = os.path.join(folder, pass_name(record.epoch))
    os.makedirs(path, exist_ok=True)
    maps = {name: value.detach().float().cpu().contiguous() for name, value in record.maps.items()}
    torch.save(
        {"maps": maps, "sample_ids": torch.as_tensor(record.sample_ids, dtype=torch.long)}, os.path.join(path, MAPS)
    )
    pictures = {}
    for key, images in record.images.items():
        pictures[key] = _write_png(path, key, image_grid(images))
    drawn = {key: draw() for key, draw in record.fallback_figures.items()}
    for key, figure in {**drawn, **record.figures}.items():
        pictures[key] = _write_png(path, key, figure_to_array(figure))
    close_figures(drawn.values())
    manifest = {
        "format": FORMAT,
        "epoch": record.epoch,
        "step": record.step,
        "scores": record.scalars,
        "settings": settings or {},
        "explainers": sorted(maps),
        "sample_ids": [int(i) for i in record.sample_ids],
        "maps": MAPS,
        "pictures": {key: os.path.basename(file) for key, file in pictures.items()},
    }
    with open(os.path.join(path, MANIFEST), "w") as file:
        json.dump(manifest, file, indent=2, sort_keys=True, default=str)
    return path


def load_pass(path: str) -> SavedPass:
    """Read the pass folder ``path`` (``save_pass``'s output) back."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"{path} is not a saved pass: it has no {MANIFEST} (save_pass writes one)")
    with open(manifest_path) as file:
        manifest = json.load(file)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} has format {manifest.get('format')!r}; this version reads {FORMAT!r}")
    saved = torch.load(os.path.join(path, manifest["maps"]), map_location="cpu", weights_only=True)
    return SavedPass(
        path=path,
        epoch=int(manifest["epoch"]),
        step=int(manifest["step"]),
        scores={key: float(value) for key, value in manifest["scores"].items()},
        settings=manifest["settings"],
        maps=saved["maps"],
        sample_ids=saved["sample_ids"],
        pictures={key: os.path.join(path, name) for key, name in manifest["pictures"].items()},
    )


def load_passes(root: str) -> list[SavedPass]:
    """Every saved pass under ``root`` (any depth: one run's passes, or many runs'), by folder and epoch.

    Example::

        >>> import tempfile, torch
        >>> from lightning_vitx.loggers import PassRecord, load_passes, save_pass
        >>> root = tempfile.mkdtemp()
        >>> for epoch in (1, -1, 0):
        ...     _ = save_pass(PassRecord(epoch=epoch, step=epoch + 1, maps={"rollout": torch.zeros(1, 2, 2)}), root)
        >>> [saved.epoch for saved in load_passes(root)]
        [-1, 0, 1]
    """
    found = [load_pass(folder) for folder, _, files in os.walk(root) if MANIFEST in files]
    return sorted(found, key=lambda saved: (os.path.dirname(saved.path), saved.epoch))


def _write_png(folder: str, key: str, picture: np.ndarray) -> str:
    from PIL import Image

    path = os.path.join(folder, key.replace("/", "_") + ".png")
    Image.fromarray(picture).save(path)
    return path
