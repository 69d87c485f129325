"""The one Spearman: ranks with ties by hand, batched rows, constant rows."""

import math

import torch

from lightning_vitx.analysis import rank_correlation
from lightning_vitx.analysis.ranks import ranks


def test_ties_share_their_mean_rank():
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0], [0.0, 0.0, 1.0, 1.0, 2.0]])
    expected = torch.tensor([[3.0, 0.0, 3.0, 1.0, 3.0], [0.5, 0.5, 2.5, 2.5, 4.0]])
    torch.testing.assert_close(ranks(values), expected)


def test_spearman_with_ties_by_hand():
    """x = [1, 2, 2, 3] ranks [0, 1.5, 1.5, 3]; y = [1, 3, 2, 4] ranks [0, 2, 1, 3]. Centred: [-1.5, 0, 0, 1.5] and
    [-1.5, .5, -.5, 1.5]; the products sum to 2.25 + 0 + 0 + 2.25 = 4.5, over sqrt(4.5 * 5)."""
    x, y = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    expected = (1.5 * 1.5 + 0 * 0.5 + 0 * -0.5 + 1.5 * 1.5) / math.sqrt(4.5 * 5.0)
    assert abs(rank_correlation(x, y).item() - expected) < 1e-6


def test_rows_are_independent_and_a_constant_row_is_nan():
    torch.manual_seed(0)
    x, y = torch.randn(3, 7), torch.randn(3, 7)
    x[1] = 2.0
    rho = rank_correlation(x, y)
    assert rho[1].isnan()
    for row in (0, 2):
        assert abs(rho[row] - rank_correlation(x[row], y[row])) < 1e-6
