"""ExplainabilityMonitor: explain a fixed held-out set every validation epoch, score it, log scores and pictures.

The callback reads as its hooks; the work lives beside it, in ``_held_out``, ``_explaining`` (the pass as one
value), ``_scoring``, ``_sanity``, ``_collectives``, ``_panel``, ``_pass`` (what a pass logs) and ``_resume``.

Two kinds of failure, two behaviours. Configuration mistakes (what ``batch_to_inputs`` returns, labels missing
with ``target="label"``, a model that cannot be found or explained, a checkpoint callback watching a key the
monitor never logs) raise :class:`MonitorConfigError` before the first training step. Faults at run time (a
sample with NaN or of another size, an explainer or metric that raises on some batch, a picture that cannot be
drawn) never stop training with ``on_error="warn"``: what is broken is skipped with one warning, the rest is
logged. An explainer or metric that fails on any rank fails on every rank in that epoch (one small all-reduce).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

import lightning_vitx.explainers as X
import lightning_vitx.metrics as M
from lightning_vitx.callbacks._config import (
    check_alert_keys,
    check_logged_keys,
    check_monitor_options,
    check_setup,
    first_validation_batch,
)
from lightning_vitx.callbacks._explaining import explain_held_out, start_pass
from lightning_vitx.callbacks._held_out import (
    HeldOut,
    Inputs,
    collect_from_loader,
    dataset_length,
    default_batch_to_inputs,
    read_inputs,
    region_names,
)
from lightning_vitx.callbacks._model import find_model
from lightning_vitx.callbacks._panel import PanelRows, gather_panel
from lightning_vitx.callbacks._pass import WarnOnce, finite, log_pass, log_scores, raise_alerts, score_pass
from lightning_vitx.callbacks._resume import load_monitor_state, monitor_state, state_key_parts, unclaimed_state
from lightning_vitx.callbacks._sanity import SanityScores
from lightning_vitx.callbacks._scoring import Scoring
from lightning_vitx.callbacks._settings import (
    explained_epoch,
    find_class_names,
    higher_is_better,
    monitor_score_keys,
    monitor_settings,
    named_options,
    score_axes,
)
from lightning_vitx.callbacks.alerts import AlertRules
from lightning_vitx.callbacks.errors import MonitorConfigError
from lightning_vitx.loggers import PassLogger, PassRecord

__all__ = ["ExplainabilityMonitor"]


class ExplainabilityMonitor(Callback):
    r"""Every ``every_n_epochs`` validation epoch: explain a fixed held-out set, score it, log scores and panels.

    Scores are ``<name>/<explainer>/<metric>`` (synced across ranks), beside each the random maps' score
    ``.../random`` and ``.../vs_random`` (the difference), ``.../stability`` (rank correlation with the last pass's
    maps), focus statistics and ``<name>/time_s``; ``score_keys()`` lists them. Masks given as named regions
    (``{"object": ..., "cue": ...}``) are scored per region, ``.../<metric>/<region>``. Each pass is logged once, from
    rank zero, at ``<name>/epoch`` (the training epoch explained; ``-1`` before training), with pictures of the
    first ``panel_size`` samples (masks outlined), the perturbation curves against a random order and a W&B
    per-sample table; without an image logger, PNGs under the log dir. ``last_panel`` keeps what they showed.

    Every validation epoch carries the last explained scores to ``callback_metrics``, so ``ModelCheckpoint`` and
    ``EarlyStopping`` find their key at every epoch; a score that cannot be computed is NaN. How to watch them
    (``every_n_epochs``, NaN, stopping on an alert), the sanity scores and the pixel maps in detail: docs/monitor.md.

    Args:
        explainers: registry names, or ``{name: options}``.
        metrics: metric names, or ``{name: options}`` (e.g. ``{"deletion": {"steps": 5}}`` halves its cost); mask
            metrics are skipped when the batches carry no masks.
        num_samples: size of the held-out set: the first validation samples (split over ranks), or the first
            samples of ``dataloader``.
        panel_size: rows of the heatmap panel.
        every_n_epochs: explain the first validation epoch, then every n-th.
        target: explain the predicted class (``"pred"``) or the label (``"label"``).
        model_attribute: where the timm model is inside the LightningModule, a dotted path such as
            ``"nets.student"`` (found automatically when unique); a model wrapped by ``torch.compile`` is
            explained through its original module.
        batch_size: images per pass over the model (explainers, clean forward, perturbed images): the memory bound.
        on_error: ``"warn"``: a fault at run time is skipped with one warning and the run goes on; ``"raise"``: it
            stops the run (configuration mistakes always raise, before training).
        batch_to_inputs: ``batch -> (images, labels, masks or None)`` for batches of another shape (a module-level
            function under ``strategy="ddp_spawn"``: lambdas do not pickle).
        dataloader: a held-out set of your own instead of the validation batches: its first ``num_samples`` samples
            (batches through ``batch_to_inputs``), read once at the first explained epoch. Sample ``g`` is explained
            on rank ``g % world_size``; every rank reads the loader itself (no ``DistributedSampler`` is added).
        per_map_scale: scale each drawn map to its own range; by default all maps of one explainer in one pass
            share a colour scale, shown by a colour bar, so rows and epochs compare.
        pixel_maps: draw the explainers with a pixel map of their own (``X.get_info(name).pixel_map``) at the
            pixels, signed, instead of their patch maps upsampled; the scores always use the patch maps.
        sanity: log ``<name>/<explainer>/randomization`` (Spearman with the first pass's maps: near 1 after
            training means the maps ignore what was learned) and ``.../class_sensitivity`` (1 - Spearman between
            the maps of the explained and the runner-up class). Costs one more explanation of the panel per pass.
        name: prefix of every logged key, of the picture tags and of the state key; give each monitor its own
            when a Trainer has several (two models, or two configurations).
        class_names: class index -> name, for captions and tables; by default the datamodule's or the validation
            dataset's ``classes`` attribute when there is one (torchvision's convention), else class numbers.
        alerts: ``{score key: rule}`` (``callbacks.alerts``: ``{"below": x}``, ``{"above": x}`` or
            ``{"worse_than_best_by": d}``, optional ``"patience": k``); a rule that fires warns, goes to W&B
            (``wandb.alert``) and TensorBoard (text), and counts in ``<name>/alerts``.
        save_passes: save every explained pass (maps as tensors, pictures, manifest) under
            ``<log dir>/<name>_passes/``, for ``lightning_vitx.loggers.load_passes``.
        reference_curves: score random maps (seeded by sample id) beside the explainers: the floor scores and the
            curves' dashed line; ``False`` saves their forwards (one curve per sample and perturbation metric).

    Example::

        >>> from lightning_vitx.callbacks import ExplainabilityMonitor
        >>> monitor = ExplainabilityMonitor(explainers=["rollout", "gradcam"], metrics=["deletion"], num_samples=8)
        >>> monitor.explainer_names
        ['rollout', 'gradcam']
    """

    def __init__(
        self,
        explainers: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("rollout", "gradcam", "generic_attention"),
        metrics: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("deletion", "insertion", "pointing_game"),
        num_samples: int = 16,
        panel_size: int = 8,
        every_n_epochs: int = 1,
        target: Literal["pred", "label"] = "pred",
        model_attribute: str | None = None,
        batch_size: int = 16,
        on_error: Literal["warn", "raise"] = "warn",
        batch_to_inputs: Callable[[Any], Inputs] | None = None,
        dataloader: DataLoader | None = None,
        name: str = "explain",
        per_map_scale: bool = False,
        class_names: Sequence[str] | None = None,
        pixel_maps: bool = False,
        sanity: bool = True,
        alerts: Mapping[str, Mapping[str, Any]] | None = None,
        save_passes: bool = False,
        reference_curves: bool = True,
    ) -> None:
        self.explainer_options = named_options(explainers, X.get_info)  # unknown names fail here, with the choices
        self.metric_options = named_options(metrics, M.get_info)
        self.metric_names = list(self.metric_options)
        check_monitor_options(
            num_samples=num_samples,
            panel_size=panel_size,
            every_n_epochs=every_n_epochs,
            batch_size=batch_size,
            target=target,
            on_error=on_error,
            dataloader=dataloader,
            name=name,
            class_names=class_names,
            model_attribute=model_attribute,
        )
        self.name = name
        self.per_map_scale = bool(per_map_scale)
        self.pixel_maps = bool(pixel_maps)
        self.sanity = bool(sanity)
        self.alerts = AlertRules(alerts or {}, partial(higher_is_better, prefix=name))  # picklable: ddp_spawn
        self.save_passes = bool(save_passes)
        self.reference_curves = bool(reference_curves)
        self._sanity_reference: dict[str, Tensor] = {}  # from a checkpoint, until setup builds the states
        self.class_names = None if class_names is None else list(class_names)
        self.num_samples = num_samples
        self.panel_size = panel_size
        self.every_n_epochs = every_n_epochs
        self.target = target
        self.model_attribute = model_attribute
        self.batch_size = batch_size
        self.on_error = on_error
        self.batch_to_inputs = batch_to_inputs or default_batch_to_inputs
        self.dataloader = dataloader
        self.held_out = HeldOut(strict=on_error == "raise")
        self.last_maps: dict[str, Tensor] = {}
        self.history: list[dict[str, float]] = []  # per explained epoch: {"epoch": e, "<name>/...": score}
        self._checked = False  # the first batch's inputs were checked
        self.regions: list[str] | None = None  # the masks' named regions, from the first batch (None: unread)
        self._collecting = False
        self._explained_epochs = 0
        self._failed: set[str] = set()  # explainers disabled on every rank
        self._warn_once = WarnOnce(name)
        self.last_panel: PanelRows | None = None  # what the last panel showed (the same on every rank)
        self.sanity_scores: SanityScores | None = None

    @property
    def explainer_names(self) -> list[str]:
        return list(self.explainer_options)

    @property
    def samples(self) -> dict[str, Tensor | None]:
        """The held-out samples this rank explains: ``ids``, ``images``, ``labels``, ``masks`` (CPU tensors)."""
        return self.held_out.samples

    @property
    @override
    def state_key(self) -> str:
        """Name, explainers, metrics (and ``model_attribute``): distinct monitors, distinct states.

        A checkpoint made with other settings is matched in ``on_load_checkpoint``.
        """
        return self._generate_state_key(**state_key_parts(self))

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """A monitor state saved under another key (other settings): restored if it is the only unclaimed one."""
        claimed = {callback.state_key for callback in trainer.callbacks}  # type: ignore[attr-defined]
        key, message = unclaimed_state(checkpoint, self.state_key, type(self).__qualname__, claimed)
        if message:
            self._warn_once("resume/key", message)
        if key is not None:
            self.load_state_dict(checkpoint["callbacks"][key])

    def score_keys(self) -> list[str]:
        """Every key this monitor logs (``_settings.score_keys`` lists and explains them)."""
        return monitor_score_keys(self)

    # -- setup: configuration mistakes fail here, before training -----------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.model = find_model(pl_module, self.model_attribute)
        try:
            X.create_many(self.explainer_options, self.model)  # unsupported models and bad options fail here
        except (TypeError, ValueError) as error:
            raise MonitorConfigError(f"ExplainabilityMonitor(explainers=...): {error}") from None
        options, device = self.metric_options, pl_module.device
        floor, regions = self.reference_curves, self.regions or ()
        self.scoring = Scoring(self.explainer_names, options, device, self.batch_size, reference=floor, regions=regions)
        self.sanity_scores = SanityScores(self.explainer_names, pl_module.device) if self.sanity else None
        if self.sanity_scores is not None:
            self.sanity_scores.restore(self._sanity_reference)
        check_logged_keys(self, trainer)
        check_setup(self, trainer)
        # one PassLogger for the monitor's life: validate() then fit() extend one W&B sample table, not two
        if getattr(self, "pass_logger", None) is None:
            self.pass_logger = PassLogger(self.name)
        if trainer.is_global_zero:
            self.class_names = self.class_names or find_class_names(trainer)
            self.pass_logger.record_settings(trainer, self.settings())
            axes = score_axes(self.name, self.explainer_names, self.metric_names, self.sanity)
            self.pass_logger.define_axes(trainer, axes)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Without a sanity check (num_sanity_val_steps=0) the first validation batch comes after an epoch of
        # training: read one batch now, so a configuration mistake fails before the first step.
        if not self._checked and len(self.held_out) == 0 and not trainer.num_sanity_val_steps:
            first = first_validation_batch(trainer, pl_module, self.dataloader)
            if first is not None:  # an empty validation loader: Lightning warns; nothing to check here
                self._inputs(first)

    def _inputs(self, batch: Any) -> Inputs:
        """``batch_to_inputs(batch)``, checked; the first batch's mistakes raise MonitorConfigError."""
        inputs = read_inputs(self.batch_to_inputs, batch, needs_labels=self.target == "label")
        if not self._checked:  # the first batch names the regions scored
            self.regions = region_names(inputs[2])
            check_alert_keys(self.alerts, self.score_keys())
        self._checked = True
        return inputs

    def settings(self) -> dict[str, Any]:
        """The settings the loggers record: every option resolved, the package version, the model once set up."""
        return monitor_settings(self, getattr(self, "model", None))

    # -- collecting the held-out set -------------------------------------------------------------------------
    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collecting = self.dataloader is None and not trainer.sanity_checking and len(self.held_out) == 0

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0 or not (self._collecting or not self._checked):
            return
        first = not self._checked  # the first batch (sanity check included): mistakes fail here
        try:
            images, labels, masks = self._inputs(batch)
        except MonitorConfigError as error:  # a later batch unlike the first: a data fault
            if first or self.on_error == "raise":
                raise
            self._warn_once("batch", f"a validation batch was skipped: {error}")
            return
        if self._collecting:
            limit = min(self.num_samples, dataset_length(trainer) or self.num_samples)
            rank, world = trainer.global_rank, trainer.world_size
            self._collecting = self.held_out.add_validation_batch(rank, world, limit, images, labels, masks)

    # -- every validation epoch --------------------------------------------------------------------------------
    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collecting = False
        if trainer.sanity_checking:
            return
        # the same answer on every rank: the first validation epoch, then every every_n_epochs-th
        if self._explained_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs:
            log_scores(pl_module, self.score_keys(), self.history[-1] if self.history else {})
            return
        if self.dataloader is not None and len(self.held_out) == 0:
            rank, world = trainer.global_rank, trainer.world_size
            collect_from_loader(self.held_out, self.dataloader, self._inputs, self.num_samples, rank, world)
        start, scoring = time.perf_counter(), self.scoring
        scoring.set_regions(self.regions or [])
        this = start_pass(self, trainer, pl_module.device)  # this pass as one value
        maps, failed_here = explain_held_out(this)
        self._failed, scores = score_pass(trainer, this, maps, failed_here, scoring=scoring, sanity=self.sanity_scores)
        self._explained_epochs += 1
        scores[f"{self.name}/time_s"] = time.perf_counter() - start
        epoch = explained_epoch(trainer)
        raise_alerts(trainer, self.alerts, scores, epoch, self.pass_logger)
        log_scores(pl_module, self.score_keys(), scores)
        self.history.append({"epoch": float(epoch), **finite(scores)})
        maps = {name: m for name, m in maps.items() if name not in self._failed}
        probabilities, sample_scores = scoring.probabilities, scoring.sample_scores
        # collectives, every rank: the panel's rows are gathered, the log dir is broadcast
        self.last_panel = gather_panel(trainer, this, maps, probabilities=probabilities, sample_scores=sample_scores)
        if trainer.is_global_zero and self.last_panel is not None:
            self.class_names = self.class_names or find_class_names(trainer)
        ended = replace(this, class_names=self.class_names, disabled=frozenset(self._failed))
        record = PassRecord(epoch, trainer.global_step, finite(scores))
        log_pass(trainer, ended, record, self.pass_logger, panel=self.last_panel, scoring=scoring)
        self.last_maps = {name: m.cpu() for name, m in maps.items()}

    # -- checkpoints -----------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return monitor_state(self)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the held-out set, last maps and history, reconciled with this monitor's settings (``restore``)."""
        load_monitor_state(self, state_dict)
