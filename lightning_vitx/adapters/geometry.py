"""How one block's attention connects tokens: all to all (ViT) or within shifted windows (Swin).

The rollout-family explainers carry a row vector over a block's tokens through that block's head-fused attention
(``v <- v A``). A geometry does that product in the block's own layout, so the explainers never build the global
token-by-token matrix: ``O(N^2)`` per block for dense attention, ``O(N w^2)`` for windows of ``w`` tokens.

Between Swin stages, patch merging maps 2x2 tokens to one; ``spread`` moves a vector from the coarse grid to the
fine one by giving each child a quarter of its parent (mass is kept; docs/methods.md §10.3, uniform rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AttentionGeometry", "DenseAttention", "WindowedAttention", "spread"]


@dataclass(frozen=True)
class DenseAttention:
    """Every token attends to every token. Captured attention: ``[B, heads, N, N]``; fused: ``[B, N, N]``.

    Example::

        >>> geometry = DenseAttention(num_prefix_tokens=1, grid_size=(1, 2))
        >>> geometry.times(torch.tensor([[1.0, 0.0, 0.0]]), torch.full((1, 3, 3), 1 / 3))
        tensor([[0.3333, 0.3333, 0.3333]])
    """

    num_prefix_tokens: int
    grid_size: tuple[int, int]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]

    def captured_shape(self, batch_size: int) -> tuple[int, int]:
        """``(rows, tokens)`` of the attention as the module computes it: ``[rows, heads, tokens, tokens]``."""
        return batch_size, self.num_tokens

    def fold(self, captured: Tensor, batch_size: int) -> Tensor:
        """A tensor as the attention module saw it (batch first) -> the per-sample layout: unchanged here."""
        return captured

    def times(self, vector: Tensor, fused: Tensor) -> Tensor:
        """``[B, N] x [B, N, N] -> [B, N]``."""
        return torch.bmm(vector.unsqueeze(1), fused).squeeze(1)

    def row_sums(self, fused: Tensor) -> Tensor:
        """``[B, N]``: the sum of each query row."""
        return fused.sum(dim=-1)


@dataclass(frozen=True)
class WindowedAttention:
    """Swin's (shifted) window attention over an ``H x W`` token grid, as timm's ``SwinTransformerBlock`` runs it.

    The block rolls the grid by ``-shift``, pads it at the bottom/right to whole windows, and attends within each
    window. Captured attention: ``[B * windows, heads, w, w]`` (``w`` tokens per window); folded per sample:
    ``[B, heads, windows, w, w]``; head-fused: ``[B, windows, w, w]``. Padding tokens are zeros the block drops
    afterwards; relevance that flows to them is dropped too.

    Example::

        >>> geometry = WindowedAttention(grid_size=(4, 4), window_size=(2, 2), shift_size=(1, 1))
        >>> geometry.num_windows, geometry.window_area
        (4, 4)
    """

    grid_size: tuple[int, int]
    window_size: tuple[int, int]
    shift_size: tuple[int, int]
    num_prefix_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def padded_size(self) -> tuple[int, int]:
        (h, w), (wh, ww) = self.grid_size, self.window_size
        return (-(-h // wh) * wh, -(-w // ww) * ww)

    @property
    def num_windows(self) -> int:
        (hp, wp), (wh, ww) = self.padded_size, self.window_size
        return (hp // wh) * (wp // ww)

    @property
    def window_area(self) -> int:
        return self.window_size[0] * self.window_size[1]

    def captured_shape(self, batch_size: int) -> tuple[int, int]:
        """``(rows, tokens)`` of the attention as the module computes it: one row per sample and window."""
        return batch_size * self.num_windows, self.window_area

    def fold(self, captured: Tensor, batch_size: int) -> Tensor:
        """``[B * windows, heads, ...]`` -> ``[B, heads, windows, ...]``."""
        per_sample = captured.reshape(batch_size, self.num_windows, *captured.shape[1:])
        return per_sample.transpose(1, 2)

    def to_windows(self, vector: Tensor) -> Tensor:
        """``[B, H*W]`` token values -> ``[B, windows, w]`` in the block's shifted, padded window order."""
        (h, w), (wh, ww), (hp, wp) = self.grid_size, self.window_size, self.padded_size
        grid = vector.reshape(-1, h, w)
        if any(self.shift_size):
            grid = torch.roll(grid, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        grid = F.pad(grid, (0, wp - w, 0, hp - h))
        windows = grid.reshape(-1, hp // wh, wh, wp // ww, ww).permute(0, 1, 3, 2, 4)
        return windows.reshape(grid.shape[0], self.num_windows, self.window_area)

    def from_windows(self, windows: Tensor) -> Tensor:
        """Inverse of ``to_windows``: ``[B, windows, w]`` -> ``[B, H*W]`` (padding dropped, shift undone)."""
        (h, w), (wh, ww), (hp, wp) = self.grid_size, self.window_size, self.padded_size
        grid = windows.reshape(-1, hp // wh, wp // ww, wh, ww).permute(0, 1, 3, 2, 4).reshape(-1, hp, wp)
        grid = grid[:, :h, :w]
        if any(self.shift_size):
            grid = torch.roll(grid, shifts=self.shift_size, dims=(1, 2))
        return grid.reshape(grid.shape[0], h * w)

    def times(self, vector: Tensor, fused: Tensor) -> Tensor:
        """``[B, H*W] x`` the block's ``[B, windows, w, w]`` attention ``-> [B, H*W]``."""
        product = torch.matmul(self.to_windows(vector).unsqueeze(2), fused).squeeze(2)
        return self.from_windows(product)

    def row_sums(self, fused: Tensor) -> Tensor:
        return self.from_windows(fused.sum(dim=-1))


AttentionGeometry = DenseAttention | WindowedAttention


def spread(vector: Tensor, coarse: tuple[int, int], fine: tuple[int, int]) -> Tensor:
    """Move ``[B, N]`` token values from a ``coarse`` grid to the ``fine`` grid it was merged from.

    Each coarse token came from the 2x2 fine tokens under it (patch merging pads odd sizes at the bottom/right);
    each child gets a quarter of its parent. Repeated until the grids match; equal grids return the input.

    Example::

        >>> spread(torch.tensor([[4.0]]), coarse=(1, 1), fine=(2, 2))
        tensor([[1., 1., 1., 1.]])
    """
    sizes = [tuple(fine)]
    while sizes[-1] != tuple(coarse):
        if sizes[-1][0] < coarse[0] or sizes[-1][1] < coarse[1] or sizes[-1] == (1, 1):
            raise ValueError(f"a {coarse} token grid is not merged from a {fine} grid")
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    grid = vector.reshape(-1, *coarse)
    for height, width in reversed(sizes[:-1]):
        grid = grid.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)[:, :height, :width] / 4.0
    return grid.reshape(grid.shape[0], -1)
