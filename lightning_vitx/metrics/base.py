"""``PerImageMetric``: the anatomy every metric of the package shares (check, skip and count, score, sum)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_vitx.metrics._common import CheckedBatch, check_batch

__all__ = ["PerImageMetric"]


class PerImageMetric(Metric):
    """A metric that scores each image on its own and sums what it needs over the data set.

    ``update(model, images, maps, target=None, masks=None)`` checks the batch
    (:func:`~lightning_vitx.metrics._common.check_batch`: errors that say what to pass), leaves out the samples
    it cannot score (a non-finite image, a map that ranks no patch, an empty mask where masks are needed) with a
    warning, and counts them in ``skipped``. The rest go to :meth:`score_batch`, the subclass's one job: it returns
    one score per usable image (kept in ``last_sample_scores``) and adds its own sum states. ``count`` is the number
    of images scored. Every state is a sum, so the metric syncs across DDP processes; it never stores the model.

    Subclasses set ``higher_is_better`` (the registry reads it) and, for metrics against ground-truth masks,
    ``needs_masks = True`` (they take ``ignore_index``, the void label of integer masks, and run no forward pass).

    Example::

        >>> class MeanMap(PerImageMetric):
        ...     higher_is_better = True
        ...     def score_batch(self, model, batch):
        ...         return batch.maps.flatten(1).mean(dim=1)
        ...     def compute(self):
        ...         return self.count
        >>> metric = MeanMap()
        >>> maps = torch.stack([torch.eye(2), torch.zeros(2, 2)])  # the second map is all zero: skipped
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     metric.update(nn.Identity(), torch.zeros(2, 3, 4, 4), maps)
        >>> metric.last_sample_scores, metric.skipped, metric.count
        (tensor([0.5000]), tensor(1.), tensor(1.))
    """

    is_differentiable = False
    full_state_update = False
    needs_masks: ClassVar[bool] = False
    ignore_index: int | None = 255
    skipped: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("skipped", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")
        self.last_sample_scores: Tensor | None = None

    def score_batch(self, model: nn.Module, batch: CheckedBatch) -> Tensor:
        """``[n]`` scores of the batch's usable samples (``n >= 1``); add them to the subclass's sum states."""
        raise NotImplementedError(f"{type(self).__name__} must implement score_batch(model, batch)")

    def update(
        self,
        model: nn.Module,
        images: Tensor,
        maps: Tensor,
        target: Tensor | int | None = None,
        masks: Tensor | None = None,
    ) -> None:
        """Add a batch: ``images [B, C, H, W]`` as the model takes them, ``maps [B, gh, gw]`` at the patch grid.

        ``target``: the class each map explains (None: the predicted class); ``masks [B, H, W]`` at image size,
        for the metrics that need them.
        """
        batch = check_batch(
            type(self).__name__,
            maps,
            model=model,
            images=images,
            target=target,
            masks=masks,
            needs_masks=self.needs_masks,
            ignore_index=self.ignore_index,
        )
        self.skipped += (~batch.keep).sum().to(self.skipped)
        if batch.maps.shape[0] == 0:
            self.last_sample_scores = torch.zeros(0, device=maps.device)
            return
        scores = self.score_batch(model, batch).detach()
        self.last_sample_scores = scores
        self.count += float(scores.numel())
