"""Every registered metric as a function of one batch: per-image scores, NaN where a sample cannot be scored.

The metric classes (:mod:`lightning_vitx.metrics`) accumulate these same per-image values over a data set; a class's
``last_sample_scores`` after an ``update`` are the function's scores of the samples it kept (for ``segmentation``,
the ``"map"`` entry: each image's average precision).

Example::

    >>> import torch
    >>> import lightning_vitx.metrics.functional as MF
    >>> maps = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool); masks[0, 0, 3] = True
    >>> MF.pointing_game(maps, masks), MF.relevance_mass(maps, masks)  # the mask holds 1 of the patch's 4 pixels
    (tensor([1.]), tensor([0.2500]))
"""

from lightning_vitx.metrics.functional.localization import (
    batched_average_precision,
    pointing_game,
    relevance_mass,
    segmentation,
)
from lightning_vitx.metrics.functional.perturbation import (
    deletion,
    insertion,
    negative_perturbation,
    positive_perturbation,
)

__all__ = [
    "batched_average_precision",
    "deletion",
    "insertion",
    "negative_perturbation",
    "pointing_game",
    "positive_perturbation",
    "relevance_mass",
    "segmentation",
]
