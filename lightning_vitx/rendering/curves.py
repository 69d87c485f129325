"""Perturbation curves as a figure: one panel per metric, one line per explainer, a random-order reference."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["curve_auc", "curves_figure"]

Curve = tuple[np.ndarray, np.ndarray]  # (fractions, mean score at each fraction)
PANEL_WIDTH, PANEL_HEIGHT = 4.2, 3.4  # inches per metric

Y_LABELS = {
    "deletion": "target probability (lower is better)",
    "insertion": "target probability (higher is better)",
    "positive_perturbation": "top-1 agreement (lower is better)",
    "negative_perturbation": "top-1 agreement (higher is better)",
}


def curve_auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under ``y(x)`` divided by the span of ``x``: the score the perturbation metrics report.

    Example::

        >>> curve_auc(np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.5, 0.0]))
        0.5
    """
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def curves_figure(
    curves: Mapping[str, Mapping[str, Curve]],
    reference: Mapping[str, Curve] | None = None,
    title: str | None = None,
) -> Any:
    """A matplotlib figure: one panel per metric (``{metric: {explainer: (x, y)}}``), one line per explainer.

    Each legend entry carries the curve's AUC (the logged score); ``reference`` holds, per metric, the curve of a
    random patch order, drawn dashed, so a line can be read against chance. The y-axis is scaled to the lines.

    Example::

        >>> x = np.linspace(0, 1, 5)
        >>> figure = curves_figure({"deletion": {"rollout": (x, 1 - x)}}, {"deletion": (x, 1 - 0.5 * x)})
        >>> [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
        ['rollout (AUC 0.500)', 'random order (AUC 0.750)']
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    reference = reference or {}
    width, height = PANEL_WIDTH * len(curves), PANEL_HEIGHT
    figure, axes = plt.subplots(1, len(curves), figsize=(width, height), squeeze=False)
    for axis, (metric, lines) in zip(axes[0], curves.items(), strict=True):
        for explainer, (x, y) in lines.items():
            axis.plot(x, y, marker="o", markersize=3, label=f"{explainer} (AUC {curve_auc(x, y):.3f})")
        if metric in reference:
            x, y = reference[metric]
            label = f"random order (AUC {curve_auc(x, y):.3f})"
            axis.plot(x, y, linestyle="--", color="0.45", linewidth=1.2, label=label)
        axis.set_title(metric.replace("_", " "), fontsize=10)
        axis.set_xlabel("share of patches " + ("inserted" if metric == "insertion" else "removed"), fontsize=8)
        axis.set_ylabel(Y_LABELS.get(metric, "score"), fontsize=8)
        axis.tick_params(labelsize=7)
        axis.margins(y=0.08)  # autoscaled to the lines: close curves stay apart
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    # fixed margins (inches) for the fixed font sizes: tight_layout measured every text with one more draw
    top = 0.62 if title else 0.38
    figure.subplots_adjust(
        left=0.62 / width,
        right=1 - 0.12 / width,
        bottom=0.48 / height,
        top=1 - top / height,
        wspace=0.74 / (PANEL_WIDTH - 0.74),
    )
    return figure
