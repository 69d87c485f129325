"""Transformer attribution: the batched pass against the dense per-image oracle, conservation, the model as found."""

import copy
import sys
from pathlib import Path

import pytest
import timm
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
@pytest.mark.parametrize("start_layer", [0, 1])
def test_batched_pass_equals_the_dense_oracle(case, start_layer, tiny_vit, tiny_images):
    model = tiny_vit(case)
    images = tiny_images()
    target = torch.tensor([0, 3, 4])
    maps = X.create("transformer_attribution", model, start_layer=start_layer)(images, target)
    for i in range(len(images)):
        expected = oracle.transformer_attribution_map(model, images[i], int(target[i]), start_layer)
        assert expected.std() > 0
        torch.testing.assert_close(maps[i], expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("case", [*CASES, "no_embed_class", "pre_norm"])
def test_pixel_relevance_equals_the_dense_oracle(case, tiny_vit, tiny_images):
    """Against a float64 oracle, as close as a float32 run of the same oracle is.

    Below the attention maps the rules divide by ``q k^T`` and ``A v`` entries that can nearly cancel, so float32
    rounding moves single patches by a few percent of the map's largest value, in the oracle too.
    """
    model = tiny_vit(case)
    images = tiny_images()
    target = torch.tensor([0, 3, 4])
    pixels = X.create("transformer_attribution", model, start_layer=1).pixel_relevance(images, target)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    oracle_model = copy.deepcopy(model).double()
    for i in range(len(images)):
        exact = oracle.transformer_attribution_pixels(oracle_model, images[i].double(), int(target[i]))
        in_float32 = oracle.transformer_attribution_pixels(model, images[i], int(target[i])).double()
        scale = float(exact.abs().max())
        torch.testing.assert_close(pixels[i].double(), exact, rtol=1e-2, atol=1e-2 * scale)
        assert (pixels[i] - exact).abs().max() <= 2 * (in_float32 - exact).abs().max() + 1e-4 * scale
    assert (pixels < 0).any() and (pixels > 0).any()  # signed, unlike the attribution map


def test_pixel_relevance_keeps_the_share_the_renormalised_sum_promises(tiny_vit, tiny_images):
    """With no class token in the sum, the patches keep ``|S_x| / (|S_x| + |S_pos|)`` of the relevance reaching it."""
    model = tiny_vit("no_embed_class")
    images = tiny_images()
    composite, heads = explicit("chefer"), classifier_heads(model)
    composite.check(model, "transformer_attribution")
    with explaining(detect(model)), LRP.recording(model, heads) as record, torch.no_grad():
        target = model(images).argmax(dim=1)
        relevance = LRP.top_relevance(record, heads, target, composite)
        _, below = LRP.attention_relevances(record, relevance, composite, to_input=True)
        embedded = record.embeddings.flatten(1, -2)
        patches = record.sequence[:, model.num_prefix_tokens :]
        reaching = below[:, model.num_prefix_tokens :]
        share_x = (embedded * reaching / patches).sum(dim=(1, 2))  # the plain LRP-0 split, summed per image
        share_pos = ((patches - embedded) * reaching / patches).sum(dim=(1, 2))
    expected = share_x.abs() / (share_x.abs() + share_pos.abs()) * reaching.sum(dim=(1, 2))
    pixels = X.create("transformer_attribution", model).pixel_relevance(images, target)
    torch.testing.assert_close(pixels.sum(dim=(1, 2)), expected, rtol=1e-4, atol=1e-6)
    assert (share_x * share_pos < 0).any() or (expected - reaching.sum(dim=(1, 2))).abs().max() > 1e-3


def test_relevance_is_conserved_block_by_block(tiny_images, tiny_kwargs):
    """With alpha 1 and the renormalised residual rule, every block's input carries the logit's relevance, 1.

    Exactly so up to rounding, except where a Linear output has no positive contribution (``z = 0``: every
    ``x_i W_ji <= 0``), whose relevance the rule drops; at width 16 that happens (a ``2**-16`` chance per output
    and token), hence width 64 here.
    """
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=3, **{**tiny_kwargs, "embed_dim": 64}
    ).eval()
    composite, heads = explicit("chefer"), classifier_heads(model)
    composite.check(model, "transformer_attribution")
    with explaining(detect(model)), LRP.recording(model, heads) as record, torch.no_grad():
        logits = model(tiny_images(batch=4))
    with torch.no_grad():
        relevance = LRP.top_relevance(record, heads, logits.argmax(dim=1), composite)
        torch.testing.assert_close(relevance.sum(dim=(1, 2)), torch.ones(4), rtol=0, atol=1e-4)
        for index in reversed(range(3)):
            attention, relevance = LRP.block_relevance(
                model.blocks[index], record.blocks[index], relevance, True, composite
            )
            torch.testing.assert_close(relevance.sum(dim=(1, 2)), torch.ones(4), rtol=0, atol=1e-4)
            # the attention branch's share of 1, halved between A and v
            assert attention.sum(dim=(1, 2, 3)).ge(0).all() and attention.sum(dim=(1, 2, 3)).le(0.5 + 1e-5).all()


def test_start_layer_option(tiny_vit, tiny_images):
    model = tiny_vit()
    images = tiny_images(batch=2)
    last_only = X.create("transformer_attribution", model, start_layer=-1)(images, 1)
    torch.testing.assert_close(last_only, X.create("transformer_attribution", model, start_layer=1)(images, 1))
    with pytest.raises(ValueError, match=r"start_layer must be an int in \[-2, 2\)"):
        X.create("transformer_attribution", model, start_layer=2)


# --- the model is left as found (refusals: test_composites.py) -------------------------------------------------------


def state(model):
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "fused": {n: m.fused_attn for n, m in model.named_modules() if hasattr(m, "fused_attn")},
        "hooks": {
            n: {attr: list(getattr(m, attr)) for attr in vars(m) if attr.endswith("hooks") or "hooks_" in attr}
            for n, m in model.named_modules()
        },
    }


def tiny_avgpool(tiny_kwargs):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, global_pool="avg", **tiny_kwargs)


def tiny_swin():
    kwargs = {
        "img_size": 32,
        "embed_dim": 16,
        "depths": (2, 2),
        "num_heads": (1, 2),
        "window_size": 4,
        "drop_path_rate": 0.0,
    }
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=5, **kwargs)


@pytest.mark.parametrize("family", ["vit", "avgpool", "swin"])
@pytest.mark.parametrize("name", ["transformer_attribution", "lrp", "partial_lrp", "attnlrp"])
def test_model_left_exactly_as_found_also_when_the_pass_raises(name, family, tiny_vit, tiny_images, tiny_kwargs):
    model = {"vit": tiny_vit, "avgpool": lambda: tiny_avgpool(tiny_kwargs), "swin": tiny_swin}[family]().train()
    blocks = detect(model).blocks()
    blocks[0].eval()
    blocks[0].attn.fused_attn = True
    blocks[1].attn.fused_attn = False
    blocks[0].requires_grad_(False)
    images = tiny_images(batch=2)
    with torch.no_grad():
        before_output = model(images)  # no dropout in this model: train mode gives the same numbers
    before = state(model)
    explainer = X.create(name, model)  # the LRP family: each runs its own hooked pass
    explainer(images, 2)
    explainer.pixel_relevance(images, 2)

    def fail(module, inputs, output):
        raise RuntimeError("user hook fails halfway")

    handle = blocks[1].mlp.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="halfway"):
        explainer(images)
    with pytest.raises(RuntimeError, match="halfway"):
        explainer.pixel_relevance(images)
    handle.remove()
    after = state(model)
    for name, param in before["params"].items():
        torch.testing.assert_close(after["params"][name], param, rtol=0, atol=0)
    assert all(grad is None for grad in after["grads"].values())
    for key in ("requires_grad", "training", "fused", "hooks"):
        assert after[key] == before[key], key
    with torch.no_grad():
        torch.testing.assert_close(model(images), before_output, rtol=0, atol=0)


def test_registry_entry():
    info = X.get_info("transformer_attribution")
    assert (info.needs_gradients, info.readout, info.families, info.signed) == (True, False, ("vit", "swin"), False)
    assert not X.get_info("rollout").signed
