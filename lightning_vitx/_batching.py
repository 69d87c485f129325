"""Rows in chunks: the one way the package splits work into batches of at most ``size`` rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["chunk_slices", "chunks"]


def chunk_slices(count: int, size: int) -> Iterator[slice]:
    """Slices covering ``range(count)`` in order, ``size`` rows each (the last one shorter).

    Example::

        >>> list(chunk_slices(5, 2))
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def chunks(size: int, *tensors: Any) -> Iterator[list[Any]]:
    """``size`` rows at a time of each tensor, together (a ``None`` stays ``None``).

    Example::

        >>> import torch
        >>> [[part.tolist(), other] for part, other in chunks(2, torch.arange(3), None)]
        [[[0, 1], None], [[2], None]]
    """
    count = next(tensor for tensor in tensors if tensor is not None).shape[0]
    for part in chunk_slices(count, size):
        yield [None if tensor is None else tensor[part] for tensor in tensors]
