"""ExplainabilityMonitor: explain a fixed held-out set every validation epoch, score it, log scores and pictures."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric, Metric

import lightning_vitx.explainers as X
import lightning_vitx.metrics as M
from lightning_vitx._state import eval_mode
from lightning_vitx.adapters import detect
from lightning_vitx.loggers import curves_figure, log_figure, log_table

__all__ = ["ExplainabilityMonitor"]

Inputs = tuple[Tensor, Tensor | None, Tensor | None]


def default_batch_to_inputs(batch: Any) -> Inputs:
    """``(images, labels[, masks])`` from a tuple/list, or a dict with image(s)/label(s)/target/mask(s) keys."""
    if isinstance(batch, Mapping):

        def pick(*keys: str) -> Tensor | None:
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
        raise TypeError(
            "ExplainabilityMonitor could not find images [B, C, H, W] in the batch; pass "
            "batch_to_inputs=lambda batch: (images, labels, masks_or_None)"
        )
    return images, labels, masks if isinstance(masks, Tensor) else None


def spearman_per_sample(a: Tensor, b: Tensor) -> Tensor:
    """Rank correlation of two ``[B, gh, gw]`` map batches, per sample (ties ranked by position)."""

    def ranks(x: Tensor) -> Tensor:
        r = x.flatten(1).argsort(dim=1, stable=True).argsort(dim=1).float()
        return r - r.mean(dim=1, keepdim=True)

    ra, rb = ranks(a), ranks(b)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


_MAX_ROW_DIMS = 4  # _gather_rows: rows are at most [n, C, H, W]


def _gather_rows(
    trainer: Trainer, rows: Mapping[str, Tensor | None], size: int, device: torch.device
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Every rank's rows on every rank, through padded ``all_gather`` calls that all ranks make in the same order.

    Call it on every rank, with the same keys in the same order: ``[n, ...]`` tensors with ``n <= size``, or None
    where this rank has none. A first gather of the shapes tells every rank the trailing shape of each key (a rank
    without rows does not know it) and which keys nobody holds (skipped everywhere). Rows travel as float32, padded
    to ``size``; works without a process group too (one rank).

    Returns:
        ``{key: [world * size, ...]}`` float32 on the CPU, rank r's rows at ``r * size``, for every key some rank
        holds; and ``{key: [world * size]}`` masks of the real rows (not padding, not missing on their rank).
    """
    world = trainer.world_size

    def all_gather(tensor: Tensor) -> Tensor:  # [world, *tensor.shape]; Lightning adds no dim on one device
        return trainer.strategy.all_gather(tensor).reshape(world, *tensor.shape).cpu()

    header = torch.full((len(rows), 1 + _MAX_ROW_DIMS), -1, dtype=torch.long)  # per key: rows, then trailing shape
    for k, value in enumerate(rows.values()):
        header[k, 0] = 0 if value is None else value.shape[0]
        if value is not None and value.ndim > 1:
            header[k, 1 : value.ndim] = torch.tensor(value.shape[1:])
    headers = all_gather(header.to(device))  # [world, keys, 1 + _MAX_ROW_DIMS]
    gathered, valid = {}, {}
    for k, (key, value) in enumerate(rows.items()):
        counts = headers[:, k, 0]
        shapes = headers[counts > 0, k, 1:]
        if shapes.shape[0] == 0:  # nobody holds this key: every rank skips the same gather
            continue
        if (shapes != shapes[0]).any():  # raised on every rank alike: no rank is left waiting in a collective
            raise ValueError(f"held-out {key!r} have different shapes across ranks: {shapes.tolist()}")
        padded = torch.zeros(size, *[d for d in shapes[0].tolist() if d >= 0], device=device)
        if value is not None:
            padded[: value.shape[0]] = value.detach()
        gathered[key] = all_gather(padded).flatten(0, 1)
        valid[key] = (torch.arange(size)[None] < counts[:, None]).flatten()
    return gathered, valid


@dataclass
class PanelRows:
    """The first ``panel_size`` held-out samples by global id, gathered from every rank for the panel and table."""

    ids: Tensor  # [P] global sample ids, ascending
    images: Tensor  # [P, C, H, W] as the model takes them
    labels: Tensor | None  # [P]
    probabilities: Tensor  # [P, classes] from the clean forward of _score
    maps: dict[str, Tensor]  # explainer -> [P, gh, gw]
    scores: dict[str, Tensor]  # "explainer/metric" -> [P]


class ExplainabilityMonitor(Callback):
    """Every ``every_n_epochs`` validation epoch: explain a fixed held-out set, score it, log scores and panels.

    Scores go through ``pl_module.log`` as ``explain/<explainer>/<metric>`` (synced across ranks, so
    ``ModelCheckpoint(monitor="explain/rollout/deletion")`` works), plus ``explain/<explainer>/stability`` (rank
    correlation with the previous epoch's maps) and ``explain/time_s``. Global rank zero logs a heatmap panel of the
    first ``panel_size`` samples by global id (gathered from every rank) to TensorBoard / W&B, or writes PNGs under
    the log dir when no image logger is attached; ``last_panel`` keeps what it showed.

    Args:
        explainers: registry names, or ``{name: options}``.
        metrics: metric names, or ``{name: options}`` (e.g. ``{"deletion": {"steps": 5}}`` halves its cost); mask
            metrics are skipped when the batches carry no masks.
        num_samples: size of the held-out set: the first validation samples (split over ranks), or the first
            samples of ``dataloader``.
        panel_size: rows of the heatmap panel.
        every_n_epochs: explain every n-th validation epoch.
        target: explain the predicted class (``"pred"``) or the label (``"label"``).
        model_attribute: name of the timm model inside the LightningModule (found automatically when unique).
        batch_size: images per explaining pass.
        on_error: ``"warn"`` (once per explainer, the run goes on) or ``"raise"``.
        batch_to_inputs: ``batch -> (images, labels, masks or None)`` for batches of another shape (a module-level
            function under ``strategy="ddp_spawn"``: lambdas do not pickle).
        dataloader: a held-out set of your own instead of the validation batches: its first ``num_samples`` samples
            (batches through ``batch_to_inputs``), read once at the first explained epoch. Sample ``g`` is explained
            on rank ``g % world_size``; every rank reads the loader itself (no ``DistributedSampler`` is added).

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
    ) -> None:
        self.explainer_options = (
            {name: dict(options) for name, options in explainers.items()}
            if isinstance(explainers, Mapping)
            else {name: {} for name in explainers}
        )
        for name in self.explainer_options:
            X.get_info(name)  # unknown names fail here, with the choices
        self.metric_options = (
            {name: dict(options) for name, options in metrics.items()}
            if isinstance(metrics, Mapping)
            else {name: {} for name in metrics}
        )
        self.metric_names = list(self.metric_options)
        for name in self.metric_names:
            M.get_info(name)
        for option, value in [
            ("num_samples", num_samples),
            ("panel_size", panel_size),
            ("every_n_epochs", every_n_epochs),
            ("batch_size", batch_size),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a positive int, got {value!r}")
        if target not in ("pred", "label"):
            raise ValueError(f"target must be 'pred' or 'label', got {target!r}")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        if dataloader is not None and not isinstance(dataloader, DataLoader):
            raise TypeError(
                f"dataloader must be a torch.utils.data.DataLoader or None, got {type(dataloader).__name__}; "
                "wrap the held-out dataset: dataloader=DataLoader(dataset, batch_size=...)"
            )
        self.num_samples = num_samples
        self.panel_size = panel_size
        self.every_n_epochs = every_n_epochs
        self.target = target
        self.model_attribute = model_attribute
        self.batch_size = batch_size
        self.on_error = on_error
        self.batch_to_inputs = batch_to_inputs or default_batch_to_inputs
        self.dataloader = dataloader
        self.samples: dict[str, Tensor | None] = {}
        self.last_maps: dict[str, Tensor] = {}
        self._collecting = False
        self._explained_epochs = 0
        self.history: list[dict[str, float]] = []  # per explained epoch: {"epoch": e, "explain/...": score}
        self._failed: set[str] = set()
        self._sample_scores: dict[str, Tensor] = {}
        self._probabilities: Tensor | None = None
        self._curves: dict[str, dict[str, Any]] = {}
        self._metrics: dict[str, dict[str, Metric]] = {}
        self._stability: dict[str, MeanMetric] = {}
        self.last_panel: PanelRows | None = None  # what the last panel showed (the same on every rank)

    @property
    def explainer_names(self) -> list[str]:
        return list(self.explainer_options)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(explainers=self.explainer_names, metrics=self.metric_names)

    # -- finding the model -------------------------------------------------------------------------------------
    def find_model(self, pl_module: LightningModule) -> nn.Module:
        """The timm model inside the LightningModule: ``model_attribute`` or the unique supported submodule."""
        if self.model_attribute is not None:
            model = getattr(pl_module, self.model_attribute, None)
            if not isinstance(model, nn.Module):
                raise ValueError(f"the LightningModule has no module attribute {self.model_attribute!r}")
            detect(model)
            return model
        found = []
        for name, module in pl_module.named_children():
            try:
                detect(module)
            except (TypeError, ValueError):
                continue
            found.append((name, module))
        if len(found) != 1:
            names = [name for name, _ in found]
            raise ValueError(
                f"ExplainabilityMonitor needs exactly one timm vision transformer attribute on the LightningModule, "
                f"found {names or 'none'}; name it with ExplainabilityMonitor(model_attribute=...)"
            )
        return found[0][1]

    # -- lifecycle -------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.model = self.find_model(pl_module)
        device = pl_module.device
        self._metrics = {
            explainer: {name: M.create(name, **self.metric_options[name]).to(device) for name in self.metric_names}
            for explainer in self.explainer_names
        }
        self._stability = {explainer: MeanMetric().to(device) for explainer in self.explainer_names}
        if trainer.is_global_zero:
            self._record_config(trainer)

    def settings(self) -> dict[str, Any]:
        """The monitor's settings, as recorded in the W&B run config so runs can be compared."""
        return {
            "explainers": self.explainer_options,
            "metrics": self.metric_options,
            "num_samples": self.num_samples,
            "every_n_epochs": self.every_n_epochs,
            "target": self.target,
        }

    def _record_config(self, trainer: Trainer) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"explainability_monitor": self.settings()}, allow_val_change=True)

    def _due(self, trainer: Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collecting = self.dataloader is None and not trainer.sanity_checking and not self.samples

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._collecting or dataloader_idx != 0:
            return
        images, labels, masks = self.batch_to_inputs(batch)
        # Lightning shards validation with an unshuffled DistributedSampler: rank r's i-th sample is global id
        # r + i * world_size. Keeping ids below the limit gives every rank its exact share of the first
        # num_samples (uneven when they don't divide) and drops the sampler's padding duplicates.
        world, rank = trainer.world_size, trainer.global_rank
        limit = min(self.num_samples, self._dataset_length(trainer) or self.num_samples)
        quota = len(range(rank, limit, world))
        have = 0 if not self.samples else int(self.samples["images"].shape[0])  # type: ignore[union-attr]
        take = min(quota - have, images.shape[0])
        if take <= 0:
            self._collecting = False
            return
        self._keep(rank + (have + torch.arange(take)) * world, slice(0, take), images, labels, masks)

    def _collect_from_loader(self, rank: int, world: int) -> None:
        """The first ``num_samples`` samples of ``dataloader``: this rank keeps global ids ``g % world == rank``."""
        assert self.dataloader is not None
        seen = 0
        for batch in self.dataloader:
            images, labels, masks = self.batch_to_inputs(batch)
            ids = seen + torch.arange(min(images.shape[0], self.num_samples - seen))
            mine = ids[ids % world == rank]
            if mine.numel() > 0:
                self._keep(mine, mine - seen, images, labels, masks)
            seen += ids.numel()
            if seen >= self.num_samples:
                break

    def _keep(
        self, ids: Tensor, rows: slice | Tensor, images: Tensor, labels: Tensor | None, masks: Tensor | None
    ) -> None:
        """Append ``images[rows]`` (and their labels, masks) to the held-out set under global ``ids``, in id order."""
        with torch.inference_mode(False):  # keep plain copies, not inference tensors
            new: dict[str, Tensor | None] = {"ids": ids.cpu().clone()}
            for key, value in [("images", images), ("labels", labels), ("masks", masks)]:
                new[key] = None if value is None else value[rows].detach().cpu().clone()
        for key, part in new.items():
            old = self.samples.get(key)
            self.samples[key] = part if old is None or part is None else torch.cat([old, part])

    @staticmethod
    def _dataset_length(trainer: Trainer) -> int | None:
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
        try:
            return len(dataset)  # type: ignore[arg-type]
        except TypeError:
            return None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collecting = False
        if not self._due(trainer):  # the same answer on every rank: no collective is skipped on one rank only
            return
        if self.dataloader is not None and not self.samples:
            self._collect_from_loader(trainer.global_rank, trainer.world_size)
        start = time.perf_counter()
        show = trainer.is_global_zero and trainer.progress_bar_callback is not None
        maps = self._explain(pl_module, show) if self.samples else {}  # a rank may hold no held-out sample
        with torch.inference_mode(False):  # metric states must stay normal tensors across resets and updates
            self._score(pl_module, maps)
        self._explained_epochs += 1
        pl_module.log("explain/time_s", time.perf_counter() - start, sync_dist=True, reduce_fx="max")
        self.last_panel = self._gather_panel(trainer, pl_module, maps)  # collectives: every rank, always
        # trainer.log_dir broadcasts under DDP: every rank resolves it, then only rank zero draws.
        picture_dir = os.path.join(trainer.log_dir or trainer.default_root_dir, "explanations")
        if trainer.is_global_zero and self.last_panel is not None:
            self._log_panel(trainer, self.last_panel, picture_dir)
        self.last_maps = {name: m.cpu() for name, m in maps.items()}

    # -- work -----------------------------------------------------------------------------------------------
    def _explain(self, pl_module: LightningModule, progress: bool = False) -> dict[str, Tensor]:
        """Maps for every held-out sample, one capture pass per batch for all explainers.

        When the shared pass raises, the explainers run one by one to find which fails; that one is disabled
        with a warning (``on_error="warn"``) or the error surfaces (``"raise"``).
        """
        from tqdm.auto import tqdm

        images, labels = self.samples["images"], self.samples["labels"]
        assert images is not None
        out: dict[str, list[Tensor]] = {name: [] for name in self.explainer_names if name not in self._failed}
        bar = tqdm(total=images.shape[0], desc="Explaining", unit="img", leave=False, disable=not progress)
        group, names = None, []
        for start in range(0, images.shape[0], self.batch_size):
            if group is None or any(name in self._failed for name in names):  # built once, again after a failure
                names = [name for name in out if name not in self._failed]
                if not names:
                    break
                group = X.create_many({name: self.explainer_options[name] for name in names}, self.model)
            chunk = images[start : start + self.batch_size].to(pl_module.device)
            target = None
            if self.target == "label" and labels is not None:
                target = labels[start : start + self.batch_size].to(pl_module.device)
            try:
                maps = group(chunk, target)
            except Exception:  # noqa: BLE001 - find the failing explainer below
                if self.on_error == "raise" and len(names) == 1:
                    raise
                maps = {}
                for name, explainer in group.explainers.items():
                    try:
                        maps[name] = explainer(chunk, target)
                    except Exception as error:  # noqa: BLE001 - an explainer must not stop the run unless asked
                        if self.on_error == "raise":
                            raise
                        self._failed.add(name)
                        warnings.warn(
                            f"ExplainabilityMonitor: explainer {name!r} failed and is disabled: {error!r}",
                            stacklevel=2,
                        )
            for name, explanation in maps.items():
                out[name].append(explanation)
            bar.update(chunk.shape[0])
        bar.close()
        return {name: torch.cat(chunks) for name, chunks in out.items() if name not in self._failed and chunks}

    def _score(self, pl_module: LightningModule, maps: dict[str, Tensor]) -> None:
        device = pl_module.device
        images = self.samples.get("images")
        labels, masks = self.samples.get("labels"), self.samples.get("masks")
        self._probabilities = None
        if images is not None:  # one clean forward: the class every metric scores, and the panel's captions
            with torch.no_grad(), eval_mode(self.model):
                self._probabilities = self.model(images.to(device)).float().softmax(dim=1)
        target = None
        if self._probabilities is not None:
            use_labels = self.target == "label" and labels is not None
            target = labels.to(device) if use_labels else self._probabilities.argmax(dim=1)  # type: ignore[union-attr]
        self._sample_scores = {}
        self._curves = {}
        for explainer, explanation in maps.items():
            assert images is not None
            for name, metric in self._metrics[explainer].items():
                if masks is not None or not M.get_info(name).needs_masks:
                    metric.update(
                        self.model, images.to(device), explanation, target, None if masks is None else masks.to(device)
                    )
                    sample_scores = getattr(metric, "last_sample_scores", None)
                    if isinstance(sample_scores, Tensor):
                        self._sample_scores[f"{explainer}/{name}"] = sample_scores.cpu()
            if explainer in self.last_maps:
                previous = self.last_maps[explainer].to(device)
                self._stability[explainer].update(spearman_per_sample(explanation, previous))
        logged: dict[str, float] = {"epoch": float(pl_module.current_epoch)}
        # Every rank computes every metric (collectives inside), whatever it explained; a score nobody
        # could compute (no masks anywhere, a failed explainer) is NaN on every rank and is not logged.
        for explainer in self.explainer_names:
            with warnings.catch_warnings():  # a rank without samples, or a disabled explainer, has no update
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                results = {name: metric.compute() for name, metric in self._metrics[explainer].items()}
                scores = {name: result["score"] for name, result in results.items()}
                if self._explained_epochs > 0:
                    scores["stability"] = self._stability[explainer].compute()
            for name, value in scores.items():
                if torch.isfinite(value):
                    # Already synced by torchmetrics; sync_dist averages equal values (and keeps Lightning quiet).
                    pl_module.log(f"explain/{explainer}/{name}", value.float(), sync_dist=True)
                    logged[f"explain/{explainer}/{name}"] = float(value)
            for name, result in results.items():
                if "curve" in result and torch.isfinite(result["curve"]).all():
                    x, y = result["fractions"].cpu().numpy(), result["curve"].cpu().numpy()
                    self._curves.setdefault(name, {})[explainer] = (x, y)
            for metric in [*self._metrics[explainer].values(), self._stability[explainer]]:
                metric.reset()
        self.history.append(logged)

    def _gather_panel(self, trainer: Trainer, pl_module: LightningModule, maps: dict[str, Tensor]) -> PanelRows | None:
        """The first ``panel_size`` held-out samples by global id, with what the panel and table show, from all ranks.

        Call it on every rank (it gathers). Each rank sends its first ``panel_size`` rows (its smallest ids); an
        explainer, label or score column is kept when every shown row has it. None when no rank holds a sample.
        """
        score_keys = [f"{explainer}/{metric}" for explainer in self.explainer_names for metric in self.metric_names]
        rows: dict[str, Tensor | None] = dict.fromkeys(["ids", "images", "labels", "probabilities"])
        rows.update({f"map/{name}": None for name in self.explainer_names})
        rows.update({f"score/{key}": None for key in score_keys})
        if self.samples:
            first = slice(0, self.panel_size)  # rows are kept in ascending id order
            for key in ("ids", "images", "labels"):
                value = self.samples.get(key)
                rows[key] = None if value is None else value[first]
            rows["probabilities"] = None if self._probabilities is None else self._probabilities[first]
            rows.update({f"map/{name}": explanation[first] for name, explanation in maps.items()})
            rows.update({f"score/{key}": scores[first] for key, scores in self._sample_scores.items()})
        gathered, valid = _gather_rows(trainer, rows, self.panel_size, pl_module.device)
        if "ids" not in gathered or "probabilities" not in gathered:
            return None
        real = valid["ids"].nonzero()[:, 0]
        shown = real[gathered["ids"][real].argsort()][: self.panel_size]

        def column(key: str) -> Tensor | None:
            return gathered[key][shown] if key in gathered and bool(valid[key][shown].all()) else None

        labels = column("labels")
        panel_maps = {name: column(f"map/{name}") for name in self.explainer_names}
        panel_scores = {key: column(f"score/{key}") for key in score_keys}
        return PanelRows(
            ids=gathered["ids"][shown].long(),
            images=gathered["images"][shown],
            labels=None if labels is None else labels.long(),
            probabilities=gathered["probabilities"][shown],
            maps={name: m for name, m in panel_maps.items() if m is not None},
            scores={key: s for key, s in panel_scores.items() if s is not None},
        )

    def _log_panel(self, trainer: Trainer, panel: PanelRows, picture_dir: str) -> None:
        from lightning_vitx.rendering import model_mean_std, panel_figure

        predicted = panel.probabilities.argmax(1)
        captions = []
        for i, p in enumerate(predicted.tolist()):
            label = f"label {int(panel.labels[i])}, " if panel.labels is not None else ""
            captions.append(f"{label}pred {p} ({panel.probabilities[i, p]:.2f})")
        mean, std = model_mean_std(self.model)
        figure = panel_figure(panel.images, panel.maps, mean, std, captions)
        log_figure(trainer, "explain/panel", figure, trainer.global_step, picture_dir)
        if self._curves:
            log_figure(trainer, "explain/curves", curves_figure(self._curves), trainer.global_step, picture_dir)
        self._log_table(trainer, panel, mean, std)

    def _log_table(self, trainer: Trainer, panel: PanelRows, mean: Sequence[float], std: Sequence[float]) -> None:
        """One row per shown sample: id, image, label, prediction, one overlay per explainer, each per-sample score."""
        from lightning_vitx.rendering import denormalize, overlay

        def to_uint8(rgb: Tensor) -> Any:
            return (rgb.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()

        pictures = to_uint8(denormalize(panel.images, mean, std))
        overlays = {name: to_uint8(overlay(panel.images, m, mean, std)) for name, m in panel.maps.items()}
        score_keys = sorted(panel.scores)
        columns = ["sample", "image", "label", "prediction", "probability", *panel.maps, *score_keys]
        rows = []
        for i, sample_id in enumerate(panel.ids.tolist()):
            p = int(panel.probabilities[i].argmax())
            label = None if panel.labels is None else int(panel.labels[i])
            row = [sample_id, pictures[i], label, p, float(panel.probabilities[i, p])]
            row += [overlays[name][i] for name in panel.maps]
            row += [float(panel.scores[key][i]) for key in score_keys]
            rows.append(row)
        log_table(trainer, "explain/samples", columns, rows, trainer.global_step)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "samples": dict(self.samples),
            "last_maps": dict(self.last_maps),
            "failed": sorted(self._failed),
            "explained_epochs": self._explained_epochs,
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.samples = dict(state_dict.get("samples", {}))
        self.last_maps = dict(state_dict.get("last_maps", {}))
        self._failed = set(state_dict.get("failed", []))
        self._explained_epochs = int(state_dict.get("explained_epochs", 0))
        self.history = list(state_dict.get("history", []))
