"""Partial LRP: the batched pass against the dense per-image oracle, and the rule set it takes."""

import copy
import sys
from pathlib import Path

import pytest
import torch

import lightning_vitx.explainers as X
from lightning_vitx.adapters import detect, explaining
from lightning_vitx.explainers.lrp import relevance as LRP
from lightning_vitx.explainers.lrp.composites import classifier_heads, explicit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle  # noqa: E402

CASES = ["vit", "registers", "deit_distilled"]  # tests/explainers/conftest.py builds them


# --- the batched pass against the dense per-image oracle (oracle.py) ---------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_batched_pass_equals_the_dense_oracle(case, tiny_vit, tiny_images):
    """Against a float64 oracle: a Linear output whose negative part ``z-`` is tiny amplifies float32 rounding
    (the baseline rule divides by each part alone), so a float32 oracle differs from float64 as much as we do.
    """
    model = tiny_vit(case)
    images = tiny_images()
    target = torch.tensor([0, 3, 4])
    maps = X.create("partial_lrp", model)(images, target)
    oracle_model = copy.deepcopy(model).double()
    for i in range(len(images)):
        expected = oracle.partial_lrp_map(oracle_model, images[i].double(), int(target[i])).float()
        assert expected.std() > 0
        torch.testing.assert_close(maps[i], expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def test_differs_from_the_chefer_rules(tiny_vit, tiny_images):
    """The rule set matters: the same readout with the ``"chefer"`` composite's rules gives another map."""
    model = tiny_vit(depth=1)
    images, target = tiny_images(batch=2), torch.tensor([1, 2])
    maps = X.create("partial_lrp", model)(images, target)
    chefer, heads = explicit("chefer"), classifier_heads(model)
    with explaining(detect(model)), LRP.recording(model, heads) as record, torch.no_grad():
        model(images)
    with torch.no_grad():
        relevance = LRP.top_relevance(record, heads, target, chefer)
        attention, _ = LRP.block_relevance(model.blocks[0], record.blocks[0], relevance, False, chefer)
    chefer_map = attention.clamp(min=0).mean(dim=1)[:, 0, 1:].reshape(2, 4, 4)
    assert not torch.allclose(maps, chefer_map, rtol=1e-2, atol=0)


def test_registry_entry():
    info = X.get_info("partial_lrp")
    assert (info.needs_gradients, info.readout, info.families, info.signed) == (False, False, ("vit", "swin"), False)
