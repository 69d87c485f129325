"""The monitor's pass as one value (:class:`MonitorPass`), and its explain loop.

Every held-out sample is explained ``batch_size`` at a time, one capture pass for all the explainers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import Tensor, nn

import lightning_vitx.explainers as X

__all__ = ["ExplainingRun", "MonitorPass", "explain_held_out", "explain_in_batches", "start_pass"]


def _silent(key: str, message: str) -> None:
    """A ``warn`` that says nothing (for passes whose failures the caller reports itself)."""


@dataclass(frozen=True)
class ExplainingRun:
    """What every step of one explained pass needs to run the model, as one value.

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


@dataclass(frozen=True)
class MonitorPass:
    """One explained pass of a monitor, as one value: how the model runs, what is explained, how it is shown.

    Built by the monitor at each explained epoch; the steps of the pass (explaining, the sanity scores, the
    panel, the logged record) read it instead of long argument lists.
    """

    run: ExplainingRun  # the model, device, batch size, explained class and error policy
    samples: Mapping[str, Tensor | None]  # this rank's held-out set: ids, images [N, C, H, W], labels, masks
    explainers: Mapping[str, Mapping[str, Any]]  # every explainer's options, in the monitor's order
    metrics: Sequence[str]  # the metric names
    prefix: str = "explain"  # the monitor's name: the start of every key and picture tag
    panel_size: int = 8
    per_map_scale: bool = False  # each drawn map on its own colour scale
    pixel_maps: bool = False  # draw the explainers that have one from their pixel map
    save_passes: bool = False  # save the pass under <log dir>/<prefix>_passes (loggers.save_pass)
    class_names: Sequence[str] | None = None
    disabled: frozenset[str] = frozenset()  # explainers turned off after a failure (on every rank)
    dropped: int = 0  # held-out samples this rank left out
    first: bool = True  # no pass came before: no stability or randomization yet
    previous_maps: Mapping[str, Tensor] = field(default_factory=dict)  # the last pass's maps, for stability

    @property
    def score_keys(self) -> list[str]:
        """``explainer/metric`` for every pair, explainers first."""
        return [f"{explainer}/{metric}" for explainer in self.explainers for metric in self.metrics]


def start_pass(monitor: Any, trainer: Trainer, device: torch.device) -> MonitorPass:
    """An ``ExplainabilityMonitor``'s pass as it starts: its model on ``device``, its held-out set, its settings.

    A progress bar is shown on global rank zero when the trainer shows one.
    """
    progress = trainer.is_global_zero and trainer.progress_bar_callback is not None
    run = ExplainingRun(
        monitor.model,
        device,
        monitor.batch_size,
        by_label=monitor.target == "label",
        raise_errors=monitor.on_error == "raise",
        warn=monitor._warn_once,
        progress=progress,
    )
    return MonitorPass(
        run,
        monitor.samples,
        monitor.explainer_options,
        monitor.metric_names,
        prefix=monitor.name,
        panel_size=monitor.panel_size,
        per_map_scale=monitor.per_map_scale,
        pixel_maps=monitor.pixel_maps,
        save_passes=monitor.save_passes,
        class_names=monitor.class_names,
        disabled=frozenset(monitor._failed),
        dropped=sum(monitor.held_out.dropped.values()),
        first=monitor._explained_epochs == 0,
        previous_maps=monitor.last_maps,
    )


def explain_held_out(monitor_pass: MonitorPass) -> tuple[dict[str, Tensor], set[str]]:
    """This rank's held-out maps ``{name: [N, gh, gw]}`` of the explainers not disabled, and which failed."""
    run, samples = monitor_pass.run, monitor_pass.samples
    images, labels = samples.get("images"), samples.get("labels")
    if images is None or images.shape[0] == 0:
        return {}, set()
    options = {name: options for name, options in monitor_pass.explainers.items() if name not in monitor_pass.disabled}
    return explain_in_batches(run, options, images, labels if run.by_label else None)


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
