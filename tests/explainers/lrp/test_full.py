"""Full LRP: the batched pass against a dense per-image oracle with the baseline rules, the model as found."""

import copy

import pytest
import timm
import torch

import lightning_vitx.explainers as X

CASES = ["vit", "registers", "deit_distilled", "no_embed_class", "pre_norm"]  # tests/explainers/conftest.py builds them


# --- an independent dense oracle: one image at a time, index notation, autograd VJPs ------------------------------


def ratio(a, b):
    return torch.where(b == 0, 0.0, a / (b + 1e-9))


@torch.enable_grad()
def oracle_linear(relevance, x, weight):
    """The baseline alpha-1 rule: each sign term divided by its own part."""
    x_pos, x_neg = x.clamp(min=0).requires_grad_(True), x.clamp(max=0).requires_grad_(True)
    z_pos, z_neg = x_pos @ weight.clamp(min=0).T, x_neg @ weight.clamp(max=0).T
    (g_pos,) = torch.autograd.grad(z_pos, x_pos, ratio(relevance, z_pos))
    (g_neg,) = torch.autograd.grad(z_neg, x_neg, ratio(relevance, z_neg))
    return (x_pos * g_pos + x_neg * g_neg).detach()


@torch.no_grad()
def oracle_map(model, image, target):
    """Full LRP for one image, every block written out; the patch embedding's relevance summed over channels."""
    embedded = model.patch_embed(image[None])[0]  # [P, D]
    sequence = model._pos_embed(embedded[None])[0]  # [N, D]
    x = model.norm_pre(sequence)
    prefix = model.num_prefix_tokens
    kept = []
    for block in model.blocks:
        num_tokens, width = x.shape
        h1 = block.norm1(x)
        q, k, v = block.attn.qkv(h1).reshape(num_tokens, 3, block.attn.num_heads, -1).permute(1, 2, 0, 3)
        attention = torch.softmax(torch.einsum("hid,hjd->hij", q, k) * block.attn.scale, dim=-1)
        o = torch.einsum("hij,hjd->ihd", attention, v).reshape(num_tokens, width)
        a = block.attn.proj(o)
        mid = x + a
        h2 = block.norm2(mid)
        f1 = block.mlp.act(block.mlp.fc1(h2))
        m = block.mlp.fc2(f1)
        kept.append(dict(x=x, h1=h1, q=q, k=k, v=v, A=attention, o=o, a=a, mid=mid, h2=h2, f1=f1, m=m))
        x = mid + m
    final = model.norm(x)
    classifiers = [model.head] + ([model.head_dist] if getattr(model, "head_dist", None) is not None else [])
    heads_out = [classifier(final[row]) for row, classifier in enumerate(classifiers)]
    logits = sum(heads_out) / len(heads_out)
    torch.testing.assert_close(logits, model(image[None])[0], rtol=1e-4, atol=1e-5)

    start = torch.zeros_like(logits)
    start[target] = 1.0
    shares = [start] if len(classifiers) == 1 else [h * ratio(start, sum(heads_out)) for h in heads_out]
    relevance = torch.zeros_like(final)
    for row, (share, classifier) in enumerate(zip(shares, classifiers, strict=True)):
        relevance[row] = oracle_linear(share[None], final[row][None], classifier.weight)[0]
    for block, s in zip(reversed(model.blocks), reversed(kept), strict=True):
        split = ratio(relevance, s["mid"] + s["m"])  # plain LRP-0 residual split
        branch = oracle_linear(
            oracle_linear(s["m"] * split, s["f1"], block.mlp.fc2.weight), s["h2"], block.mlp.fc1.weight
        )
        relevance = s["mid"] * split + branch
        split = ratio(relevance, s["x"] + s["a"])
        r_o = oracle_linear(s["a"] * split, s["o"], block.attn.proj.weight).reshape(len(s["x"]), -1, s["v"].shape[-1])
        scaled = ratio(r_o.transpose(0, 1), torch.einsum("hij,hjd->hid", s["A"], s["v"]))  # [heads, N, d]
        r_attention = s["A"] * torch.einsum("hjd,hid->hij", s["v"], scaled) / 2
        r_v = s["v"] * torch.einsum("hij,hid->hjd", s["A"], scaled) / 2
        dots = ratio(r_attention, torch.einsum("hid,hjd->hij", s["q"], s["k"]))
        r_q = s["q"] * torch.einsum("hjd,hij->hid", s["k"], dots) / 2
        r_k = s["k"] * torch.einsum("hid,hij->hjd", s["q"], dots) / 2
        r_qkv = torch.stack([r_q, r_k, r_v]).permute(2, 0, 1, 3).reshape(len(s["x"]), -1)
        relevance = s["x"] * split + oracle_linear(r_qkv, s["h1"], block.attn.qkv.weight)
    tokens = sequence[prefix:]  # embedded + position embedding, the plain LRP-0 split (norm_pre passes relevance)
    patches = (embedded * ratio(relevance[prefix:], tokens)).sum(dim=-1)
    return patches.reshape(model.patch_embed.grid_size)


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
        exact = oracle_map(oracle_model, images[i].double(), int(target[i]))
        in_float32 = oracle_map(model, images[i], int(target[i])).double()
        scale = float(exact.abs().max())
        assert exact.std() > 0
        torch.testing.assert_close(maps[i].double(), exact, rtol=1e-2, atol=1e-2 * scale)
        assert (maps[i] - exact).abs().max() <= 2 * (in_float32 - exact).abs().max() + 1e-4 * scale
    assert (maps < 0).any() and (maps > 0).any()  # signed, as registered


def test_unsupported_models_raise_a_clear_type_error(tiny_kwargs):
    prefix_pool = timm.create_model(  # avg-pool heads are explained, but not one that also averages the class token
        "vit_tiny_patch16_224", pretrained=False, global_pool="avg", pool_include_prefix=True, **tiny_kwargs
    )
    with pytest.raises(TypeError, match=r"lrp reads an avg-pool head as the mean of the patch tokens"):
        X.create("lrp", prefix_pool)


def test_registry_entry():
    info = X.get_info("lrp")
    assert (info.needs_gradients, info.readout, info.families, info.signed) == (False, False, ("vit", "swin"), True)
