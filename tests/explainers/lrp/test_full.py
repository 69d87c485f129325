"""Full LRP: the batched pass against the dense per-image oracle (oracle.py) with the baseline rules."""

import copy
import sys
from pathlib import Path

import pytest
import torch

import lightning_vitx.explainers as X

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle  # noqa: E402

CASES = ["vit", "registers", "deit_distilled", "no_embed_class", "pre_norm"]  # tests/explainers/conftest.py builds them


# --- the batched pass against the dense per-image oracle (oracle.py) ---------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_batched_pass_equals_the_dense_oracle(case, tiny_vit, tiny_images):
    """Against a float64 oracle, as close as a float32 run of the same oracle is.

    The baseline rules divide by sums that can nearly cancel (a residual ``x + a``, each Linear sign term's own
    part), so float32 rounding moves single patches by up to ~0.5% of the map's largest value, in the oracle too.
    """
    model = tiny_vit(case, peaked_pos_embed=True)
    images = tiny_images()
    target = torch.tensor([0, 3, 4])
    maps = X.create("lrp", model)(images, target)
    oracle_model = copy.deepcopy(model).double()
    for i in range(len(images)):
        exact = oracle.lrp_map(oracle_model, images[i].double(), int(target[i]))
        in_float32 = oracle.lrp_map(model, images[i], int(target[i])).double()
        scale = float(exact.abs().max())
        assert exact.std() > 0
        torch.testing.assert_close(maps[i].double(), exact, rtol=1e-2, atol=1e-2 * scale)
        assert (maps[i] - exact).abs().max() <= 2 * (in_float32 - exact).abs().max() + 1e-4 * scale
    assert (maps < 0).any() and (maps > 0).any()  # signed, as registered


def test_registry_entry():
    info = X.get_info("lrp")
    assert (info.needs_gradients, info.readout, info.families, info.signed) == (False, False, ("vit", "swin"), True)
