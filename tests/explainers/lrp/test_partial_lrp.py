"""Partial LRP: the baseline rules by hand, the batched pass against a dense per-image oracle, the model as found."""

import copy

import pytest
import timm
import torch

import lightning_vitx.explainers as X
from lightning_vitx.adapters import detect, explaining
from lightning_vitx.explainers.lrp import relevance as LRP
from lightning_vitx.explainers.lrp.support import check_supported

CASES = ["vit", "registers", "deit_distilled"]  # tests/explainers/conftest.py builds them


# --- the two rules that differ from transformer_attribution's, by hand --------------------------------------------


def test_baseline_linear_rule_by_hand():
    # x+ = [1, 0], x- = [0, -1]; W+ = [[2, 0], [1, 3]], W- = [[0, -1], [0, 0]]; z+ = [2, 1], z- = [1, 0].
    # R = [1, 0]: s+ = [1/2, 0], s- = [1, 0]; R_x = x+ (s+ W+) + x- (s- W-) = [1, 0] + [0, -1 * -1] = [1, 1].
    # Each sign term carries R on its own: the total is 2, where the joint denominator of CHEFER gives 1.
    x, weight = torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0, -1.0], [1.0, 3.0]])
    relevance = LRP.linear_rule(torch.tensor([[1.0, 0.0]]), x, weight, joint=False)
    torch.testing.assert_close(relevance, torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(LRP.linear_rule(torch.tensor([[1.0, 0.0]]), x, weight), torch.tensor([[2 / 3, 1 / 3]]))


def test_baseline_add_rule_by_hand():
    # a + b = [1, 1], R = [1, 1]: the plain LRP-0 split, R_a = [2, 1], R_b = [-1, 0], with no rescaling.
    a, b = torch.tensor([[2.0, 1.0]]), torch.tensor([[-1.0, 0.0]])
    r_a, r_b = LRP.add_rule(torch.tensor([[1.0, 1.0]]), a, b, renormalise=False)
    torch.testing.assert_close(r_a, torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(r_b, torch.tensor([[-1.0, 0.0]]))


def test_rule_sets():
    assert (LRP.CHEFER.joint_linear, LRP.CHEFER.renormalised_add) == (True, True)
    assert (LRP.BASELINE.joint_linear, LRP.BASELINE.renormalised_add) == (False, False)


# --- an independent dense oracle: one image at a time, index notation, autograd VJPs ------------------------------


@torch.enable_grad()
def oracle_linear(relevance, x, weight):
    """The baseline alpha-1 rule: each sign term divided by its own part."""
    x_pos, x_neg = x.clamp(min=0).requires_grad_(True), x.clamp(max=0).requires_grad_(True)
    z_pos, z_neg = x_pos @ weight.clamp(min=0).T, x_neg @ weight.clamp(max=0).T
    (g_pos,) = torch.autograd.grad(z_pos, x_pos, torch.where(z_pos == 0, 0.0, relevance / (z_pos + 1e-9)))
    (g_neg,) = torch.autograd.grad(z_neg, x_neg, torch.where(z_neg == 0, 0.0, relevance / (z_neg + 1e-9)))
    return (x_pos * g_pos + x_neg * g_neg).detach()


def oracle_map(model, image, target):
    """Partial LRP for one image: the last block written out, relevance from the head down to its attention."""
    tokens = []
    handle = model.blocks[-1].register_forward_pre_hook(lambda m, i: tokens.append(i[0]))
    with torch.no_grad():
        logits_check = model(image[None])[0]
    handle.remove()
    with torch.no_grad():
        x = tokens[0][0]  # [N, D]
        block = model.blocks[-1]
        num_tokens, width = x.shape
        h1 = block.norm1(x)
        q, k, v = block.attn.qkv(h1).reshape(num_tokens, 3, block.attn.num_heads, -1).permute(1, 2, 0, 3)
        attention = torch.softmax(torch.einsum("hid,hjd->hij", q, k) * block.attn.scale, dim=-1)
        o = torch.einsum("hij,hjd->ihd", attention, v).reshape(num_tokens, width)
        a = block.attn.proj(o)
        mid = x + a
        f1 = block.mlp.act(block.mlp.fc1(block.norm2(mid)))
        m = block.mlp.fc2(f1)
        final = model.norm(mid + m)
        classifiers = [model.head] + ([model.head_dist] if getattr(model, "head_dist", None) is not None else [])
        heads_out = [classifier(final[row]) for row, classifier in enumerate(classifiers)]
        logits = sum(heads_out) / len(heads_out)
        torch.testing.assert_close(logits, logits_check, rtol=1e-4, atol=1e-5)

        start = torch.zeros_like(logits)
        start[target] = 1.0
        if len(classifiers) == 2:  # plain LRP-0 split of the average between the two heads
            shares = [heads_out[0] * start / (heads_out[0] + heads_out[1]), heads_out[1] * start / sum(heads_out)]
        else:
            shares = [start]
        relevance = torch.zeros_like(final)
        for row, (share, classifier) in enumerate(zip(shares, classifiers, strict=True)):
            relevance[row] = oracle_linear(share[None], final[row][None], classifier.weight)[0]
        residual_share = mid / (mid + m)  # plain LRP-0 split of the MLP residual; the attention one below
        r_mid = relevance * residual_share + oracle_linear(
            oracle_linear(relevance * (1 - residual_share), f1, block.mlp.fc2.weight),
            block.norm2(mid),
            block.mlp.fc1.weight,
        )
        r_a = r_mid * a / (x + a)
        r_o = oracle_linear(r_a, o, block.attn.proj.weight).reshape(num_tokens, -1, v.shape[-1])
        scaled = r_o.transpose(0, 1) / torch.einsum("hij,hjd->hid", attention, v)  # [heads, N, d]
        r_attention = attention * torch.einsum("hjd,hid->hij", v, scaled) / 2
        readout = r_attention.clamp(min=0).mean(dim=0)[: len(classifiers)].mean(dim=0)
    return readout[model.num_prefix_tokens :].reshape(model.patch_embed.grid_size)


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
        expected = oracle_map(oracle_model, images[i].double(), int(target[i])).float()
        assert expected.std() > 0
        torch.testing.assert_close(maps[i], expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def test_differs_from_the_chefer_rules(tiny_vit, tiny_images):
    """The rule set matters: the same readout with CHEFER's rules gives another map."""
    model = tiny_vit(depth=1)
    images, target = tiny_images(batch=2), torch.tensor([1, 2])
    maps = X.create("partial_lrp", model)(images, target)
    heads = check_supported(model, "partial_lrp")
    with explaining(detect(model)), LRP.recording(model, heads) as record, torch.no_grad():
        model(images)
    with torch.no_grad():
        relevance = LRP.top_relevance(record, heads, target, LRP.CHEFER)
        attention, _ = LRP.block_relevance(model.blocks[0], record.blocks[0], relevance, False, LRP.CHEFER)
    chefer = attention.clamp(min=0).mean(dim=1)[:, 0, 1:].reshape(2, 4, 4)
    assert not torch.allclose(maps, chefer, rtol=1e-2, atol=0)


# --- the model is left as found; unsupported models say so -------------------------------------------------------


def test_unsupported_models_raise_a_clear_type_error(tiny_kwargs):
    prefix_pool = timm.create_model(  # avg-pool heads are explained, but not one that also averages the class token
        "vit_tiny_patch16_224", pretrained=False, global_pool="avg", pool_include_prefix=True, **tiny_kwargs
    )
    with pytest.raises(TypeError, match=r"partial_lrp reads an avg-pool head as the mean of the patch tokens"):
        X.create("partial_lrp", prefix_pool)
    headless = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**tiny_kwargs, "num_classes": 0})
    with pytest.raises(TypeError, match="partial_lrp needs a Linear classifier head"):
        X.create("partial_lrp", headless)


def test_registry_entry():
    info = X.get_info("partial_lrp")
    assert (info.needs_gradients, info.readout, info.families, info.signed) == (False, False, ("vit", "swin"), False)
