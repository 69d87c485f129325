"""Where relevance sits in a map, without a forward pass: spread (entropy), sparseness (Gini) and top-10 % share.

Each statistic reads a map's magnitudes ``|R|`` (signed maps' negative evidence counts as relevance too) as a
distribution over its ``N`` patches, ``p = |R| / sum |R|``:

- ``entropy``: ``-sum p log p / log N``: 1 when relevance is spread evenly, 0 when one patch holds it all.
- ``gini``: Hurley & Rickard's sparseness of ``|R|`` sorted ascending, ``1 - 2 sum_k p_(k) (N - k + 1/2) / N``: 0
  for an even map, ``1 - 1/N`` for one patch.
- ``top10``: the share of ``sum |R|`` in the ``ceil(N / 10)`` largest patches.

A map with no relevance (all zero) or a non-finite value gives NaN for all three.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["FOCUS_STATISTICS", "focus_statistics"]

FOCUS_STATISTICS = ("entropy", "gini", "top10")


def focus_statistics(maps: Tensor) -> dict[str, Tensor]:
    """``{"entropy", "gini", "top10"}``, each float32 ``[B]``, of maps ``[B, h, w]`` (module docstring).

    Example::

        >>> uniform, one_hot = torch.ones(1, 4, 5), torch.zeros(1, 4, 5)
        >>> one_hot[0, 1, 2] = 3.0
        >>> stats = focus_statistics(torch.cat([uniform, one_hot]))
        >>> [round(v, 4) for v in stats["entropy"].tolist()], [round(v, 4) for v in stats["gini"].tolist()]
        ([1.0, 0.0], [0.0, 0.95])
        >>> [round(v, 4) for v in stats["top10"].tolist()]  # the 2 largest of 20 patches
        [0.1, 1.0]
    """
    if maps.ndim != 3:
        raise ValueError(f"expected maps [B, h, w], got shape {list(maps.shape)}")
    magnitudes = maps.detach().double().abs().flatten(1)
    count = magnitudes.shape[1]
    total = magnitudes.sum(dim=1, keepdim=True)
    usable = torch.isfinite(magnitudes).all(dim=1) & (total[:, 0] > 0)
    p = magnitudes / total.where(total > 0, torch.ones_like(total))
    logs = p.where(p > 0, torch.ones_like(p)).log()  # 0 log 0 = 0
    entropy = (0.0 - (p * logs).sum(dim=1)) / math.log(count) if count > 1 else torch.zeros_like(p[:, 0])
    ascending = p.sort(dim=1).values
    weights = (count - torch.arange(1, count + 1, dtype=p.dtype, device=p.device) + 0.5) / count
    gini = 1 - 2 * (ascending * weights).sum(dim=1)
    top = ascending[:, count - math.ceil(count / 10) :].sum(dim=1)
    nan = torch.tensor(float("nan"), dtype=p.dtype, device=p.device)
    values = (entropy, gini, top)
    return {name: value.where(usable, nan).float() for name, value in zip(FOCUS_STATISTICS, values, strict=True)}
