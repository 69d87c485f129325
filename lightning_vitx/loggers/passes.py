"""One explained pass to every attached logger: scores, captioned per-sample images, figures, the per-sample table.

The one place that knows what W&B, TensorBoard and the other Lightning loggers take:

- **W&B**: the whole pass is one history row (``run.log``) carrying ``<prefix>/epoch``, which ``define_axes`` makes
  the x-axis of every ``<prefix>/*`` key; per-sample images are captioned ``wandb.Image`` lists with the
  ground-truth mask as a toggleable overlay; the table is one incremental table across passes; curves are W&B
  line plots (overlayable across runs) and a figure.
- **TensorBoard**: scalars at the trainer's global step; one image grid per key (masks outlined; captions in a text
  summary of the same step) and the figures at step = epochs trained (``epoch + 1``: 0 before training), so the
  image slider reads epochs; ``define_axes`` adds a custom-scalars layout (one chart per metric, one line and
  colour per explainer: ``explainer_runs.ExplainerRuns``); the settings and best scores go to the HPARAMS tab
  (``hparams.HParamsSummary``).
- **MLflow** (``MLFlowLogger``): the scalars through ``log_metrics`` (a key that is also the folder of others, as
  ``.../skipped`` of ``.../skipped/zero``, as ``.../skipped/all``: MLflow's file store keeps one file per key); each
  pass's pictures, maps and manifest (the
  folder of ``bundle.save_pass``) as run artifacts under ``<prefix>/<pass>`` (``init``, ``epoch_000``, ...).
- **Any other logger** (CSV, ...): the scalars through ``log_metrics``; the figures as PNG files.

Call everything here on global rank zero only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_vitx.loggers.explainer_runs import ExplainerRuns
from lightning_vitx.loggers.figures import close_figures, figure_to_array
from lightning_vitx.loggers.hparams import HParamsSummary

__all__ = ["PassLogger", "PassRecord", "SampleImages", "image_grid", "pass_name"]


@dataclass
class SampleImages:
    """Pictures of the shown samples, one per sample: uint8 ``[H, W, 3]``, captions, optional bool masks ``[H, W]``."""

    pictures: list[np.ndarray]
    captions: list[str]
    masks: list[np.ndarray] | None = None


@dataclass
class PassRecord:
    """What one explained pass logs.

    Attributes:
        epoch: the training epoch whose end state was explained (``-1`` before any training step).
        step: the trainer's global step; TensorBoard and the plain loggers log everything of the pass at it.
        scalars: ``{key: value}``, finite values only.
        images: ``{key: SampleImages}``, e.g. ``explain/inputs``, ``explain/<explainer>/maps``.
        figures: ``{key: matplotlib figure}`` logged everywhere (the curves).
        fallback_figures: figures written as PNG only when no logger takes images (the composite panel), each as
            a function that draws it: with an image logger attached it is never drawn.
        curves: ``{metric: {line: (x, y)}}`` for W&B line plots.
        table: ``(columns, rows)`` of the per-sample table; image cells are ``SampleImages`` of one picture.
        maps: ``{explainer: [N, gh, gw]}``: the shown samples' maps, for a saved pass (``bundle.save_pass``).
        sample_ids: the shown samples' ids, in the maps' order.
    """

    epoch: int
    step: int
    scalars: dict[str, float] = field(default_factory=dict)
    images: dict[str, SampleImages] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    fallback_figures: dict[str, Callable[[], Any]] = field(default_factory=dict)
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    table: tuple[list[str], list[list[Any]]] | None = None
    maps: dict[str, Any] = field(default_factory=dict)
    sample_ids: list[int] = field(default_factory=list)


class PassLogger:
    """Writes the monitor's run settings, axes and passes under one key prefix; holds the W&B incremental table.

    Example::

        >>> logger = PassLogger("explain")
        >>> logger.epoch_key
        'explain/epoch'
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._tables: dict[str, Any] = {}  # W&B run id -> the incremental table of that run
        self.hparams = HParamsSummary(prefix)  # TensorBoard's HPARAMS tab: settings and best scores
        self.explainer_runs = ExplainerRuns(prefix)  # TensorBoard's Custom Scalars: one run (colour) per explainer
        self.settings: dict[str, Any] = {}  # as recorded, for the saved passes' manifests

    def __getstate__(self) -> dict[str, Any]:  # a W&B table does not travel to spawned processes
        return {**self.__dict__, "_tables": {}}

    @property
    def epoch_key(self) -> str:
        return f"{self.prefix}/epoch"

    def record_settings(self, trainer: Any, settings: Mapping[str, Any]) -> None:
        """Record the settings once per run.

        W&B: the run config (``explainability_monitor``, or ``explainability_monitor/<prefix>``); TensorBoard: a
        text summary ``<prefix>/settings`` (JSON); other loggers: ``log_hyperparams`` under ``<prefix>/``.
        """
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        config_key = "explainability_monitor" if self.prefix == "explain" else f"explainability_monitor/{self.prefix}"
        self.settings = dict(settings)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({config_key: dict(settings)}, allow_val_change=True)
            elif isinstance(logger, TensorBoardLogger):
                self.hparams.settings = dict(settings)
                text = "```json\n" + json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n```"
                logger.experiment.add_text(f"{self.prefix}/settings", text, global_step=0)
            else:
                logger.log_hyperparams({f"{self.prefix}/{key}": _plain(value) for key, value in settings.items()})

    def define_axes(self, trainer: Any, metric_keys: Mapping[str, Mapping[str, bool]]) -> None:
        """Axes and summaries, from ``{metric: {score key: higher_is_better}}``.

        W&B: ``<prefix>/epoch`` is the x-axis of every ``<prefix>/*`` key, and each score's summary is its best value
        (``max`` or ``min`` by ``higher_is_better``). TensorBoard: a custom-scalars layout with one chart per metric
        and one line, in its own colour, per explainer (``ExplainerRuns``).
        """
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                run.define_metric(self.epoch_key)
                run.define_metric(f"{self.prefix}/*", step_metric=self.epoch_key)
                for keys in metric_keys.values():
                    for key, higher in keys.items():
                        run.define_metric(key, step_metric=self.epoch_key, summary="max" if higher else "min")
            elif isinstance(logger, TensorBoardLogger):
                self.hparams.directions = {key: higher for keys in metric_keys.values() for key, higher in keys.items()}
                self.explainer_runs.series = self.explainer_runs.series_of(metric_keys)
                logger.experiment.add_custom_scalars(self.explainer_runs.layout(metric_keys))

    def alert(self, trainer: Any, messages: Sequence[str], epoch: int) -> None:
        """Alerts that fired on a pass: W&B ``run.alert`` and a TensorBoard text entry ``<prefix>/alerts``.

        W&B alerts go from online runs only: offline or disabled runs, and versions without alerts, skip them.
        """
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        text = "\n\n".join(messages)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                mode = getattr(getattr(run, "settings", None), "mode", "online")
                if callable(getattr(run, "alert", None)) and not getattr(run, "offline", False) and mode == "online":
                    try:
                        run.alert(title=f"{self.prefix}: explanation alert (epoch {epoch})", text=text)
                    except Exception:  # noqa: BLE001 - an alert W&B cannot send must not cost the run
                        pass
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(f"{self.prefix}/alerts", text, global_step=trainer.global_step)

    def log(self, trainer: Any, record: PassRecord, fallback_dir: str) -> list[str]:
        """Send one pass to every logger; with none that takes images, figures go to PNGs in ``fallback_dir``.

        Returns where pictures went (``"wandb"``, ``"tensorboard"``, ``"mlflow"``, or the PNG paths).
        """
        from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

        sent: list[str] = []
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, record)
                sent.append("wandb")
            elif isinstance(logger, TensorBoardLogger):
                self._log_tensorboard(logger.experiment, record)
                self.hparams.log(logger, record.scalars, record.step)
                self.explainer_runs.log(logger.log_dir, record.scalars, record.step)
                sent.append("tensorboard")
            elif isinstance(logger, MLFlowLogger):
                scalars = {**record.scalars, self.epoch_key: float(record.epoch)}
                logger.log_metrics(_leaf_keys(scalars), step=record.step)
                self._log_mlflow(logger, record)
                sent.append("mlflow")
            else:
                logger.log_metrics({**record.scalars, self.epoch_key: float(record.epoch)}, step=record.step)
                logger.save()
        if not sent:
            sent = self._write_pngs(record, fallback_dir)
        close_figures(record.figures.values())
        return sent

    def _log_mlflow(self, logger: Any, record: PassRecord) -> None:
        import tempfile

        from lightning_vitx.loggers.bundle import save_pass

        with tempfile.TemporaryDirectory() as folder:
            path = save_pass(record, folder, self.settings)
            logger.experiment.log_artifacts(
                logger.run_id, path, artifact_path=f"{self.prefix}/{pass_name(record.epoch)}"
            )

    def _log_wandb(self, logger: Any, record: PassRecord) -> None:
        import wandb

        row: dict[str, Any] = {**record.scalars, self.epoch_key: record.epoch, "trainer/global_step": record.step}
        for key, images in record.images.items():
            row[key] = [_wandb_image(*cell) for cell in _cells(images)]
        for key, figure in record.figures.items():
            row[key] = wandb.Image(figure_to_array(figure))
        for metric, lines in record.curves.items():
            names = list(lines)
            # one chart per pass: W&B keeps one custom chart per key, so a shared key would keep the last pass only
            row[f"{self.prefix}/curves/{metric}/{pass_name(record.epoch)}"] = wandb.plot.line_series(
                xs=[lines[name][0].tolist() for name in names],
                ys=[lines[name][1].tolist() for name in names],
                keys=names,
                title=f"{metric} (epoch {record.epoch})",
                xname="share of patches",
            )
        if record.table is not None:
            columns, rows = record.table
            run_id = logger.experiment.id
            table = self._tables.get(run_id)
            if table is None or list(table.columns) != columns:
                table = self._tables[run_id] = wandb.Table(columns=list[Any](columns), log_mode="INCREMENTAL")
            for cells in rows:
                table.add_data(*[_wandb_image(*_cells(c)[0]) if isinstance(c, SampleImages) else c for c in cells])
            row[f"{self.prefix}/samples"] = table
        logger.experiment.log(row)

    def _log_tensorboard(self, writer: Any, record: PassRecord) -> None:
        for key, value in record.scalars.items():
            writer.add_scalar(key, value, global_step=record.step)
        writer.add_scalar(self.epoch_key, record.epoch, global_step=record.step)
        trained = record.epoch + 1  # the pictures' step: epochs trained, what the image slider shows
        for key, images in record.images.items():
            writer.add_image(key, image_grid(images), global_step=trained, dataformats="HWC")
        captions = next(iter(record.images.values())).captions if record.images else []
        if captions:
            when = "before training" if trained == 0 else f"after {trained} epoch{'s' if trained > 1 else ''}"
            lines = [f"epoch {record.epoch} ({when}; global step {record.step}), left to right:", ""]
            lines += [f"{i + 1}. {c}" for i, c in enumerate(captions)]
            writer.add_text(f"{self.prefix}/captions", "\n".join(lines), global_step=trained)
        for key, figure in record.figures.items():
            writer.add_image(key, figure_to_array(figure), global_step=trained, dataformats="HWC")
        writer.flush()

    def _write_pngs(self, record: PassRecord, folder: str) -> list[str]:
        """Every figure as ``<key>_epoch<e>_step<s>.png``: one file per pass, the pass before training included."""
        os.makedirs(folder, exist_ok=True)
        paths = []
        drawn = {key: draw() for key, draw in record.fallback_figures.items()}
        for key, figure in {**drawn, **record.figures}.items():
            path = os.path.join(folder, f"{key.replace('/', '_')}_epoch{record.epoch:03d}_step{record.step:07d}.png")
            figure.savefig(path, dpi=100)
            paths.append(path)
        close_figures(drawn.values())
        return paths


def _cells(images: SampleImages) -> list[tuple[np.ndarray, str, np.ndarray | None]]:
    masks: Sequence[np.ndarray | None] = [None] * len(images.pictures) if images.masks is None else images.masks
    return list(zip(images.pictures, images.captions, masks, strict=True))


def _wandb_image(picture: np.ndarray, caption: str, mask: np.ndarray | None) -> Any:
    import wandb

    masks = None
    if mask is not None:
        classes = {0: "background", 1: "object (ground truth)"}
        masks = {"ground_truth": {"mask_data": mask.astype(np.uint8), "class_labels": classes}}
    return wandb.Image(picture, caption=caption, masks=masks)


def _leaf_keys(scalars: Mapping[str, float]) -> dict[str, float]:
    """``scalars`` with every key that prefixes another one (``a/b`` beside ``a/b/c``) renamed ``a/b/all``."""
    folders = {key.rsplit("/", 1)[0] for key in scalars if "/" in key}
    return {f"{key}/all" if key in folders else key: value for key, value in scalars.items()}


def image_grid(images: SampleImages) -> np.ndarray:
    """The pictures side by side, uint8 ``[H, W, 3]``, each object's mask outlined (for loggers without overlays)."""
    import torch
    from torchvision.utils import make_grid

    from lightning_vitx.rendering import outline_masks

    batch = torch.as_tensor(np.stack(images.pictures)).permute(0, 3, 1, 2)
    if images.masks is not None:
        masks = torch.as_tensor(np.stack(images.masks)).bool()
        batch = (outline_masks(batch.float() / 255, masks) * 255).round().byte()
    grid = make_grid(batch, nrow=len(images.pictures), padding=2, pad_value=255)
    return grid.permute(1, 2, 0).numpy()


def pass_name(epoch: int) -> str:
    """``"init"`` for the pass before training (epoch -1), else ``"epoch_007"``: chart keys that sort by epoch."""
    return "init" if epoch < 0 else f"epoch_{epoch:03d}"


def _plain(value: Any) -> Any:
    """A value a hyperparameter logger takes: numbers and strings as they are, anything else as JSON."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return json.dumps(value, sort_keys=True, default=str)
