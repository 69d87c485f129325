"""Focus statistics on hand-built maps equal their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_vitx.analysis.focus import focus_statistics

N = 7 * 9  # patches of the test maps: ceil(N / 10) = 7 in the top 10 %


def maps_of(*values: torch.Tensor) -> torch.Tensor:
    return torch.stack([value.reshape(7, 9) for value in values])


def test_uniform_one_hot_and_two_peaks_equal_their_closed_forms():
    uniform = torch.full((N,), 0.3)
    one_hot = torch.zeros(N)
    one_hot[10] = 2.0
    two_peaks = torch.zeros(N)
    two_peaks[[3, 40]] = 5.0
    stats = focus_statistics(maps_of(uniform, one_hot, two_peaks))
    expected = {
        "entropy": [1.0, 0.0, math.log(2) / math.log(N)],
        "gini": [0.0, 1 - 1 / N, 1 - 2 / N],
        "top10": [math.ceil(N / 10) / N, 1.0, 1.0],
    }
    for name, values in expected.items():
        torch.testing.assert_close(stats[name], torch.tensor(values), rtol=0, atol=1e-6, msg=name)


def test_signs_and_scale_do_not_move_the_statistics_and_empty_maps_are_nan():
    generator = torch.Generator().manual_seed(0)
    signed = torch.randn(2, 7, 9, generator=generator)
    for name, value in focus_statistics(signed).items():
        torch.testing.assert_close(value, focus_statistics(3 * signed.abs())[name], msg=name)
    broken = torch.zeros(2, 7, 9)
    broken[1, 0, 0] = float("nan")
    assert all(bool(value.isnan().all()) for value in focus_statistics(broken).values())


def test_a_sharper_map_has_lower_entropy_and_higher_gini():
    generator = torch.Generator().manual_seed(1)
    soft = torch.rand(1, 7, 9, generator=generator) + 1.0
    sharp = soft.pow(8)
    soft_stats, sharp_stats = focus_statistics(soft), focus_statistics(sharp)
    assert sharp_stats["entropy"] < soft_stats["entropy"] and sharp_stats["gini"] > soft_stats["gini"]
    assert sharp_stats["top10"] > soft_stats["top10"]


def test_maps_must_be_three_dimensional():
    with pytest.raises(ValueError, match=r"expected maps \[B, h, w\]"):
        focus_statistics(torch.ones(7, 9))
