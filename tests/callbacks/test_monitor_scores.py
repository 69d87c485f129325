"""The monitor's scores are those recorded before the curves shared their ends and one stream (issue 25 item 1).

``tests/monitor_scores.py`` recorded a short fit's scores on the defaults and on every explainer with every
perturbation metric, before the change. With a head whose outputs do not depend on the batch size, every score is
bit-identical. With the stock head, an image's logits depend on the batch size it is forwarded in (MKL picks the
head's matrix-product kernel by the number of rows), and the stream packs the perturbed images into fuller
batches: those scores stay within a few float32 ulps.
"""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from monitor_scores import CASES, GOLDEN, scores  # noqa: E402

ULPS = 8 * torch.finfo(torch.float32).eps  # the scores lie in [0, 1]: a few float32 ulps of 1


def flatten(result):
    """``{path: value}`` of every logged score, mean curve point and per-sample score."""
    flat = {}
    for epoch, row in enumerate(result["history"]):
        flat.update({f"history/{epoch}/{key}": value for key, value in row.items()})
    for metric, per_explainer in result["curves"].items():
        for explainer, curve in per_explainer.items():
            flat.update({f"curves/{metric}/{explainer}/{i}": float(v) for i, v in enumerate(curve.tolist())})
    for metric, curve in result["reference"].items():
        flat.update({f"reference/{metric}/{i}": float(v) for i, v in enumerate(curve.tolist())})
    for key, values in result["sample_scores"].items():
        flat.update({f"samples/{key}/{i}": float(v) for i, v in enumerate(values.tolist())})
    return flat


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rowwise", [True, False], ids=["batch-invariant head", "stock head"])
def test_the_scores_are_those_recorded_before_the_shared_stream(case, rowwise):
    recorded = flatten(torch.load(GOLDEN, weights_only=False)[case, rowwise])
    now = flatten(scores(case, rowwise))
    added = set(now) - set(recorded)  # the random maps' floor beside each score, logged since the recording
    assert set(recorded) <= set(now) and added and all(k.endswith(("/random", "/vs_random")) for k in added)
    now = {key: now[key] for key in recorded}
    if rowwise:
        moved = {
            k: (recorded[k], now[k])
            for k in now
            if not (now[k] == recorded[k] or math.isnan(now[k]) and math.isnan(recorded[k]))
        }
        assert not moved
    else:
        for key in now:
            torch.testing.assert_close(now[key], recorded[key], rtol=0, atol=ULPS, equal_nan=True, msg=key)
