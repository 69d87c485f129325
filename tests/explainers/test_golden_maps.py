"""Every explainer's maps equal the recorded golden maps (tests/golden_maps.py): a refactor moves no output."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import golden_maps  # noqa: E402

RECORD = "if the change is meant to move outputs, record them again: .venv/bin/python tests/golden_maps.py --write"


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return torch.load(golden_maps.GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def computed() -> dict[str, torch.Tensor]:
    return golden_maps.compute()


def test_the_same_maps_are_recorded(golden, computed):
    assert sorted(computed) == sorted(golden), RECORD


@pytest.mark.parametrize("case", list(golden_maps.CASES))
def test_maps_equal_the_golden_ones(case, golden, computed):
    """Within 1e-6 of each map's largest magnitude (the refactor may reorder float32 sums, nothing more)."""
    moved = []
    for key in sorted(k for k in golden if k.startswith(f"{case}/")):
        expected, found = golden[key], computed[key]
        assert found.shape == expected.shape and found.dtype == expected.dtype, key
        scale = expected.abs().max().clamp_min(1e-30)
        error = ((found - expected).abs().max() / scale).item()
        if error > 1e-6:
            moved.append(f"{key}: {error:.1e}")
    assert not moved, f"maps moved: {moved}; {RECORD}"


def test_the_golden_maps_are_not_trivial(golden):
    """A recorded map that is all zero or constant would pass any refactor: only Grad-CAM's may be (ReLU'd)."""
    flat = [key for key, maps in golden.items() if maps.flatten(1).std(dim=1).eq(0).any() and "gradcam" not in key]
    assert not flat, flat
