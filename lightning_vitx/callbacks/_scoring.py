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
from lightning_vitx.metrics import DEGENERATE_KINDS, degenerate_maps

# The monitor counts degenerate maps itself (per reason, logged) and warns once per explainer; the metrics' own
# per-batch warning is kept for NaN or inf only, as before.
_METRIC_DEGENERATE_WARNING = r"(?!.*NaN or inf).*maps are (all zero|constant)"

__all__ = ["Scoring"]


def _create(name: str, options: Mapping[str, Any], batch_size: int) -> Metric:
    """The metric, its perturbed images evaluated ``batch_size`` at a time unless the options say otherwise."""
    metric = M.create(name, **options)
    if "max_batch" not in options and isinstance(getattr(metric, "max_batch", None), int):
        metric.max_batch = batch_size
    return metric


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
    ) -> None:
        self.metrics: dict[str, dict[str, Metric]] = {
            explainer: {name: _create(name, options, batch_size).to(device) for name, options in metric_options.items()}
            for explainer in explainers
        }
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
        # The curves of a random patch order (per sample, seeded by its id: the same on every rank and epoch), the
        # reference line of the curve plots.
        probes = {name: _create(name, options, batch_size) for name, options in metric_options.items() if reference}
        curves = {name: m for name, m in probes.items() if isinstance(getattr(m, "fractions", None), Tensor)}
        self.reference = {name: metric.to(device) for name, metric in curves.items()}
        self.reference_curves: dict[str, Any] = {}  # metric -> (fractions, mean curve) of the random order
        self.batch_size = batch_size
        self.probabilities: Tensor | None = None  # [N, classes] of the last update, this rank's samples
        self.sample_scores: dict[str, Tensor] = {}  # "explainer/metric" -> [N]
        self.curves: dict[str, dict[str, Any]] = {}  # metric -> explainer -> (fractions, mean curve)
        self.skipped_maps: dict[str, dict[str, int]] = {}  # explainer -> reason -> maps the metrics skipped
        self.explained_maps: dict[str, int] = {}  # explainer -> maps of the last update

    def update(
        self,
        run: ExplainingRun,
        samples: Mapping[str, Tensor | None],
        maps: Mapping[str, Tensor],
        previous_maps: Mapping[str, Tensor],
    ) -> set[str]:
        """Update every metric with this rank's ``maps``; the ``explainer/metric`` keys that raised."""
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
        for explainer, explanation in maps.items():
            for stat, values in focus_statistics(explanation).items():
                self.focus[explainer][stat].update(values.to(device))
            for name, metric in self.metrics[explainer].items():
                if masks is None and M.get_info(name).needs_masks:
                    continue  # NaN on every rank: no masks to score against
                key, per_sample = f"{explainer}/{name}", []
                try:
                    batches = chunks(self.batch_size, images, explanation, target, masks)
                    for index, (image, expl, tgt, mask) in enumerate(batches):
                        mask = None if mask is None else mask.to(device)
                        given = streamed.get((explainer, name, index))
                        with warnings.catch_warnings():
                            warnings.filterwarnings("ignore", message=_METRIC_DEGENERATE_WARNING)
                            if given is None:
                                metric.update(model, image.to(device), expl.to(device), tgt.to(device), mask)
                            else:
                                metric.update(model, image.to(device), expl.to(device), tgt.to(device), curves=given)
                        scores = getattr(metric, "last_sample_scores", None)
                        if isinstance(scores, Tensor):
                            per_sample.append(scores.cpu())
                except Exception as error:  # noqa: BLE001 - a metric must not stop the run unless asked
                    if raise_errors:
                        raise
                    failed.add(key)
                    warn(f"metric/{key}", f"metric {name!r} failed on {explainer!r}: {error!r}")
                    continue
                if per_sample and sum(s.numel() for s in per_sample) == images.shape[0]:
                    self.sample_scores[key] = torch.cat(per_sample)  # per-sample only when no sample was skipped
            previous = previous_maps.get(explainer)
            if previous is not None and previous.shape == explanation.shape:
                # on the CPU, as the sanity scores: float64 ranks (MPS has no float64), small [N, P] maps
                rho = rank_correlation(explanation.cpu().flatten(1), previous.cpu().flatten(1))
                rho = rho[rho.isfinite()]  # a constant map has no ranking to compare
                if rho.numel():
                    self.stability[explainer].update(rho.to(device))
        if random_maps is not None:
            for name, metric in self.reference.items():
                try:
                    for index, (image, expl, tgt) in enumerate(chunks(self.batch_size, images, random_maps, target)):
                        given = streamed.get((None, name, index))
                        metric.update(model, image.to(device), expl.to(device), tgt.to(device), curves=given)
                except Exception as error:  # noqa: BLE001 - the reference line is not worth a run
                    warn(f"reference/{name}", f"the random-order reference of {name!r} failed: {error!r}")
        return failed

    def _random_maps(self, samples: Mapping[str, Tensor | None], maps: Mapping[str, Tensor]) -> Tensor | None:
        """The reference's maps ``[N, gh, gw]``: a random patch order per sample, seeded by its id; None without."""
        images, ids = samples["images"], samples.get("ids")
        if not maps or not self.reference or images is None:
            return None
        grid = next(iter(maps.values())).shape[1:]
        ids = torch.arange(images.shape[0]) if ids is None else ids
        return torch.stack([torch.rand(grid, generator=torch.Generator().manual_seed(int(i))) for i in ids])

    def _curve_metrics(self) -> dict[str | None, dict[str, Metric]]:
        """The metrics whose curves go through the shared stream, per explainer (None: the reference).

        Those whose options set their own ``max_batch`` keep their own stream.
        """
        owners: dict[str | None, dict[str, Metric]] = {None: self.reference}
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
        """``{prefix/explainer/metric: score}`` for every pair, computed or NaN; stability where asked.

        Computing is a collective: call it on every rank with the same ``disabled`` explainers and ``failed``
        keys. Resets the states.
        """
        scores: dict[str, float] = {}
        for explainer, metrics in self.metrics.items():
            computed = {}
            with warnings.catch_warnings():  # a rank without samples, or a disabled explainer, has no update
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                warnings.filterwarnings("ignore", message=".*no usable sample.*")
                for name, metric in metrics.items():
                    if explainer not in disabled and f"{explainer}/{name}" not in failed:
                        computed[name] = metric.compute()
                if with_stability and explainer not in disabled:
                    scores[f"{prefix}/{explainer}/stability"] = float(self.stability[explainer].compute())
                if explainer in self.conservation and explainer not in disabled:
                    scores[f"{prefix}/{explainer}/conservation"] = float(self.conservation[explainer].compute())
                for stat, metric in self.focus[explainer].items():
                    value = math.nan if explainer in disabled else float(metric.compute())
                    scores[f"{prefix}/{explainer}/focus/{stat}"] = value
            for name in metrics:
                value = float(computed[name]["score"]) if name in computed else math.nan
                scores[f"{prefix}/{explainer}/{name}"] = value
            for name, result in computed.items():
                if "curve" in result and torch.isfinite(result["curve"]).all():
                    x, y = result["fractions"].cpu().numpy(), result["curve"].cpu().numpy()
                    self.curves.setdefault(name, {})[explainer] = (x, y)
                elif name in self.curves:
                    self.curves[name].pop(explainer, None)
            conservation = [self.conservation[explainer]] if explainer in self.conservation else []
            for metric in [
                *metrics.values(),
                self.stability[explainer],
                *conservation,
                *self.focus[explainer].values(),
            ]:
                metric.reset()
        self.reference_curves = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            warnings.filterwarnings("ignore", message=".*no usable sample.*")
            for name, metric in self.reference.items():
                result = metric.compute()
                if torch.isfinite(result["curve"]).all():
                    self.reference_curves[name] = (result["fractions"].cpu().numpy(), result["curve"].cpu().numpy())
                metric.reset()
        return scores
