"""The monitor's sanity scores: do the maps follow what the model learned, and the class they explain?

``randomization``: mean per-sample Spearman between this pass's maps and the first explained pass's (the
untrained model when the monitor sees ``fit`` from its first step): near 1 after training, the maps ignore what
was learned (Adebayo et al. 2018's test, read along training instead of by re-drawing weights).
``class_sensitivity``: 1 - mean per-sample Spearman between the map of the explained class and the map of the
runner-up class, on the panel's samples: 0 means the map is the same whatever class it explains.
Samples whose map is constant on either side have no ranking and are left out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import MeanMetric

import lightning_vitx.explainers as X
from lightning_vitx.analysis import rank_correlation
from lightning_vitx.callbacks._explaining import MonitorPass, explain_in_batches

__all__ = ["SanityScores"]


def _correlations(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample Spearman of two ``[N, gh, gw]`` batches (ties share their mean rank; constant maps give NaN)."""
    if a.shape[0] == 0:
        return torch.zeros(0)
    return rank_correlation(a.flatten(1).double(), b.flatten(1).double())


class SanityScores:
    """Per explainer: the randomization and class-sensitivity states (sum-reduced, so ``compute`` syncs ranks)."""

    def __init__(self, explainers: Sequence[str], device: torch.device) -> None:
        self.explainers = list(explainers)
        self.randomization = {e: MeanMetric(nan_strategy="ignore").to(device) for e in explainers}
        self.class_sensitivity = {e: MeanMetric(nan_strategy="ignore").to(device) for e in explainers}
        self.reference_maps: dict[str, Tensor] = {}  # the first explained pass's maps of this rank's samples

    def update(self, monitor_pass: MonitorPass, maps: Mapping[str, Tensor], probabilities: Tensor | None) -> None:
        """Update both scores with this rank's ``maps`` (``probabilities``: the clean forward's, same samples)."""
        run, samples, panel_size = monitor_pass.run, monitor_pass.samples, monitor_pass.panel_size
        device = run.device
        for name, explanation in maps.items():
            reference = self.reference_maps.get(name)
            if reference is None or reference.shape != explanation.shape:
                self.reference_maps[name] = explanation.detach().cpu()
                continue
            self.randomization[name].update(_correlations(explanation.cpu(), reference).float().to(device))
        images, ids, labels = samples.get("images"), samples.get("ids"), samples.get("labels")
        if images is None or ids is None or probabilities is None or not maps:
            return
        shown = ids < panel_size  # the panel's samples: the first panel_size global ids
        if not bool(shown.any()):
            return
        explained = labels if run.by_label and labels is not None else probabilities.argmax(dim=1).cpu()
        others = probabilities[shown].clone()
        others[torch.arange(others.shape[0]), explained[shown]] = -math.inf
        runner_up = others.argmax(dim=1).cpu()
        sensitive = {n: o for n, o in monitor_pass.explainers.items() if n in maps and X.get_info(n).class_sensitive}
        for name in maps:
            if name not in sensitive:  # the same map for every class, by construction
                self.class_sensitivity[name].update(torch.zeros(int(shown.sum()), device=device))
        if not sensitive:
            return
        second, failed = explain_in_batches(run.quiet(), sensitive, images[shown], runner_up)
        for name in failed:
            run.warn(f"class_sensitivity/{name}", f"{name!r} failed on the runner-up class; no class_sensitivity")
        for name, other in second.items():
            values = 1.0 - _correlations(maps[name][shown].cpu(), other.cpu())
            self.class_sensitivity[name].update(values.float().to(device))

    def compute(self, prefix: str, disabled: set[str], with_randomization: bool) -> dict[str, float]:
        """``<prefix>/<explainer>/class_sensitivity`` (and ``/randomization`` when asked), synced; resets.

        A collective: call it on every rank with the same arguments.
        """
        scores: dict[str, float] = {}
        with warnings.catch_warnings():  # a rank without panel samples, or a disabled explainer, has no update
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            for name in self.explainers:
                if name in disabled:
                    continue
                scores[f"{prefix}/{name}/class_sensitivity"] = float(self.class_sensitivity[name].compute())
                if with_randomization:
                    scores[f"{prefix}/{name}/randomization"] = float(self.randomization[name].compute())
        for metric in [*self.randomization.values(), *self.class_sensitivity.values()]:
            metric.reset()
        return scores

    def restore(self, reference_maps: Mapping[str, Tensor]) -> None:
        """The reference maps saved in a checkpoint, for the explainers this monitor still runs."""
        self.reference_maps = {n: m for n, m in reference_maps.items() if n in self.explainers}
