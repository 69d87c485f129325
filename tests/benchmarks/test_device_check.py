"""``benchmarks/device_check.py --device cpu --tiny``: the GPU check stays runnable, and its CPU rows hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_vitx.explainers as X

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, str, str, str]]:
    command = [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--device", "cpu", "--tiny"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    return [tuple(cell.strip() for cell in line.strip("| ").split(" | ", 3)) for line in table]  # type: ignore[misc]


def by(rows: list[tuple[str, str, str, str]], check: str, model: str) -> dict[str, str]:
    return {row: result for c, m, row, result in rows if c == check and m == model}


def families() -> dict[str, list[str]]:
    return {
        model: [name for name in X.available() if family in X.get_info(name).families]
        for model, family in (("tiny_vit", "vit"), ("tiny_swin", "swin"))
    }


def test_every_explainer_has_each_row(rows):
    for model, names in families().items():
        for check in ("parity", "speed", "syncs"):
            assert set(names) <= set(by(rows, check, model)), (check, model)
        assert set(by(rows, "batching", model)) == {"transformer_attribution", "lrp"}


def test_maps_ignore_autocast_bit_for_bit(rows):
    """On one device the float32 run and the bf16 / fp16 autocast runs are the same maps: explainers turn it off."""
    same = "rel 0.0e+00 r 1.0000"
    expected = f"fp32 {same}; bf16 autocast {same}; fp16 autocast {same}"
    for model in families():
        for explainer, result in by(rows, "parity", model).items():
            assert result == expected, explainer


def test_speed_ratios_are_numbers(rows):
    for model in families():
        for row, result in by(rows, "speed", model).items():
            ratio = float(re.match(r"x([0-9.]+) forward", result).group(1))  # type: ignore[union-attr]
            assert ratio > 0, (model, row)


def test_host_reads_are_the_target_check_alone(rows):
    """One read per call (the target's range, both bounds at once); the Chefer Linear rule's row search reads once
    per Linear on the CPU only (off the CPU the rule takes its four-matmul form, tested with meta tensors)."""
    for model in families():
        for explainer, result in by(rows, "syncs", model).items():
            places = dict(re.findall(r"(\S+:\d+) x(\d+)", result))
            target_check = [place for place in places if place.startswith("forward.py:")]  # adapters/forward.py
            assert len(target_check) == 1 and places[target_check[0]] == "1", (explainer, result)
            others = set(places) - set(target_check)
            if explainer == "transformer_attribution":
                assert {place.split(":")[0] for place in others} == {"rules.py"}, result  # explainers/lrp/rules.py
            else:
                assert not others, (explainer, result)


def test_one_epoch_with_the_monitor_scores_everything(rows):
    [(_, _, row, result)] = [r for r in rows if r[0] == "fit"]
    finite, total = map(int, re.search(r"(\d+)/(\d+) scores finite", result).groups())  # type: ignore[union-attr]
    assert row == f"1 epoch, {len(families()['tiny_vit'])} explainers"
    assert total > 50 and finite == total, result
