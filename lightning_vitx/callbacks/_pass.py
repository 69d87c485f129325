"""What one explained pass reports: its scores, the faults every rank agrees on, the pictures, one warning per fault.

``score_pass`` and ``agree`` are collectives (every rank calls them); ``log_scores`` feeds ``callback_metrics`` on
every rank;
``log_pass`` sends the scores and pictures of the pass to the loggers, from global rank zero (every rank calls it).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_vitx.callbacks._collectives import agree_on_faults
from lightning_vitx.callbacks._explaining import MonitorPass
from lightning_vitx.callbacks._panel import PanelRows, panel_pixel_maps, pass_record
from lightning_vitx.callbacks._sanity import SanityScores
from lightning_vitx.callbacks._scoring import Scoring
from lightning_vitx.callbacks.alerts import AlertRules
from lightning_vitx.loggers import PassLogger, PassRecord, save_pass

__all__ = ["WarnOnce", "agree", "finite", "log_pass", "log_scores", "raise_alerts", "score_pass"]


class WarnOnce:
    """``warn(key, message)``: one warning per ``key`` for the monitor's life, naming the monitor."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.warned: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            warnings.warn(f"ExplainabilityMonitor({self.name!r}): {message}", stacklevel=3)


def score_pass(
    trainer: Trainer,
    monitor_pass: MonitorPass,
    maps: Mapping[str, Tensor],
    failed_explainers: set[str],
    *,
    scoring: Scoring,
    sanity: SanityScores | None,
) -> tuple[set[str], dict[str, float]]:
    """Score this rank's ``maps`` and sync the scores over ranks: the explainers disabled from now on, the scores.

    A collective: every rank calls it. ``failed_explainers``: those that failed on this rank in this pass.
    """
    prefix, first = monitor_pass.prefix, monitor_pass.first
    with torch.inference_mode(False):  # metric states must stay normal tensors across resets and updates
        failed_metrics = scoring.update(monitor_pass.run, monitor_pass.samples, maps, monitor_pass.previous_maps)
        disabled, failed, counts = agree(trainer, monitor_pass, scoring, failed_explainers, failed_metrics)
        scores = {**scoring.compute(prefix, disabled, failed, not first), **counts}
        if sanity is not None:
            usable = {name: m for name, m in maps.items() if name not in disabled}
            sanity.update(monitor_pass, usable, scoring.probabilities)
            scores.update(sanity.compute(prefix, disabled, not first))
    return disabled, scores


def agree(
    trainer: Trainer,
    monitor_pass: MonitorPass,
    scoring: Scoring,
    failed_explainers: set[str],
    failed_metrics: set[str],
) -> tuple[set[str], set[str], dict[str, float]]:
    """Failures and skip counts of every rank, on every rank, from one all-reduce (``agree_on_faults``).

    ``failed_*``: what failed on this rank in this pass. Returns the explainers disabled from now on (those off
    before, and those that failed on any rank), the ``explainer/metric`` keys that failed on any rank, and the
    counts to log (``<name>/<explainer>/skipped``, ``.../skipped/<reason>``, ``.../degenerate``, ``<name>/dropped``).
    """
    prefix, warn, names = monitor_pass.prefix, monitor_pass.run.warn, list(monitor_pass.explainers)
    running = [name for name in names if name not in monitor_pass.disabled]
    counts = [*scoring.fault_counts(names), float(monitor_pass.dropped)]
    device, keys = monitor_pass.run.device, scoring.failure_keys
    off, failed, totals = agree_on_faults(trainer, device, running, keys, failed_explainers, failed_metrics, counts)
    for name in sorted(off - failed_explainers):
        warn(f"explainer/{name}", f"explainer {name!r} failed on another rank and is disabled")
    for key in sorted(failed - failed_metrics):  # the rank it failed on warned with the error; the others say so too
        warn(f"metric/{key}", f"metric {key!r} failed on another rank: NaN this epoch on every rank")
    disabled = set(monitor_pass.disabled) | off
    logged = scoring.fault_scores(prefix, names, totals[:-1])
    logged.update({f"{prefix}/{name}/degenerate": math.nan for name in disabled})  # nothing scored
    logged[f"{prefix}/dropped"] = totals[-1]
    return disabled, failed, logged


def log_scores(pl_module: LightningModule, keys: Sequence[str], scores: Mapping[str, float]) -> None:
    """Every one of ``keys``, every validation epoch, to ``callback_metrics`` (what checkpoint callbacks read).

    The loggers get the scores from ``log_pass``, with the pictures of the same pass at the same step. Values are
    already synced (or NaN on every rank alike); ``sync_dist`` averages equal values.
    """
    for key in keys:
        if key not in scores and key.endswith(("/stability", "/randomization", "/time_s")):
            continue  # stability, randomization from the second explained epoch on; time where something was timed
        value = scores.get(key, math.nan)
        reduce = "max" if key.endswith("/time_s") else "mean"
        tensor = torch.tensor(value, dtype=torch.float32)
        pl_module.log(key, tensor, sync_dist=True, logger=False, reduce_fx=reduce)


def raise_alerts(
    trainer: Trainer, alerts: AlertRules, scores: dict[str, float], epoch: int, logger: PassLogger
) -> None:
    """Feed one pass's synced ``scores`` to the alert rules (every rank, so their state agrees) and report.

    Adds ``<prefix>/alerts`` (alerts fired so far) to ``scores`` when there are rules; on global rank zero each
    alert that fires warns once and goes to the loggers (``PassLogger.alert``).
    """
    if not alerts.rules:
        return
    fired = alerts.update(finite(scores), epoch)
    scores[f"{logger.prefix}/alerts"] = float(alerts.fired)
    if trainer.is_global_zero and fired:
        messages = [alert.message() for alert in fired]
        for message in messages:
            rank_zero_warn(f"ExplainabilityMonitor({logger.prefix!r}) {message}")
        logger.alert(trainer, messages, epoch)


def finite(scores: Mapping[str, float]) -> dict[str, float]:
    """The scores that are numbers (not NaN or inf): what the loggers and ``history`` keep."""
    return {key: value for key, value in scores.items() if math.isfinite(value)}


def log_pass(
    trainer: Trainer,
    monitor_pass: MonitorPass,
    record: PassRecord,
    logger: PassLogger,
    *,
    panel: PanelRows | None,
    scoring: Scoring,
) -> None:
    """Scores and pictures of one pass, at one step, to every logger; call it on every rank, rank zero logs.

    A picture that cannot be drawn leaves the scores logged without pictures; neither costs the run unless
    ``on_error="raise"``.
    """
    # trainer.log_dir broadcasts under DDP: every rank resolves it, then only rank zero draws.
    log_dir = trainer.log_dir or trainer.default_root_dir
    if not trainer.is_global_zero:
        return
    run = monitor_pass.run
    if panel is not None:
        try:
            at_pixels = _pixel_maps(monitor_pass, panel) if monitor_pass.pixel_maps else {}
            record = pass_record(
                record,
                monitor_pass,
                panel,
                curves=scoring.curves,
                reference_curves=scoring.reference_curves,
                pixel_maps=at_pixels,
            )
        except Exception as error:  # noqa: BLE001 - a picture must not cost the run
            if run.raise_errors:
                raise
            run.warn("pictures", f"the pictures could not be drawn this epoch: {error!r}")
            record = PassRecord(record.epoch, record.step, record.scalars)
    if monitor_pass.save_passes:  # before the loggers close the figures
        try:
            save_pass(record, os.path.join(log_dir, f"{monitor_pass.prefix}_passes"), logger.settings)
        except Exception as error:  # noqa: BLE001 - a saved pass must not cost the run
            if run.raise_errors:
                raise
            run.warn("save_passes", f"this epoch's pass could not be saved: {error!r}")
    try:
        logger.log(trainer, record, os.path.join(log_dir, "explanations"))
    except Exception as error:  # noqa: BLE001 - a logger fault must not cost the run
        if run.raise_errors:
            raise
        # the PNG panel is drawn here, when written: its failures land here too
        run.warn("logging", f"this epoch's pass could not be logged or drawn: {error!r}")


def _pixel_maps(monitor_pass: MonitorPass, panel: PanelRows) -> dict[str, Tensor]:
    """The panel's pixel maps, for the explainers that have them; one that fails warns once and is left out."""
    run = monitor_pass.run
    explained = panel.labels if run.by_label and panel.labels is not None else None
    found, errors = panel_pixel_maps(run.model, panel, monitor_pass.explainers, explained)
    for name, error in errors.items():
        if run.raise_errors:
            raise error
        run.warn(f"pixel_maps/{name}", f"{name}'s pixel map could not be drawn, its patch map is: {error!r}")
    return found
