"""Two CPU processes (gloo) with uneven shards, under "ddp" and "ddp_spawn": the same scores and panel as one process.

The runs of ddp_monitor_run.py (one process, ddp, ddp_spawn) start together and are shared by the tests below; they
are bounded by a timeout sized for a loaded machine (30 minutes), so a hang in a collective fails instead of
stalling the suite.
"""

import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_monitor_run.py")
TIMEOUT_S = 1800  # a hang guard, not a speed limit: the runs take ~30 s on a quiet 2-core machine


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """OUT/<strategy>/<val|loader>/rank<r>.json for each strategy (ddp_spawn: val only, plus parent.json)."""
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launches = {}
    for strategies in [["ddp"], ["single", "ddp_spawn"]]:  # two launches at once; the second saves an import
        log = out / f"{'_'.join(strategies)}.log"
        with open(log, "w") as stream:  # each launch runs in its own session, so a hang can be killed whole
            command = [sys.executable, str(SCRIPT), str(out), *strategies]
            launches[log] = subprocess.Popen(
                command, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
            )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for log, process in launches.items():
            code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert code == 0, f"{log.name} failed:\n{log.read_text()[-4000:]}"
    finally:
        for process in launches.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    return out


def load(runs: Path, strategy: str, run: str, name: str) -> dict:
    return json.load(open(runs / strategy / run / f"{name}.json"))


def assert_same_scores(scores: dict, expected: dict) -> None:
    assert set(scores) == set(expected) and len(expected) >= 6
    for key, value in expected.items():
        if key != "explain/time_s":
            assert scores[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def assert_same_panel(panel: dict, expected: dict) -> None:
    assert panel["panel_ids"] == expected["panel_ids"] == [0, 1, 2, 3]  # the first ids of both shards, in order
    assert set(panel["panel_maps"]) == set(expected["panel_maps"]) == {"rollout", "gradcam", "generic_attention"}
    for name, maps in expected["panel_maps"].items():
        torch.testing.assert_close(torch.tensor(panel["panel_maps"][name]), torch.tensor(maps), rtol=1e-5, atol=1e-6)


def test_ddp_scores_and_panel_equal_single_process_and_only_rank_zero_draws(runs):
    single = load(runs, "single", "val", "rank0")
    rank0, rank1 = load(runs, "ddp", "val", "rank0"), load(runs, "ddp", "val", "rank1")
    assert single["ids"] == list(range(7))
    assert rank0["ids"] == [0, 2, 4, 6] and rank1["ids"] == [1, 3, 5]  # uneven shards, no padding duplicate
    assert_same_scores(rank0["scores"], single["scores"])
    assert_same_scores(rank1["scores"], single["scores"])
    # the sanity scores: the panel's samples (ids 0-3) sit on both ranks; rollout is class-blind by construction
    assert single["scores"]["explain/rollout/class_sensitivity"] == 0.0
    assert 0.0 < single["scores"]["explain/generic_attention/class_sensitivity"] <= 2.0
    assert_same_panel(rank0, single)
    pngs = glob.glob(f"{runs}/ddp/val/**/explain_panel_*.png", recursive=True)
    assert len(pngs) == 1  # rank 0 only


def test_ddp_with_a_dataloader_shards_it_by_rank_and_scores_as_one_process(runs):
    single = load(runs, "single", "val", "rank0")
    assert load(runs, "single", "loader", "rank0")["ids"] == list(range(7))
    rank0, rank1 = load(runs, "ddp", "loader", "rank0"), load(runs, "ddp", "loader", "rank1")
    assert rank0["ids"] == [0, 2, 4, 6] and rank1["ids"] == [1, 3, 5]
    assert_same_scores(rank0["scores"], single["scores"])
    assert_same_scores(rank1["scores"], single["scores"])
    assert_same_panel(rank0, single)


def test_ddp_spawn_completes_with_the_scores_of_one_process(runs):
    single = load(runs, "single", "val", "rank0")
    assert_same_scores(load(runs, "ddp_spawn", "val", "parent")["scores"], single["scores"])  # back from the children
    rank0, rank1 = load(runs, "ddp_spawn", "val", "rank0"), load(runs, "ddp_spawn", "val", "rank1")
    assert rank0["ids"] == [0, 2, 4, 6] and rank1["ids"] == [1, 3, 5]
    assert_same_panel(rank0, single)


def test_ddp_scores_named_regions_as_one_process(runs):
    single, plain = load(runs, "single", "regions", "rank0"), load(runs, "single", "val", "rank0")
    for rank in (0, 1):
        assert_same_scores(load(runs, "ddp", "regions", f"rank{rank}")["scores"], single["scores"])
    for explainer in ("rollout", "gradcam", "generic_attention"):
        for metric in ("pointing_game", "relevance_mass"):
            key = f"explain/{explainer}/{metric}"
            assert key not in single["scores"]
            # the object region is the unnamed mask of the plain run; the left half is scored where it is not empty
            assert single["scores"][f"{key}/object"] == pytest.approx(plain["scores"][key], abs=1e-6, nan_ok=True)
            if explainer == "gradcam":
                continue  # all-zero maps at random init (a ReLU of negative head weights): NaN, not scored
            assert 0.0 <= single["scores"][f"{key}/left"] <= 1.0
            difference = single["scores"][f"{key}/left"] - single["scores"][f"{key}/left/random"]
            assert single["scores"][f"{key}/left/vs_random"] == pytest.approx(difference, abs=1e-6)


def test_ddp_with_a_rank_that_holds_no_sample(runs):
    single = load(runs, "single", "one", "rank0")
    rank0, rank1 = load(runs, "ddp", "one", "rank0"), load(runs, "ddp", "one", "rank1")
    assert rank0["ids"] == [0] and rank1["ids"] == []
    assert_same_scores(rank0["scores"], single["scores"])
    assert_same_scores(rank1["scores"], single["scores"])
    assert rank0["panel_ids"] == rank1["panel_ids"] == single["panel_ids"] == [0]


def test_an_explainer_failing_on_one_rank_is_disabled_on_every_rank_in_the_same_epoch(runs):
    single = load(runs, "single", "val", "rank0")["scores"]
    for rank in ("rank0", "rank1"):
        record = load(runs, "ddp", "rank1fails", rank)
        assert record["failed"] == ["gmar"]  # rank 0 ran gmar fine, and still disabled it
        assert set(record["panel_maps"]) == {"rollout"}
        scores = record["scores"]
        gmar = [key for key in scores if key.startswith("explain/gmar/") and "/skipped" not in key]
        assert gmar and all(math.isnan(scores[key]) for key in gmar), {key: scores[key] for key in gmar}
        # the pointing game failed on rank 1 only: NaN on both ranks, and rank 0 says why (before: silent there)
        assert math.isnan(scores["explain/rollout/pointing_game"])
        assert "metric/rollout/pointing_game" in record["warned"]
        # the floor of the pointing game failed on rank 1 too: NaN on both ranks
        assert math.isnan(scores["explain/rollout/pointing_game/random"])
        for key, value in single.items():  # the explainer that worked everywhere: scores of all samples
            if key.startswith("explain/rollout/") and "/pointing_game" not in key:
                assert scores[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
