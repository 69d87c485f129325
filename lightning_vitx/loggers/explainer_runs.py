"""One TensorBoard run per explainer for the Custom Scalars charts, so each explainer's line has its own colour.

TensorBoard colours lines by run: the custom-scalars chart of a metric drew every explainer's
``<prefix>/<explainer>/<metric>`` of one run in that run's one colour. Each explainer's scores are therefore also
written to a sub-run ``<log_dir>/<prefix>_by_explainer/<explainer>`` under the tag ``<prefix>/<metric>``, and the
chart of a metric collects that tag from every run: one line, and one colour, per explainer (and per training run
when several are compared), named by its run in the legend.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ExplainerRuns"]


class ExplainerRuns:
    """The per-explainer sub-runs of one monitor and the custom-scalars layout that reads them.

    Example::

        >>> runs = ExplainerRuns("explain")
        >>> runs.series = runs.series_of({"deletion": {"explain/rollout/deletion": False}})
        >>> runs.series["explain/rollout/deletion"]
        ('rollout', 'explain/deletion')
        >>> runs.layout({"deletion": {"explain/rollout/deletion": False}})
        {'explain': {'deletion': ['Multiline', ['^explain/deletion$']]}}
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.series: dict[str, tuple[str, str]] = {}  # score key -> (explainer, tag in its sub-run)
        self._writers: dict[str, Any] = {}  # sub-run folder -> its SummaryWriter

    def __getstate__(self) -> dict[str, Any]:  # writers do not travel to spawned processes
        return {**self.__dict__, "_writers": {}}

    def series_of(self, metric_keys: Mapping[str, Mapping[str, bool]]) -> dict[str, tuple[str, str]]:
        """``{score key: (explainer, tag)}`` for every charted key ``<prefix>/<explainer>/<metric>``."""
        series = {}
        for metric, keys in metric_keys.items():
            for key in keys:
                explainer = key.removeprefix(f"{self.prefix}/").split("/", 1)[0]
                series[key] = (explainer, f"{self.prefix}/{metric}")
        return series

    def layout(self, metric_keys: Mapping[str, Mapping[str, bool]]) -> dict[str, dict[str, list[Any]]]:
        """The custom-scalars layout: one multiline chart per metric over the explainers' sub-runs."""
        return {
            self.prefix: {
                metric: ["Multiline", [f"^{re.escape(f'{self.prefix}/{metric}')}$"]] for metric in metric_keys
            }
        }

    def log(self, log_dir: str, scalars: Mapping[str, float], step: int) -> None:
        """Each charted score of this pass to its explainer's sub-run, at ``step``."""
        from torch.utils.tensorboard import SummaryWriter

        written = set()
        for key, value in scalars.items():
            if key not in self.series:
                continue
            explainer, tag = self.series[key]
            folder = os.path.join(log_dir, f"{self.prefix}_by_explainer", explainer)
            writer = self._writers.get(folder)
            if writer is None:
                writer = self._writers[folder] = SummaryWriter(folder)
            writer.add_scalar(tag, value, global_step=step)
            written.add(folder)
        for folder in written:
            self._writers[folder].flush()
