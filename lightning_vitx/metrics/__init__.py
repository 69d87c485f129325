"""Faithfulness and localisation metrics, as ``torchmetrics.Metric`` with sum states (they sync across DDP).

Every metric takes ``update(model, images, maps, target, masks=None)`` and ``compute()`` returns a dict with
``"score"`` (plus ``"curve"`` and ``"fractions"`` for the perturbation metrics). Each is a
:class:`~lightning_vitx.metrics.base.PerImageMetric`; :mod:`lightning_vitx.metrics.functional` gives the same
per-image scores for one batch (``functional.deletion(model, images, maps, target)`` -> ``[B]``).

Example::

    >>> import lightning_vitx.metrics as M
    >>> M.available()  # doctest: +NORMALIZE_WHITESPACE
    ['deletion', 'insertion', 'negative_perturbation', 'pointing_game', 'positive_perturbation',
     'relevance_mass', 'segmentation']
    >>> M.create("deletion", steps=20).fractions.shape
    torch.Size([21])
"""

from typing import Any

from torchmetrics import Metric

from lightning_vitx.metrics import functional
from lightning_vitx.metrics._common import DEGENERATE_KINDS, METRICS, MetricInfo, as_masks, degenerate_maps
from lightning_vitx.metrics.base import PerImageMetric
from lightning_vitx.metrics.localization import PointingGame, RelevanceMass, SegmentationScores
from lightning_vitx.metrics.perturbation import (
    Deletion,
    Insertion,
    NegativePerturbation,
    PerturbationAUC,
    PositivePerturbation,
    relevance_order,
)

__all__ = [
    "DEGENERATE_KINDS",
    "Deletion",
    "Insertion",
    "MetricInfo",
    "NegativePerturbation",
    "PerImageMetric",
    "PerturbationAUC",
    "PointingGame",
    "PositivePerturbation",
    "RelevanceMass",
    "SegmentationScores",
    "as_masks",
    "available",
    "create",
    "degenerate_maps",
    "functional",
    "get_class",
    "get_info",
    "relevance_order",
]


def available() -> list[str]:
    """Names of the registered metrics, sorted."""
    return METRICS.available()


def get_info(name: str) -> MetricInfo:
    """What the registry says of ``name``: whether it needs masks, whether higher is better, ..."""
    return METRICS.get(name)[0]


def get_class(name: str) -> type:
    """The class registered as ``name`` (its constructor's defaults are the metric's options)."""
    cls: type = METRICS.get(name)[1]
    return cls


def create(name: str, **options: Any) -> Metric:
    """Build the metric registered as ``name``; ``options`` go to its constructor."""
    metric: Metric = METRICS.create(name, **options)
    return metric
