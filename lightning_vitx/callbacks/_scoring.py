"""The monitor's scores: one torchmetrics state per explainer and metric, updated ``batch_size`` images at a time."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric

import lightning_vitx.explainers as X
import lightning_vitx.metrics as M
from lightning_vitx._batching import chunks
from lightning_vitx._state import eval_mode
from lightning_vitx.analysis import FOCUS_STATISTICS, focus_statistics, rank_correlation
from lightning_vitx.callbacks._curves import stream_curves
from lightning_vitx.callbacks._explaining import ExplainingRun
from lightning_vitx.callbacks._held_out import region_masks
from lightning_vitx.callbacks._settings import metric_keys
from lightning_vitx.metrics import DEGENERATE_KINDS, as_masks, degenerate_maps

# The monitor counts degenerate maps itself (per reason, logged) and warns once per explainer; the metrics' own
# per-batch warning is kept for NaN or inf only, as before.
_METRIC_DEGENERATE_WARNING = r"(?!.*NaN or inf).*maps are (all zero|constant)"

__all__ = ["RANDOM", "Scoring"]

RANDOM = "random"  # the random maps' owner in the failed keys: "random/<metric key>"


def _create(name: str, options: Mapping[str, Any], batch_size: int) -> Metric:
    """The metric, its perturbed images evaluated ``batch_size`` at a time unless the options say otherwise."""
    metric = M.create(name, **options)
    if "max_batch" not in options and isinstance(getattr(metric, "max_batch", None), int):
        metric.max_batch = batch_size
    return metric


class _ScoredRows:
    """The held-out rows and masks each metric key scores, and the update of a metric with them.

    Every row for a metric without masks; for a mask metric the rows with its mask: the one unnamed mask, or for
    ``<metric>/<region>`` the rows where that region is not empty (the others are skipped, with one warning).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        images: Tensor,
        target: Tensor,
        masks: Tensor | None,
        regions: Mapping[str, Tensor],
        warn: Any,
    ) -> None:
        self.model, self.images, self.target, self.masks, self.regions, self.warn = (
            model,
            images,
            target,
            masks,
            regions,
            warn,
        )
        self._selected: dict[str, tuple[Tensor | None, Tensor | None] | None] = {}

    def select(self, key: str) -> tuple[Tensor | None, Tensor | None] | None:
        """``(rows, masks of those rows)``, ``rows`` None for all; None when the key has nothing to score."""
        if key not in self._selected:
            self._selected[key] = self._select(key)
        return self._selected[key]

    def _select(self, key: str) -> tuple[Tensor | None, Tensor | None] | None:
        name, _, region = key.partition("/")
        if not M.get_info(name).needs_masks:
            return None, None
        if not region:
            return None if self.masks is None else (None, self.masks)
        mask = self.regions.get(region)
        if mask is None:
            self.warn(
                f"region/{region}/missing",
                f"region {region!r} is missing from some held-out batches on this rank: {key!r} is not scored (NaN)",
            )
            return None
        present = as_masks(mask).flatten(1).any(dim=1)
        if not bool(present.all()):
            scored = "the others are" if bool(present.any()) else "nothing is (NaN)"
            self.warn(
                f"region/{region}/empty",
                f"region {region!r} is empty in {int((~present).sum())} of {present.numel()} held-out samples on "
                f"this rank: they are not scored for {key!r}, {scored}",
            )
        if not bool(present.any()):
            return None
        rows = None if bool(present.all()) else present.nonzero()[:, 0]
        return rows, mask if rows is None else mask[rows]

    def update(
        self,
        metric: Metric,
        key: str,
        maps: Tensor,
        streamed: Mapping[Any, Tensor],
        owner: str | None,
        device: torch.device,
        batch_size: int,
    ) -> Tensor | None:
        """Update ``metric`` with ``maps`` of its rows, ``batch_size`` at a time; its per-sample scores (or None)."""
        selected = self.select(key)
        if selected is None:
            return None
        rows, masks = selected
        images, target = self.images, self.target
        if rows is not None:
            images, maps, target = images[rows], maps[rows], target[rows]
        per_sample = []
        for index, (image, expl, tgt, mask) in enumerate(chunks(batch_size, images, maps, target, masks)):
            image, expl, tgt = image.to(device), expl.to(device), tgt.to(device)
            given = streamed.get((owner, key, index))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_METRIC_DEGENERATE_WARNING)
                if given is None:
                    metric.update(self.model, image, expl, tgt, None if mask is None else mask.to(device))
                else:
                    metric.update(self.model, image, expl, tgt, curves=given)
            scores = getattr(metric, "last_sample_scores", None)
            if isinstance(scores, Tensor):
                per_sample.append(scores.cpu())
        return torch.cat(per_sample) if per_sample else None


class Scoring:
    """Metric and stability states of one monitor; what the last update saw (probabilities, per-sample scores).

    ``update`` runs every pass over the model ``batch_size`` images at a time, so the monitor's memory follows
    ``batch_size``, not the held-out set's size: the clean forward, each baseline once, then the perturbed images
    of every explainer's curves and of the random order's in one stream (``_curves.stream_curves``; a metric whose
    options set its own ``max_batch`` keeps its own stream). The curves' ends come from the clean and baseline
    forwards, shared by every explainer. ``reference=False``: no random-order curves.
    """

    def __init__(
        self,
        explainers: Sequence[str],
        metric_options: Mapping[str, Mapping[str, Any]],
        device: torch.device,
        batch_size: int,
        *,
        reference: bool = True,
        regions: Sequence[str] = (),
    ) -> None:
        self.explainers, self.metric_options, self.device = list(explainers), dict(metric_options), device
        self.batch_size = batch_size
        self.metrics: dict[str, dict[str, Metric]] = {explainer: {} for explainer in explainers}
        # The random maps' scores (per sample, seeded by its id: the same on every rank and epoch): the floor
        # logged beside each score, and the curves' reference line.
        self.reference: dict[str, Metric] = {}
        self.with_reference = reference
        self.regions: list[str] = []
        self.set_regions(regions)
        self.stability = {explainer: MeanMetric().to(device) for explainer in explainers}
        # where relevance sits (analysis.focus_statistics), per explainer: no forward
        self.focus = {
            explainer: {stat: MeanMetric(nan_strategy="ignore").to(device) for stat in FOCUS_STATISTICS}
            for explainer in explainers
        }
        # map sum / seed for the explainers whose maps decompose the target's score (ExplainerInfo.relevance_seed)
        seeds = {explainer: X.get_info(explainer).relevance_seed for explainer in explainers}
        self.seeds = {explainer: seed for explainer, seed in seeds.items() if seed is not None}
        self.conservation = {explainer: MeanMetric(nan_strategy="ignore").to(device) for explainer in self.seeds}
        self.reference_curves: dict[str, Any] = {}  # metric -> (fractions, mean curve) of the random order
        self.probabilities: Tensor | None = None  # [N, classes] of the last update, this rank's samples
        self.sample_scores: dict[str, Tensor] = {}  # "explainer/metric" -> [N]
        self.curves: dict[str, dict[str, Any]] = {}  # metric -> explainer -> (fractions, mean curve)
        self.skipped_maps: dict[str, dict[str, int]] = {}  # explainer -> reason -> maps the metrics skipped
        self.explained_maps: dict[str, int] = {}  # explainer -> maps of the last update

    @property
    def failure_keys(self) -> list[str]:
        """Every key ``update`` may report failed, in one order on every rank (to agree on)."""
        owners = [*self.explainers, *([RANDOM] if self.reference else [])]
        return [f"{owner}/{key}" for owner in owners for key in self.keys]

    @property
    def keys(self) -> list[str]:
        """The metric keys: ``<metric>``, or ``<metric>/<region>`` for a mask metric and named regions."""
        return metric_keys(list(self.metric_options), self.regions)

    def set_regions(self, regions: Sequence[str]) -> None:
        """Score the mask metrics per named region (``[]``: against the one unnamed mask); call it on every rank.

        The states of keys no longer scored are dropped; those kept keep their state.
        """
        self.regions = list(regions)
        for owner in [*self.metrics.values(), *([self.reference] if self.with_reference else [])]:
            kept = {key: owner[key] for key in self.keys if key in owner}
            owner.clear()
            for key in self.keys:
                name = key.partition("/")[0]
                if key not in kept:  # normal tensors, also when called inside validation's inference mode
                    with torch.inference_mode(False):
                        kept[key] = _create(name, self.metric_options[name], self.batch_size).to(self.device)
                owner[key] = kept[key]

    def update(
        self,
        run: ExplainingRun,
        samples: Mapping[str, Tensor | None],
        maps: Mapping[str, Tensor],
        previous_maps: Mapping[str, Tensor],
    ) -> set[str]:
        """Update every metric with this rank's ``maps``; the keys that raised (``explainer/metric``, ``random/..``)."""
        model, use_labels, device, raise_errors, warn = run.model, run.by_label, run.device, run.raise_errors, run.warn
        images, labels, masks = samples.get("images"), samples.get("labels"), samples.get("masks")
        failed: set[str] = set()
        self.probabilities, self.sample_scores = None, {}
        self.skipped_maps = {
            name: {kind: int(flags.sum()) for kind, flags in degenerate_maps(m).items()} for name, m in maps.items()
        }
        self.explained_maps = {name: int(m.shape[0]) for name, m in maps.items()}
        for name, counts in self.skipped_maps.items():
            found = [f"{count} of {self.explained_maps[name]} maps {kind}" for kind, count in counts.items() if count]
            if found:
                warn(
                    f"degenerate/{name}",
                    f"{name!r}: {', '.join(found)} on this rank; they rank no patch and are not scored (counted in "
                    f"<name>/{name}/skipped/<reason>, share in <name>/{name}/degenerate)",
                )
        if images is None or images.shape[0] == 0:
            return failed
        # One clean forward: the class every metric scores, and the panel's captions.
        with torch.no_grad(), eval_mode(model):
            logits = torch.cat([model(chunk.to(device)).float() for (chunk,) in chunks(self.batch_size, images)])
        self.probabilities = logits.softmax(dim=1)
        target = labels if use_labels and labels is not None else self.probabilities.argmax(dim=1).cpu()
        for explainer, seed in self.seeds.items():
            if explainer in maps:
                total = maps[explainer].to(device).flatten(1).double().sum(dim=1)
                start = logits.gather(1, target.to(device)[:, None])[:, 0].double() if seed == "logit" else 1.0
                self.conservation[explainer].update((total / start).float())
        random_maps = self._random_maps(samples, maps)
        streamed = stream_curves(
            model, images, maps, random_maps, target, logits, self._curve_metrics(), self.batch_size
        )
        scored = _ScoredRows(model, images, target, masks, region_masks(samples), warn)
        for explainer, explanation in maps.items():
            for stat, values in focus_statistics(explanation).items():
                self.focus[explainer][stat].update(values.to(device))
            for key, metric in self.metrics[explainer].items():
                try:
                    per_sample = scored.update(metric, key, explanation, streamed, explainer, device, self.batch_size)
                except Exception as error:  # noqa: BLE001 - a metric must not stop the run unless asked
                    if raise_errors:
                        raise
                    failed.add(f"{explainer}/{key}")
                    warn(f"metric/{explainer}/{key}", f"metric {key!r} failed on {explainer!r}: {error!r}")
                    continue
                if per_sample is not None and per_sample.numel() == images.shape[0]:
                    self.sample_scores[f"{explainer}/{key}"] = per_sample  # only when no sample was skipped
            previous = previous_maps.get(explainer)
            if previous is not None and previous.shape == explanation.shape:
                # on the CPU, as the sanity scores: float64 ranks (MPS has no float64), small [N, P] maps
                rho = rank_correlation(explanation.cpu().flatten(1), previous.cpu().flatten(1))
                rho = rho[rho.isfinite()]  # a constant map has no ranking to compare
                if rho.numel():
                    self.stability[explainer].update(rho.to(device))
        if random_maps is not None:
            for key, metric in self.reference.items():
                try:
                    scored.update(metric, key, random_maps, streamed, None, device, self.batch_size)
                except Exception as error:  # noqa: BLE001 - the floor is not worth a run
                    failed.add(f"{RANDOM}/{key}")
                    warn(f"reference/{key}", f"the random maps' {key!r} (the floor) failed: {error!r}")
        return failed

    def _random_maps(self, samples: Mapping[str, Tensor | None], maps: Mapping[str, Tensor]) -> Tensor | None:
        """The reference's maps ``[N, gh, gw]``: a random patch order per sample, seeded by its id; None without."""
        images, ids = samples.get("images"), samples.get("ids")
        if not maps or not self.reference or images is None:
            return None
        grid = next(iter(maps.values())).shape[1:]
        ids = torch.arange(images.shape[0]) if ids is None else ids
        return torch.stack([torch.rand(grid, generator=torch.Generator().manual_seed(int(i))) for i in ids])

    def _curve_metrics(self) -> dict[str | None, dict[str, Metric]]:
        """The metrics whose curves go through the shared stream, per explainer (None: the reference).

        Those whose options set their own ``max_batch`` keep their own stream.
        """
        owners: dict[str | None, dict[str, Metric]] = {None: self.reference if self.with_reference else {}}
        owners.update(self.metrics)
        return {
            owner: {name: m for name, m in metrics.items() if getattr(m, "max_batch", None) == self.batch_size}
            for owner, metrics in owners.items()
        }

    def fault_counts(self, explainers: Sequence[str]) -> list[float]:
        """Per explainer, this rank's ``[nonfinite, zero, flat, maps]`` of the last update, flat: to sum over ranks."""
        return [
            float(count)
            for name in explainers
            for count in [
                *(self.skipped_maps.get(name, {}).get(k, 0) for k in DEGENERATE_KINDS),
                self.explained_maps.get(name, 0),
            ]
        ]

    @staticmethod
    def fault_scores(prefix: str, explainers: Sequence[str], totals: Sequence[float]) -> dict[str, float]:
        """The logged counts, from summed ``fault_counts``.

        ``<prefix>/<explainer>/skipped`` (every map the metrics skipped), ``.../skipped/<reason>`` and
        ``.../degenerate`` (skipped / explained; NaN when nothing was explained).
        """
        scores: dict[str, float] = {}
        width = len(DEGENERATE_KINDS) + 1
        for index, name in enumerate(explainers):
            *counts, explained = totals[index * width : (index + 1) * width]
            scores[f"{prefix}/{name}/skipped"] = float(sum(counts))
            for kind, count in zip(DEGENERATE_KINDS, counts, strict=True):
                scores[f"{prefix}/{name}/skipped/{kind}"] = float(count)
            scores[f"{prefix}/{name}/degenerate"] = float(sum(counts)) / explained if explained else math.nan
        return scores

    def compute(self, prefix: str, disabled: set[str], failed: set[str], with_stability: bool) -> dict[str, float]:
        """``{prefix/explainer/key: score}`` for every pair, computed or NaN; stability where asked.

        With the reference, ``.../<key>/random`` (the random maps' score, the same for every explainer) and
        ``.../<key>/vs_random`` (the score minus it) beside each. Computing is a collective: call it on every rank
        with the same ``disabled`` explainers and ``failed`` keys. Resets the states.
        """
        scores: dict[str, float] = {}
        floor = self._compute_reference(failed)
        for explainer, metrics in self.metrics.items():
            computed = {}
            with warnings.catch_warnings():  # a rank without samples, or a disabled explainer, has no update
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                warnings.filterwarnings("ignore", message=".*no usable sample.*")
                for key, metric in metrics.items():
                    if explainer not in disabled and f"{explainer}/{key}" not in failed:
                        computed[key] = metric.compute()
                if with_stability and explainer not in disabled:
                    scores[f"{prefix}/{explainer}/stability"] = float(self.stability[explainer].compute())
                if explainer in self.conservation and explainer not in disabled:
                    scores[f"{prefix}/{explainer}/conservation"] = float(self.conservation[explainer].compute())
                for stat, metric in self.focus[explainer].items():
                    value = math.nan if explainer in disabled else float(metric.compute())
                    scores[f"{prefix}/{explainer}/focus/{stat}"] = value
            for key in metrics:
                value = float(computed[key]["score"]) if key in computed else math.nan
                scores[f"{prefix}/{explainer}/{key}"] = value
                if key in floor:
                    random = math.nan if explainer in disabled else floor[key]
                    scores[f"{prefix}/{explainer}/{key}/random"] = random
                    scores[f"{prefix}/{explainer}/{key}/vs_random"] = value - random
            for key, result in computed.items():
                if "curve" in result and torch.isfinite(result["curve"]).all():
                    x, y = result["fractions"].cpu().numpy(), result["curve"].cpu().numpy()
                    self.curves.setdefault(key, {})[explainer] = (x, y)
                elif key in self.curves:
                    self.curves[key].pop(explainer, None)
            conservation = [self.conservation[explainer]] if explainer in self.conservation else []
            for metric in [
                *metrics.values(),
                self.stability[explainer],
                *conservation,
                *self.focus[explainer].values(),
            ]:
                metric.reset()
        return scores

    def _compute_reference(self, failed: set[str]) -> dict[str, float]:
        """The random maps' score per key (the floor), NaN where ``random/<key>`` failed; their curves. Resets."""
        self.reference_curves, floor = {}, {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            warnings.filterwarnings("ignore", message=".*no usable sample.*")
            for key, metric in self.reference.items():
                if f"{RANDOM}/{key}" in failed:
                    floor[key] = math.nan
                    metric.reset()
                    continue
                result = metric.compute()
                floor[key] = float(result["score"])
                if "curve" in result and torch.isfinite(result["curve"]).all():
                    self.reference_curves[key] = (result["fractions"].cpu().numpy(), result["curve"].cpu().numpy())
                metric.reset()
        return floor
