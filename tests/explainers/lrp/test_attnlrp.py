"""AttnLRP / CP-LRP: against the explicit per-image LRP oracle (oracle.py), conservation, the model as found."""

import copy
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import lightning_vitx.explainers as X
from lightning_vitx.adapters import detect, explaining
from lightning_vitx.explainers.lrp.autograd_rules import gamma_conv, gamma_linear, identity_rule, layer_norm_rule
from lightning_vitx.explainers.lrp.composites import modified_backward
from lightning_vitx.explainers.lrp.modified_backward import lrp_rules

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle  # noqa: E402

TINY_SWIN = {"embed_dim": 16, "depths": (2, 2), "num_heads": (2, 2), "window_size": 4, "num_classes": 5}


def make_swin(img_size=40, seed=0):
    """40 px / 4 = a 10x10 grid: windows of 4 need padding, shifted blocks use the mask, merging meets 10 -> 5."""
    torch.manual_seed(seed)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=img_size, **TINY_SWIN)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "relative_position_bias_table"):
                module.qkv.weight.normal_(0.0, 0.5, generator=generator)
                module.relative_position_bias_table.normal_(0.0, 1.0, generator=generator)
    return model.eval()


def make_model(case, tiny_vit, tiny_kwargs):
    if case == "swin":
        return make_swin()
    if case == "avgpool":
        torch.manual_seed(0)
        kwargs = {**tiny_kwargs, "class_token": False, "global_pool": "avg", "depth": 2}
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()
    return tiny_vit(case, peaked_pos_embed=True)


def images_for(case, batch, tiny_images):
    if case == "swin":
        return torch.randn(batch, 3, 40, 40, generator=torch.Generator().manual_seed(5))
    return tiny_images(batch=batch)


# --- against the explicit oracle (oracle.py: relevance form, one image at a time, float64) ---------------------


@pytest.mark.parametrize("case", ["vit", "registers", "deit_distilled"])
@pytest.mark.parametrize("rule, gamma, conv_gamma", [("attnlrp", 0.0, 0.0), ("attnlrp", 0.25, 0.5), ("cp", 0.1, 0.0)])
def test_pixel_relevance_equals_the_explicit_oracle(case, rule, gamma, conv_gamma, tiny_vit, tiny_images):
    model = tiny_vit(case, peaked_pos_embed=True)
    images = tiny_images()
    target = torch.tensor([0, 3, 4])
    explainer = X.create("attnlrp", model, attention_rule=rule, gamma=gamma, conv_gamma=conv_gamma)
    pixels = explainer.pixel_relevance(images, target)
    maps = explainer(images, target)
    oracle_model = copy.deepcopy(model).double()
    for i in range(len(images)):
        exact = oracle.attnlrp_pixels(oracle_model, images[i].double(), int(target[i]), rule, gamma, conv_gamma)
        scale = float(exact.abs().max())
        torch.testing.assert_close(pixels[i].double(), exact, rtol=0, atol=1e-4 * scale)
        patch_sums = exact.reshape(4, 8, 4, 8).sum(dim=(1, 3))
        torch.testing.assert_close(maps[i].double(), patch_sums, rtol=0, atol=1e-4 * scale * 64)
    assert (maps < 0).any() and (maps > 0).any()  # signed, as registered


def test_gamma_rule_by_hand():
    """One Linear, two inputs, two outputs, gamma 1: the rule's sums written out by hand."""
    x = torch.tensor([[1.0, -2.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 1.0], [-1.0, 0.5]])
    bias = torch.tensor([0.5, 0.0])
    z = F.linear(x, weight, bias)  # [1 - 2 + 0.5, -1 - 1] = [-0.5, -2]: both negative
    out = gamma_linear(x, z, weight, bias, 1.0)
    torch.testing.assert_close(out, z, rtol=0, atol=0)  # the stock output
    (grad,) = torch.autograd.grad(out, x, torch.tensor([[1.0, 1.0]]))  # R_out = z * 1 = [-0.5, -2]
    # z < 0: weights W + W- (W- = min(W, 0)) on x+ and W + W+ on x-, bias b + b- = b
    # output 0: 1*1 + (-2)*2 + 0.5 = -2.5 -> R to x1 = -0.5 * 1/-2.5 = 0.2, to x2 = -0.5 * -4/-2.5 = -0.8
    # output 1: 1*(-1-1) + (-2)*(0.5+0.5) + 0 = -4 -> R to x1 = -2 * -2/-4 = -1, to x2 = -2 * -2/-4 = -1
    expected = torch.tensor([[0.2 - 1.0, -0.8 - 1.0]])
    torch.testing.assert_close(x.detach() * grad, expected)


@pytest.mark.parametrize("gamma", [0.01, 0.25, 100.0])
@pytest.mark.parametrize("scaling", ["plain", "scale", "rows", "outputs"])
def test_gamma_linear_equals_the_explicit_rule(gamma, scaling):
    """The backward's closed form (one |x| |W| matmul) against zennit's two weighted sums, written out."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, dtype=torch.float64, generator=generator)
    x[0, 0, :3] = 0.0  # zero inputs: neither x+ nor x- carries them
    weight = torch.randn(6, 7, dtype=torch.float64, generator=generator)
    bias = torch.randn(6, dtype=torch.float64, generator=generator)
    grad = torch.randn(2, 5, 6, dtype=torch.float64, generator=generator)
    options, at_z, at_x = {}, torch.ones(6, dtype=torch.float64), 1.0
    if scaling == "scale":
        options["scale"] = at_x = 0.5
    elif scaling == "rows":
        options["rows"] = at_z = torch.tensor([0.5, 0.5, 2.0, 1.0, 1.0, 0.25], dtype=torch.float64)
    elif scaling == "outputs":
        options["outputs"] = slice(4, 6)
        at_z[:4] = 0.0
    x.requires_grad_(True)
    z = F.linear(x, weight, bias)
    out = gamma_linear(x, z, weight, bias, gamma, **options)
    torch.testing.assert_close(out, z, rtol=0, atol=0)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    expected = at_x * oracle.gamma_rule(
        (z * grad * at_z).reshape(10, 6), x.detach().reshape(10, 7), weight, bias, gamma
    )
    torch.testing.assert_close(x.detach() * grad_x, expected.reshape(2, 5, 7), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "size, kernel, stride, padding",
    [(18, 8, 8, 0), (16, 4, 4, 0), (9, 3, 2, 1)],
    ids=["remainder", "patches", "overlap"],
)
def test_gamma_conv_equals_the_explicit_rule(size, kernel, stride, padding):
    """Patchifying convolutions (a matmul in the backward; a remainder gets no gradient) and a general one."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, kernel, stride=stride, padding=padding).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    z = conv(x)
    out = gamma_conv(x, z, conv, 0.25)
    torch.testing.assert_close(out, z, rtol=0, atol=0)
    grad = torch.randn_like(z)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    patches = F.unfold(x.detach(), kernel, padding=padding, stride=stride).transpose(1, 2)  # [B, L, 3 k k]
    relevance = (z * grad).flatten(2).transpose(1, 2)  # [B, L, 4]
    r_patches = oracle.gamma_rule(relevance, patches, conv.weight.detach().flatten(1), conv.bias.detach(), 0.25)
    expected = F.fold(r_patches.transpose(1, 2), (size, size), kernel, padding=padding, stride=stride)
    torch.testing.assert_close(x.detach() * grad_x, expected, rtol=1e-10, atol=1e-12)


def test_layer_norm_and_identity_rules_equal_their_surrogates():
    """The LayerNorm rule's gradients (input, bias) and the identity rule's, against autograd through the forms they
    replace: the normalisation with its std detached, and ``x * stopgrad(f(x) / x)``."""
    generator = torch.Generator().manual_seed(0)
    norm = torch.nn.LayerNorm(8).double()
    with torch.no_grad():
        norm.weight.normal_(generator=generator)
        norm.bias.normal_(generator=generator)
    x = torch.randn(3, 4, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    grad = torch.randn(3, 4, 8, dtype=torch.float64, generator=generator)
    out = layer_norm_rule(x, norm(x), norm)
    centred = x - x.mean(dim=-1, keepdim=True)
    std = (centred.detach().pow(2).mean(dim=-1, keepdim=True) + norm.eps).sqrt()
    surrogate = centred / std * norm.weight + norm.bias
    torch.testing.assert_close(out, surrogate, rtol=0, atol=1e-12)
    for got, want in zip(
        torch.autograd.grad(out, [x, norm.bias], grad),
        torch.autograd.grad(surrogate, [x, norm.bias], grad),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    f = F.gelu(x)
    (got,) = torch.autograd.grad(identity_rule(x, f), x, torch.full_like(x, 3.0))
    ratio = torch.where(x == 0, 0.0, f.detach() / torch.where(x == 0, 1.0, x.detach()))
    torch.testing.assert_close(got, 3.0 * ratio, rtol=1e-15, atol=0)


# --- conservation --------------------------------------------------------------------------------------------------

CONSERVATION_CASES = ["vit", "registers", "deit_distilled", "avgpool", "swin"]


def is_additive(name):
    """Parameters that enter by addition (they absorb relevance); weights and LayerNorm scales multiply."""
    last = name.rsplit(".", 1)[-1]
    return last in ("bias", "cls_token", "reg_token", "dist_token", "pos_embed", "relative_position_bias_table")


@pytest.mark.parametrize("case", CONSERVATION_CASES)
def test_cp_without_biases_conserves_the_logit(case, tiny_vit, tiny_kwargs, tiny_images):
    """With every additive parameter at 0, CP-LRP with gamma 0 gives each image's logit to its pixels."""
    model = make_model(case, tiny_vit, tiny_kwargs)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_additive(name):
                param.zero_()
    images = images_for(case, 3, tiny_images)
    target = torch.tensor([1, 0, 4])
    explainer = X.create("attnlrp", model, attention_rule="cp", gamma=0, conv_gamma=0)
    maps = explainer(images, target)
    logits = model(images).gather(1, target[:, None])[:, 0].detach()
    torch.testing.assert_close(maps.sum(dim=(1, 2)), logits, rtol=1e-4, atol=1e-5)
    single = torch.cat([explainer(images[i : i + 1], target[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(maps, single, rtol=0, atol=1e-5 * max(1.0, float(single.abs().max())))


@pytest.mark.parametrize("case", CONSERVATION_CASES)
@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
def test_relevance_balance_with_biases(case, rule, tiny_vit, tiny_kwargs, tiny_images):
    """logit = pixels' relevance + what each additive parameter absorbs (p * dy/dp in the modified backward)
    + each softmax's Taylor bias term (AttnLRP: R_out - R_in, from the probabilities and their gradient)."""
    model = make_model(case, tiny_vit, tiny_kwargs)
    images = images_for(case, 2, tiny_images)
    target = torch.tensor([2, 3])
    maps = X.create("attnlrp", model, attention_rule=rule, gamma=0, conv_gamma=0)(images, target)
    adapter = detect(model)
    # cp: the attention probabilities are constants, so the position bias inside them receives no relevance
    inside_attention = "relative_position_bias_table" if rule == "cp" else None
    additive = [
        p for name, p in model.named_parameters() if is_additive(name) and not name.endswith(str(inside_attention))
    ]
    for i in range(2):
        probs, handles = [], []

        def keep(module, inputs, output, probs=probs):
            probs.append(output)

        for attn in adapter.attention_modules() if rule == "attnlrp" else []:  # cp: A is constant, no softmax rule
            handles.append(attn.attn_drop.register_forward_hook(keep))
        image = images[i : i + 1].clone().requires_grad_(True)
        try:
            with explaining(adapter), lrp_rules(model, modified_backward(rule, 0.0, 0.0)):
                logit = model(image)[0, target[i]]
        finally:
            for handle in handles:
                handle.remove()
        grads = torch.autograd.grad(logit, [image, *additive, *probs])
        pixels = (image.detach() * grads[0]).sum()
        absorbed = sum(float((p.detach() * g).sum()) for p, g in zip(additive, grads[1:], strict=False))
        softmax_terms = 0.0
        for s, g in zip(probs, grads[1 + len(additive) :], strict=True):
            r_out = s * g
            # R_in = x (R_out - s sum R_out), with x = log s up to a per-row constant that this sum cancels
            r_in = torch.special.xlogy(s, s) * (g - r_out.sum(dim=-1, keepdim=True))
            softmax_terms += float((r_out - r_in).sum().detach())
        assert (rule == "attnlrp") == bool(probs)
        torch.testing.assert_close(float(maps[i].sum()), float(pixels), rtol=1e-5, atol=1e-5)
        total = float(pixels) + absorbed + softmax_terms
        value = float(logit.detach())
        assert abs(total - value) <= 1e-4 * max(1.0, abs(value)), (total, value)
        assert abs(absorbed) > 1e-3  # the biases do absorb: the balance needs every term


# --- Swin, options, group, the model left as found ----------------------------------------------------------------


def test_swin_maps_at_the_first_stage_grid_and_batch_equals_single():
    model = make_swin()
    images = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    explainer = X.create("attnlrp", model)
    maps = explainer(images, 2)
    assert maps.shape == (3, 10, 10)
    pixels = explainer.pixel_relevance(images, 2)
    torch.testing.assert_close(maps, pixels.reshape(3, 10, 4, 10, 4).sum(dim=(2, 4)), rtol=0, atol=1e-6)
    single = torch.cat([explainer(images[i : i + 1], 2) for i in range(3)])
    torch.testing.assert_close(maps, single, rtol=0, atol=1e-5 * max(1.0, float(single.abs().max())))


def test_attention_rules_differ_and_cp_ignores_queries_and_keys(tiny_vit, tiny_images):
    model = tiny_vit()
    images = tiny_images()
    attnlrp = X.create("attnlrp", model)(images, 1)
    cp = X.create("attnlrp", model, attention_rule="cp")(images, 1)
    assert not torch.allclose(attnlrp, cp, atol=1e-3)


@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
def test_fused_and_explicit_attention_give_one_map(rule, tiny_vit, tiny_images):
    """The uniform rule runs on timm's fused kernel where the model uses it (CP-LRP needs the explicit path);
    the maps agree with the explicit path's and every flag is as it was."""
    model = tiny_vit()
    images = tiny_images()
    explainer = X.create("attnlrp", model, attention_rule=rule)
    fused = explainer(images, 1)
    assert all(block.attn.fused_attn for block in model.blocks)
    for block in model.blocks:
        block.attn.fused_attn = False
    explicit = explainer(images, 1)
    assert not any(block.attn.fused_attn for block in model.blocks)
    torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-5 * float(explicit.abs().max()))


def test_group_runs_attnlrp_in_its_own_pass(tiny_vit, tiny_images):
    model = tiny_vit()
    images = tiny_images(batch=2)
    group = X.create_many({"rollout": {}, "attnlrp": {"attention_rule": "cp"}}, model)
    forwards = []
    handle = model.register_forward_pre_hook(lambda m, i: forwards.append(1))
    try:
        maps = group(images)
    finally:
        handle.remove()
    assert len(forwards) == 2  # the readouts' capture and attnlrp's own pass
    predicted = model(images).argmax(dim=1)
    alone = X.create("attnlrp", model, attention_rule="cp")(images, predicted)
    torch.testing.assert_close(maps["attnlrp"], alone, rtol=0, atol=0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"attention_rule": "uniform"}, r"attention_rule must be one of \['attnlrp', 'cp'\], got 'uniform'"),
        ({"gamma": -0.1}, "gamma must be a number >= 0, got -0.1"),
        ({"conv_gamma": "0.25"}, "conv_gamma must be a number >= 0"),
    ],
)
def test_bad_options(options, message, tiny_vit):
    with pytest.raises(ValueError, match=message):
        X.create("attnlrp", tiny_vit(), **options)


def test_registry_entry():
    info = X.get_info("attnlrp")
    assert (info.needs_gradients, info.readout, info.families, info.signed) == (True, False, ("vit", "swin"), True)


def class_state():
    """Every attribute of the torch and timm classes and functions a rule could have patched."""
    from timm.layers import Mlp
    from timm.models import swin_transformer, vision_transformer

    classes = [
        torch.nn.Linear,
        torch.nn.Conv2d,
        torch.nn.LayerNorm,
        torch.nn.GELU,
        torch.nn.Module,
        torch.Tensor,
        Mlp,
        vision_transformer.Attention,
        vision_transformer.Block,
        vision_transformer.VisionTransformer,
        swin_transformer.WindowAttention,
        swin_transformer.SwinTransformerBlock,
    ]
    state = {cls: dict(vars(cls)) for cls in classes}
    for module in (F, torch, vision_transformer, swin_transformer):
        state[module] = dict(vars(module))
    return state


def test_no_class_or_function_is_patched_even_when_the_pass_raises(tiny_vit, tiny_images):
    before = class_state()
    model = tiny_vit()
    explainer = X.create("attnlrp", model)
    explainer(tiny_images(batch=2), 1)

    def fail(module, inputs, output):
        raise RuntimeError("user hook fails halfway")

    handle = model.blocks[1].mlp.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="halfway"):
        explainer(tiny_images(batch=2))
    handle.remove()
    after = class_state()
    for owner, attributes in before.items():
        changed = [
            name
            for name in attributes.keys() | after[owner].keys()
            if attributes.get(name) is not after[owner].get(name)
        ]
        assert not changed, (owner, changed)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())
