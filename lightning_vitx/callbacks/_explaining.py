"""The monitor's explain loop: every held-out sample, ``batch_size`` at a time, one capture pass for all."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

import lightning_vitx.explainers as X

__all__ = ["ExplainingRun", "explain_in_batches"]


def _silent(key: str, message: str) -> None:
    """A ``warn`` that says nothing (for passes whose failures the caller reports itself)."""


@dataclass(frozen=True)
class ExplainingRun:
    """What every step of one explained pass needs, as one value (instead of eight positional arguments).

    The model and where it runs, how many images at a time, which class is explained, and the error policy
    (``raise_errors``, else ``warn(key, message)``, once per key).
    """

    model: nn.Module
    device: torch.device
    batch_size: int
    by_label: bool = False  # explain the label, else the predicted class
    raise_errors: bool = False
    warn: Callable[[str, str], None] = _silent
    progress: bool = False  # a progress bar (global rank zero, when the trainer shows one)

    def quiet(self) -> ExplainingRun:
        """The same run with failures left to the caller: no raising, no warning, no progress bar."""
        return replace(self, raise_errors=False, warn=_silent, progress=False)


def explain_in_batches(
    run: ExplainingRun, options: Mapping[str, Mapping[str, Any]], images: Tensor, labels: Tensor | None
) -> tuple[dict[str, Tensor], set[str]]:
    """Maps ``{name: [N, gh, gw]}`` of the explainers in ``options`` for ``images [N, ...]``, and which failed.

    ``labels`` given: they are the explained classes (else the predicted ones). When the shared pass raises, the
    explainers run one by one to find which fails; that one is left out for the rest of the call with
    ``run.warn(key, message)``, or the error surfaces (``run.raise_errors``).
    """
    model, batch_size, device, raise_errors, warn = run.model, run.batch_size, run.device, run.raise_errors, run.warn
    from tqdm.auto import tqdm

    failed: set[str] = set()
    out: dict[str, list[Tensor]] = {name: [] for name in options}
    bar = tqdm(total=images.shape[0], desc="Explaining", unit="img", leave=False, disable=not run.progress)
    group, names = None, []
    for start in range(0, images.shape[0], batch_size):
        if group is None or any(name in failed for name in names):  # built once, again after a failure
            names = [name for name in out if name not in failed]
            if not names:
                break
            group = X.create_many({name: options[name] for name in names}, model)
        chunk = images[start : start + batch_size].to(device)
        target = None if labels is None else labels[start : start + batch_size].to(device)
        try:
            maps = group(chunk, target)
        except Exception:  # noqa: BLE001 - find the failing explainer below
            if raise_errors and len(names) == 1:
                raise
            maps = {}
            for name, explainer in group.explainers.items():
                try:
                    maps[name] = explainer(chunk, target)
                except Exception as error:  # noqa: BLE001 - an explainer must not stop the run unless asked
                    if raise_errors:
                        raise
                    failed.add(name)
                    warn(f"explainer/{name}", f"explainer {name!r} failed and is disabled: {error!r}")
        for name, explanation in maps.items():
            out[name].append(explanation)
        bar.update(chunk.shape[0])
    bar.close()
    return {name: torch.cat(chunks) for name, chunks in out.items() if name not in failed and chunks}, failed
