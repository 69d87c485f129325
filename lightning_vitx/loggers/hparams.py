"""The monitor's settings and best scores in TensorBoard's HPARAMS tab, so runs compare on what they explained.

TensorBoard shows one hyperparameter entry per run folder and keeps the first one written there; Lightning writes
the module's own into the run's folder. The monitor's goes to a sub-run, ``<log_dir>/<prefix>_best``: its
hyperparameters are the monitor's settings (flattened: ``explainer_options/rollout/head_fusion``, ...) and
Lightning's, its metrics each score's best value so far (``max`` or ``min`` by the metric's
``higher_is_better``), written at every explained pass under the score's own tag, so the Scalars tab also draws a
best-so-far line beside each score. Pair it with ``TensorBoardLogger(..., default_hp_metric=False)`` so the run's
own entry carries no placeholder ``hp_metric``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["HParamsSummary", "flat_hparams"]


def flat_hparams(values: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested settings as TensorBoard's hyperparameters: ``{"a": {"b": 1}}`` -> ``{"a/b": 1}``.

    Values that are not a bool, number or string (lists, None) become their JSON text.

    Example::

        >>> flat_hparams({"explainers": ["rollout"], "options": {"rollout": {"head_fusion": "mean"}}, "seed": None})
        {'explainers': '["rollout"]', 'options/rollout/head_fusion': 'mean', 'seed': 'null'}
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_hparams(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str, sort_keys=True)
    return flat


class HParamsSummary:
    """The sub-run that holds the monitor's hyperparameter entry and best scores, per TensorBoard run folder.

    Example::

        >>> summary = HParamsSummary("explain")
        >>> summary.directions = {"explain/rollout/deletion": False}
        >>> summary.update_best({"explain/rollout/deletion": 0.4})
        {'explain/rollout/deletion': 0.4}
        >>> summary.update_best({"explain/rollout/deletion": 0.5})  # lower is better: the best stays
        {'explain/rollout/deletion': 0.4}
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.settings: dict[str, Any] = {}
        self.directions: dict[str, bool] = {}  # score key -> higher is better
        self.best: dict[str, float] = {}
        self._writers: dict[str, Any] = {}  # run folder -> its sub-run's SummaryWriter

    def __getstate__(self) -> dict[str, Any]:  # writers do not travel to spawned processes
        return {**self.__dict__, "_writers": {}}

    def update_best(self, scalars: Mapping[str, float]) -> dict[str, float]:
        """Fold one pass's finite scores into the best values; returns them all."""
        for key, higher in self.directions.items():
            value = scalars.get(key)
            if value is None or not math.isfinite(value):
                continue
            old = self.best.get(key)
            if old is None or (value > old if higher else value < old):
                self.best[key] = float(value)
        return dict(self.best)

    def log(self, logger: Any, scalars: Mapping[str, float], step: int) -> None:
        """The best values after this pass, at ``step``; the hyperparameter entry with the first pass."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        best = self.update_best(scalars)
        folder = os.path.join(logger.log_dir, f"{self.prefix}_best")
        writer = self._writers.get(folder)
        if writer is None:
            writer = self._writers[folder] = SummaryWriter(folder)
            params = {**flat_hparams(getattr(logger, "hparams", {}) or {}), **flat_hparams(self.settings, "monitor/")}
            file_writer = writer._get_file_writer()  # what SummaryWriter.add_hparams writes through
            for summary in hparams(params, {key: 0.0 for key in self.directions}):
                file_writer.add_summary(summary, step)
        for key, value in best.items():
            writer.add_scalar(key, value, global_step=step)
        writer.flush()
