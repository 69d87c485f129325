"""The monitor's collectives: every rank calls them, in the same order, with the same keys.

Nothing here may be skipped on one rank only: a rank that stops calling them leaves the others waiting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from lightning.pytorch import Trainer
from torch import Tensor

__all__ = ["agree_on_faults", "gather_rows", "sum_over_ranks"]


def sum_over_ranks(trainer: Trainer, values: Sequence[float], device: torch.device) -> list[float]:
    """``values`` summed over every rank: one small all-reduce (every rank passes as many values, in one order)."""
    local = torch.tensor([float(value) for value in values], dtype=torch.float64, device=device)
    if trainer.world_size > 1 and len(values) > 0:
        local = trainer.strategy.reduce(local, reduce_op="sum")
    return [float(value) for value in local.tolist()]


def agree_on_faults(
    trainer: Trainer,
    device: torch.device,
    explainers: Sequence[str],
    metric_keys: Sequence[str],
    failed_explainers: set[str],
    failed_metrics: set[str],
    counts: Sequence[float],
) -> tuple[set[str], set[str], list[float]]:
    """What failed on any rank, and ``counts`` summed over ranks, from one all-reduce.

    Returns the ``explainers`` that failed on some rank, the ``metric_keys`` that failed on some rank, and the
    summed ``counts`` (the same on every rank).
    """
    values = [float(n in failed_explainers) for n in explainers] + [float(k in failed_metrics) for k in metric_keys]
    totals = sum_over_ranks(trainer, [*values, *counts], device)
    flags, rest = totals[: len(explainers)], totals[len(explainers) :]
    disabled = {name for name, flag in zip(explainers, flags, strict=True) if flag}
    failed = {key for key, flag in zip(metric_keys, rest[: len(metric_keys)], strict=True) if flag}
    return disabled, failed, rest[len(metric_keys) :]


_MAX_ROW_DIMS = 4  # gather_rows: rows are at most [n, C, H, W]


def gather_rows(
    trainer: Trainer, rows: Mapping[str, Tensor | None], size: int, device: torch.device
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Every rank's rows on every rank, through padded ``all_gather`` calls that all ranks make in the same order.

    Call it on every rank, with the same keys in the same order: ``[n, ...]`` tensors with ``n <= size``, or None
    where this rank has none. A first gather of the shapes tells every rank the trailing shape of each key (a rank
    without rows does not know it) and which keys nobody holds (skipped everywhere). Rows travel as float32, padded
    to ``size``; works without a process group too (one rank).

    Returns:
        ``{key: [world * size, ...]}`` float32 on the CPU, rank r's rows at ``r * size``, for every key some rank
        holds; and ``{key: [world * size]}`` masks of the real rows (not padding, not missing on their rank).
    """
    world = trainer.world_size

    def all_gather(tensor: Tensor) -> Tensor:  # [world, *tensor.shape]; Lightning adds no dim on one device
        return trainer.strategy.all_gather(tensor).reshape(world, *tensor.shape).cpu()

    header = torch.full((len(rows), 1 + _MAX_ROW_DIMS), -1, dtype=torch.long)  # per key: rows, then trailing shape
    for k, value in enumerate(rows.values()):
        header[k, 0] = 0 if value is None else value.shape[0]
        if value is not None and value.ndim > 1:
            header[k, 1 : value.ndim] = torch.tensor(value.shape[1:])
    headers = all_gather(header.to(device))  # [world, keys, 1 + _MAX_ROW_DIMS]
    gathered, valid = {}, {}
    for k, (key, value) in enumerate(rows.items()):
        counts = headers[:, k, 0]
        shapes = headers[counts > 0, k, 1:]
        if shapes.shape[0] == 0:  # nobody holds this key: every rank skips the same gather
            continue
        if (shapes != shapes[0]).any():  # raised on every rank alike: no rank is left waiting in a collective
            raise ValueError(f"held-out {key!r} have different shapes across ranks: {shapes.tolist()}")
        padded = torch.zeros(size, *[d for d in shapes[0].tolist() if d >= 0], device=device)
        if value is not None:
            padded[: value.shape[0]] = value.detach()
        gathered[key] = all_gather(padded).flatten(0, 1)
        valid[key] = (torch.arange(size)[None] < counts[:, None]).flatten()
    return gathered, valid
