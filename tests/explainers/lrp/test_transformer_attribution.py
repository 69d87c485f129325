"""Transformer attribution: the rules by hand, the batched pass against a dense per-image oracle, conservation."""

import copy

import pytest
import timm
import torch
from timm.models.vision_transformer import ResPostBlock

import lightning_vitx.explainers as X
from lightning_vitx.adapters import detect, explaining
from lightning_vitx.explainers.lrp import relevance as LRP
from lightning_vitx.explainers.lrp.rules import _direct_joint_linear_rule, zb_conv_rule
from lightning_vitx.explainers.lrp.support import check_supported

CASES = ["vit", "registers", "deit_distilled"]  # tests/explainers/conftest.py builds them


# --- each rule on numbers small enough to work out by hand -------------------------------------------------------


def test_linear_rule_by_hand():
    # x+ = [1, 0], x- = [0, -1]; W+ = [[2, 0], [1, 3]], W- = [[0, -1], [0, 0]]; z = [2 + 1, 1] = [3, 1].
    # R = [1, 0]: s = [1/3, 0]; R_x = x+ (s W+) + x- (s W-) = [2/3, 0] + [0, -1 * -1/3] = [2/3, 1/3].
    x, weight = torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0, -1.0], [1.0, 3.0]])
    relevance = LRP.linear_rule(torch.tensor([[1.0, 0.0]]), x, weight)
    torch.testing.assert_close(relevance, torch.tensor([[2 / 3, 1 / 3]]))


def test_add_rule_by_hand():
    # a + b = [1, 1], R = [1, 1]: LRP-0 gives R_a = [2, 1] (sum 3), R_b = [-1, 0] (sum -1). Shares of the total 2:
    # 3/4 * 2 = 1.5 and 1/4 * 2 = 0.5, so R_a = [2, 1] * 1.5 / 3 = [1, 0.5], R_b = [-1, 0] * 0.5 / -1 = [0.5, 0].
    a, b = torch.tensor([[2.0, 1.0]]), torch.tensor([[-1.0, 0.0]])
    r_a, r_b = LRP.add_rule(torch.tensor([[1.0, 1.0]]), a, b)
    torch.testing.assert_close(r_a, torch.tensor([[1.0, 0.5]]))
    torch.testing.assert_close(r_b, torch.tensor([[0.5, 0.0]]))


def test_add_rule_sums_run_per_sample():
    a, b = torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([[-1.0, 0.0], [3.0, -1.0]])
    relevance = torch.tensor([[1.0, 1.0], [0.5, 2.0]])
    r_a, r_b = LRP.add_rule(relevance, a, b)
    for i in range(2):
        alone = LRP.add_rule(relevance[i : i + 1], a[i : i + 1], b[i : i + 1])
        torch.testing.assert_close(r_a[i : i + 1], alone[0])
        torch.testing.assert_close(r_b[i : i + 1], alone[1])
    torch.testing.assert_close((r_a + r_b).sum(1), relevance.sum(1))


def test_matmul_rule_by_hand():
    # [1, 2] @ [3, 4]^T = 11 with R = 11: s = 1; R_a = [1*3, 2*4] / 2, R_b = [3*1, 4*2] / 2.
    r_a, r_b = LRP.matmul_rule(torch.tensor([[11.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0], [4.0]]))
    torch.testing.assert_close(r_a, torch.tensor([[1.5, 4.0]]))
    torch.testing.assert_close(r_b, torch.tensor([[1.5], [4.0]]))


def test_safe_divide_is_zero_where_the_denominator_is():
    quotient = LRP.safe_divide(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 2.0, -1e-9]))
    torch.testing.assert_close(quotient, torch.tensor([0.0, 0.5, 1e9]))


def test_linear_rules_match_their_four_matmul_forms_and_read_the_recorded_output():
    # The joint rule runs as x (s' W) + |x| (s' |W|), s' = R / (z + u + 2e-9); the per-term rule skips the zero mask.
    # Both against the explicit sign-split sums, with a zero input row (a padded token) and the recorded output.
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 5, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64), torch.randn(4)
    x[0, 2] = 0.0
    relevance = torch.randn(2, 5, 4, dtype=torch.float64)
    x_pos, x_neg, w_pos, w_neg = x.clamp(min=0), x.clamp(max=0), weight.clamp(min=0), weight.clamp(max=0)
    z_pos, z_neg = x_pos @ w_pos.T, x_neg @ w_neg.T
    joint = relevance / (z_pos + z_neg + 1e-9)
    expected_joint = x_pos * (joint @ w_pos) + x_neg * (joint @ w_neg)
    per_term = x_pos * ((relevance / (z_pos + 1e-9)) @ w_pos) + x_neg * ((relevance / (z_neg + 1e-9)) @ w_neg)
    output = torch.nn.functional.linear(x, weight, bias.double())
    torch.testing.assert_close(LRP.linear_rule(relevance, x, weight), expected_joint)
    torch.testing.assert_close(LRP.linear_rule(relevance, x, weight, True, output, bias), expected_joint)
    torch.testing.assert_close(LRP.linear_rule(relevance, x, weight, False), per_term)
    for joint_rule in (True, False):
        at_padding = LRP.linear_rule(relevance, x, weight, joint_rule)[0, 2]
        assert torch.equal(at_padding, torch.zeros(7, dtype=torch.float64))


def test_joint_linear_rule_where_z_plus_u_cancels():
    """One output's products are ``-1, -1, +1e-6``: ``z+ = 1e-6`` against ``u = 2``, and a bias of 1000 on top.

    By hand (the reference's form): the third input gets ``1e-6 / (1e-6 + 1e-9)`` of the output's relevance, the
    others none; the second output (``x W = 1 + 2 + 3``) splits its relevance 1 : 2 : 3. In float32, ``z + u`` is
    ``2e-6`` up to rounding of 2 (``2.4e-7``) without the bias, and lost entirely with it.
    """
    x = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    weight = torch.tensor([[-1.0, -1.0, 1e-6], [1.0, 2.0, 3.0]])
    bias = torch.tensor([1000.0, 0.0])
    relevance = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = torch.tensor([[0.0, 0.0, 1e-6 / (1e-6 + 1e-9)], [1 / 6, 2 / 6, 3 / 6]])
    output = torch.nn.functional.linear(x, weight, bias)
    for recorded in ((), (output, bias)):
        found = LRP.linear_rule(relevance, x, weight, True, *recorded)
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6)


def test_joint_linear_rule_off_the_cpu_needs_no_host_sync():
    """Off the CPU every row takes the four-matmul form: no ``.nonzero()`` (a host sync per layer on a GPU).

    On the meta device a data-dependent op such as ``.nonzero()`` raises, so the CPU path's row search fails there;
    the device path must run, and on the CPU its form equals the three-matmul rule it replaces.
    """
    torch.manual_seed(0)
    x, weight, relevance = torch.randn(2, 5, 24), torch.randn(16, 24), torch.randn(2, 5, 16)
    bias = torch.randn(16)
    output = torch.nn.functional.linear(x, weight, bias)
    meta = [t.to("meta") for t in (relevance, x, weight, output, bias)]
    with pytest.raises(NotImplementedError):  # what the CPU path's row search calls cannot run on meta tensors
        meta[0].nonzero()
    assert LRP.linear_rule(*meta[:3], True, *meta[3:]).shape == x.shape
    assert LRP.linear_rule(*meta[:3], True).shape == x.shape
    direct = _direct_joint_linear_rule(relevance.reshape(-1, 16), x.reshape(-1, 24), weight).reshape(x.shape)
    torch.testing.assert_close(LRP.linear_rule(relevance, x, weight, True, output, bias), direct)


def test_add_rule_reads_a_recorded_sum_and_fork_rule_keeps_the_reference_stabiliser():
    torch.manual_seed(0)
    a, b, relevance = torch.randn(3, 4, 6), torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    for renormalise in (True, False):
        recorded = LRP.add_rule(relevance, a, b, renormalise, total=a + b)
        for got, expected in zip(recorded, LRP.add_rule(relevance, a, b, renormalise), strict=True):
            torch.testing.assert_close(got, expected)
    x = torch.tensor([0.0, 2.0, -1e-9, -3.0])
    first, second = torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0.5, 0.5, 0.5, -2.0])
    fork = LRP.fork_rule(first, second, x)
    torch.testing.assert_close(fork, x * LRP.safe_divide(first + second, x))
    assert torch.equal(first, torch.ones(4)) and bool(torch.isfinite(fork).all())  # inputs untouched, no inf


# --- an independent dense oracle: one image at a time, index notation, autograd VJPs, the N x N matrix chain ------


@torch.enable_grad()
def oracle_linear(relevance, x, weight):
    x_pos, x_neg = x.clamp(min=0).requires_grad_(True), x.clamp(max=0).requires_grad_(True)
    z = x_pos @ weight.clamp(min=0).T + x_neg @ weight.clamp(max=0).T
    g_pos, g_neg = torch.autograd.grad(z, (x_pos, x_neg), relevance / (z + 1e-9))
    return (x_pos * g_pos + x_neg * g_neg).detach()


def oracle_add(relevance, a, b, total=None):
    total = a + b if total is None else total  # the recorded sum: a + b recomputed can round far from it near 0
    r_a, r_b = a * relevance / total, b * relevance / total
    sum_a, sum_b = r_a.sum(), r_b.sum()
    total = relevance.sum()
    return r_a * (sum_a.abs() / (sum_a.abs() + sum_b.abs()) * total / sum_a), r_b * (
        sum_b.abs() / (sum_a.abs() + sum_b.abs()) * total / sum_b
    )


def oracle_map(model, image, target, start_layer=0, input_relevance=False):
    """Chefer et al.'s transformer attribution for one image, written out with explicit N x N matrices.

    ``input_relevance``: return the relevance ``[N, D]`` at the first block's input instead.
    """
    tokens = []
    handle = model.blocks[0].register_forward_pre_hook(lambda m, i: tokens.append(i[0]))
    with torch.no_grad():
        model(image[None])
    handle.remove()
    x = tokens[0][0]  # [N, D]
    num_tokens, width = x.shape
    kept, attentions = [], []
    for block in model.blocks:
        heads = block.attn.num_heads
        h1 = block.norm1(x)
        q, k, v = block.attn.qkv(h1).reshape(num_tokens, 3, heads, -1).permute(1, 2, 0, 3)  # [heads, N, d] each
        attention = torch.softmax(torch.einsum("hid,hjd->hij", q, k) * block.attn.scale, dim=-1)
        attentions.append(attention)
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
    rows = list(range(len(classifiers)))  # the class token, and the distillation token after it
    heads_out = [classifier(final[row]) for classifier, row in zip(classifiers, rows, strict=True)]
    logits = sum(heads_out) / len(heads_out)
    torch.testing.assert_close(logits, model(image[None])[0].detach(), rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(logits[target], attentions)

    with torch.no_grad():
        start = torch.zeros_like(logits)
        start[target] = 1.0
        shares = [start] if len(rows) == 1 else list(oracle_add(start, heads_out[0], heads_out[1]))
        relevance = torch.zeros_like(final)
        for row, share, classifier in zip(rows, shares, classifiers, strict=True):
            relevance[row] = oracle_linear(share[None], final[row][None], classifier.weight)[0]
        fused = [None] * len(model.blocks)
        for index in reversed(range(len(model.blocks))):
            block, s = model.blocks[index], kept[index]
            residual, branch = oracle_add(relevance, s["mid"], s["m"])
            branch = oracle_linear(oracle_linear(branch, s["f1"], block.mlp.fc2.weight), s["h2"], block.mlp.fc1.weight)
            relevance = residual + branch
            residual, branch = oracle_add(relevance, s["x"], s["a"])
            r_o = oracle_linear(branch, s["o"], block.attn.proj.weight).reshape(num_tokens, -1, s["v"].shape[-1])
            scaled = r_o.transpose(0, 1) / torch.einsum("hij,hjd->hid", s["A"], s["v"])  # [heads, N, d]
            r_attention = s["A"] * torch.einsum("hjd,hid->hij", s["v"], scaled) / 2
            r_v = s["v"] * torch.einsum("hij,hid->hjd", s["A"], scaled) / 2
            fused[index] = (grads[index] * r_attention).clamp(min=0).mean(dim=0)
            dots = r_attention / torch.einsum("hid,hjd->hij", s["q"], s["k"])
            r_q = s["q"] * torch.einsum("hjd,hij->hid", s["k"], dots) / 2
            r_k = s["k"] * torch.einsum("hid,hij->hjd", s["q"], dots) / 2
            r_qkv = torch.stack([r_q, r_k, r_v]).permute(2, 0, 1, 3).reshape(num_tokens, -1)
            relevance = residual + oracle_linear(r_qkv, s["h1"], block.attn.qkv.weight)
        if input_relevance:
            return relevance
        chain = torch.eye(num_tokens)
        for matrix in fused[start_layer:]:
            chain = (torch.eye(num_tokens) + matrix) @ chain  # later blocks on the left
        readout = chain[rows].mean(dim=0)
    grid = model.patch_embed.grid_size
    return readout[model.num_prefix_tokens :].reshape(grid)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("start_layer", [0, 1])
def test_batched_pass_equals_the_dense_oracle(case, start_layer, tiny_vit, tiny_images):
    model = tiny_vit(case)
    images = tiny_images()
    target = torch.tensor([0, 3, 4])
    maps = X.create("transformer_attribution", model, start_layer=start_layer)(images, target)
    for i in range(len(images)):
        expected = oracle_map(model, images[i], int(target[i]), start_layer)
        assert expected.std() > 0
        torch.testing.assert_close(maps[i], expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def oracle_pixels(model, image, target):
    """The reference's ``relprop(method="full")`` on ``ViT_LRP`` for one image, below the blocks written out.

    ``layers_ours.Add`` on the position embedding's sum (over the whole sequence, or the patches alone without an
    embedding for the class token), the class token dropped, the first convolution's z^B rule, summed over RGB.
    """
    relevance = oracle_map(model, image, target, input_relevance=True)  # norm_pre passes relevance
    with torch.no_grad():
        embedded = model.patch_embed(image[None])[0]  # [P, D]
        sequence = model._pos_embed(embedded[None])[0]  # [N, D], before norm_pre
    if model.no_embed_class:
        covered, relevance = sequence[-len(embedded) :], relevance[-len(embedded) :]
    else:
        covered = sequence
    position = model.pos_embed[0].detach()
    at_tokens, at_position = oracle_add(relevance, covered - position, position, total=covered)
    assert at_tokens.sum().abs() > 0.01 * at_position.sum().abs()  # both sides of the sum take a share
    grid = model.patch_embed.grid_size
    at_conv = at_tokens[-len(embedded) :].T.reshape(1, -1, *grid)
    with torch.no_grad():
        return zb_conv_rule(at_conv, image[None], model.patch_embed.proj)[0].sum(dim=0)


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
        exact = oracle_pixels(oracle_model, images[i].double(), int(target[i]))
        in_float32 = oracle_pixels(model, images[i], int(target[i])).double()
        scale = float(exact.abs().max())
        torch.testing.assert_close(pixels[i].double(), exact, rtol=1e-2, atol=1e-2 * scale)
        assert (pixels[i] - exact).abs().max() <= 2 * (in_float32 - exact).abs().max() + 1e-4 * scale
    assert (pixels < 0).any() and (pixels > 0).any()  # signed, unlike the attribution map


def test_pixel_relevance_keeps_the_share_the_renormalised_sum_promises(tiny_vit, tiny_images):
    """With no class token in the sum, the patches keep ``|S_x| / (|S_x| + |S_pos|)`` of the relevance reaching it."""
    model = tiny_vit("no_embed_class")
    images = tiny_images()
    heads = check_supported(model, "transformer_attribution")
    with explaining(detect(model)), LRP.recording(model, heads) as record, torch.no_grad():
        target = model(images).argmax(dim=1)
        relevance = LRP.top_relevance(record, heads, target)
        _, below = LRP.attention_relevances(record, relevance, LRP.CHEFER, to_input=True)
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
    heads = check_supported(model, "transformer_attribution")
    with explaining(detect(model)), LRP.recording(model, heads) as record, torch.no_grad():
        logits = model(tiny_images(batch=4))
    with torch.no_grad():
        relevance = LRP.top_relevance(record, heads, logits.argmax(dim=1))
        torch.testing.assert_close(relevance.sum(dim=(1, 2)), torch.ones(4), rtol=0, atol=1e-4)
        for index in reversed(range(3)):
            attention, relevance = LRP.block_relevance(model.blocks[index], record.blocks[index], relevance, True)
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


# --- the model is left as found; unsupported models say so -------------------------------------------------------


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


def test_unsupported_models_raise_a_clear_type_error(tiny_kwargs):
    prefix_pool = timm.create_model(  # avg-pool heads are explained, but not one that also averages the class token
        "vit_tiny_patch16_224", pretrained=False, global_pool="avg", pool_include_prefix=True, **tiny_kwargs
    )
    with pytest.raises(
        TypeError, match=r"transformer_attribution reads an avg-pool head as the mean of the patch tokens"
    ):
        X.create("transformer_attribution", prefix_pool)
    post_norm = timm.create_model("vit_tiny_patch16_224", pretrained=False, block_fn=ResPostBlock, **tiny_kwargs)
    with pytest.raises(TypeError, match="pre-norm Block.*block 0 is a ResPostBlock"):
        X.create("transformer_attribution", post_norm)
    headless = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**tiny_kwargs, "num_classes": 0})
    with pytest.raises(TypeError, match="needs a Linear classifier head"):
        X.create("transformer_attribution", headless)


def test_registry_entry():
    info = X.get_info("transformer_attribution")
    assert (info.needs_gradients, info.readout, info.families, info.signed) == (True, False, ("vit", "swin"), False)
    assert not X.get_info("rollout").signed
