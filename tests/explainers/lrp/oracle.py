"""The LRP tests' dense oracle: one image at a time, every intermediate kept, the rules written out in index notation.

Independent of the package's batched pass: the ViT oracles run their own forward (``vit_forward``) and their own
arithmetic for every rule (Chefer et al.'s and the LRP baselines' for the explicit engine, AttnLRP's gamma, LayerNorm
and attention rules for the modified backward, the z^B rule below the patch embedding), on ``[N, D]`` tensors, in the
model's dtype (the tests run them in float64 and, to measure rounding, in float32).

The Swin oracle (``swin_forward``, ``swin_maps``) checks the window plumbing: it runs each block's attention over the
whole padded grid as one block-diagonal matrix, tokens in natural order, and carries the relevance with the package's
rule classes (which ``test_rules.py`` checks by hand), so what it tests is the shift, padding, windows and merging.

Imported by the tests after ``sys.path.insert(0, <this folder>)``, as ``tests/golden_maps.py`` is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_vitx.explainers.lrp.rules import EndsRule, LinearRule, ProductRule, ResidualRule

# --- the ViT forward, one image, written out ------------------------------------------------------------------------


def vit_forward(model, image):
    """A class-token ViT's forward (distilled DeiT, register tokens) for one image ``[3, H, W]``, every tensor kept.

    Returns a dict: ``embedded`` ``[P, D]`` (the patch embedding), ``sequence`` ``[N, D]`` (prefix tokens and
    position embedding added, before ``norm_pre``), ``blocks`` (per block: ``x`` its input, ``h1 = norm1(x)``, ``q``,
    ``k``, ``v`` ``[heads, N, d]``, ``A`` the attention probabilities ``[heads, N, N]``, ``o`` the heads' output
    ``[N, D]``, ``a = proj(o)``, ``mid = x + a``, ``h2 = norm2(mid)``, ``f1`` the activation's output, ``m`` the
    MLP's), ``out`` the last block's output, ``final = norm(out)``, ``classifiers`` (``head``, and ``head_dist``
    reading row 1), ``heads_out`` their outputs and ``logits`` their mean. Autograd records it where it is on.
    """
    embedded = model.patch_embed(image[None])[0]
    sequence = model._pos_embed(embedded[None])[0]
    x = model.norm_pre(sequence)
    blocks = []
    for block in model.blocks:
        tokens, width = x.shape
        h1 = block.norm1(x)
        q, k, v = block.attn.qkv(h1).reshape(tokens, 3, block.attn.num_heads, -1).permute(1, 2, 0, 3)
        attention = torch.softmax(torch.einsum("hid,hjd->hij", q, k) * block.attn.scale, dim=-1)
        o = torch.einsum("hij,hjd->ihd", attention, v).reshape(tokens, width)
        a = block.attn.proj(o)
        mid = x + a
        h2 = block.norm2(mid)
        f1 = block.mlp.act(block.mlp.fc1(h2))
        m = block.mlp.fc2(f1)
        blocks.append(dict(x=x, h1=h1, q=q, k=k, v=v, A=attention, o=o, a=a, mid=mid, h2=h2, f1=f1, m=m))
        x = mid + m
    final = model.norm(x)
    classifiers = [model.head] + ([model.head_dist] if getattr(model, "head_dist", None) is not None else [])
    heads_out = [classifier(final[row]) for row, classifier in enumerate(classifiers)]
    logits = sum(heads_out) / len(heads_out)
    tolerance = 1e-9 if logits.dtype == torch.float64 else 1e-4
    with torch.no_grad():
        torch.testing.assert_close(logits, model(image[None])[0], rtol=tolerance, atol=tolerance / 10)
    return dict(
        embedded=embedded,
        sequence=sequence,
        blocks=blocks,
        out=x,
        final=final,
        classifiers=classifiers,
        heads_out=heads_out,
        logits=logits,
    )


# --- the explicit engine's rules (Chefer et al.'s code), one image, index notation, autograd VJPs -----------------


def ratio(a, b):
    """``a / (b + 1e-9)``, 0 where ``b`` is 0: the reference's stabiliser."""
    return torch.where(b == 0, 0.0, a / (b + 1e-9))


@torch.enable_grad()
def joint_linear(relevance, x, weight):
    """Chefer's alpha-1 rule: both sign terms over one denominator, ``z+ + z-``."""
    x = x.detach()
    x_pos, x_neg = x.clamp(min=0).requires_grad_(True), x.clamp(max=0).requires_grad_(True)
    z = x_pos @ weight.clamp(min=0).T + x_neg @ weight.clamp(max=0).T
    g_pos, g_neg = torch.autograd.grad(z, (x_pos, x_neg), ratio(relevance, z))
    return (x_pos * g_pos + x_neg * g_neg).detach()


@torch.enable_grad()
def per_term_linear(relevance, x, weight):
    """The baselines' alpha-1 rule: each sign term divided by its own part."""
    x = x.detach()
    x_pos, x_neg = x.clamp(min=0).requires_grad_(True), x.clamp(max=0).requires_grad_(True)
    z_pos, z_neg = x_pos @ weight.clamp(min=0).T, x_neg @ weight.clamp(max=0).T
    (g_pos,) = torch.autograd.grad(z_pos, x_pos, ratio(relevance, z_pos))
    (g_neg,) = torch.autograd.grad(z_neg, x_neg, ratio(relevance, z_neg))
    return (x_pos * g_pos + x_neg * g_neg).detach()


def plain_split(relevance, a, b, total=None):
    """The baselines' LRP-0 split of ``a + b`` (``total``: the recorded sum, which ``a + b`` recomputed can round
    far from near 0)."""
    scaled = ratio(relevance, a + b if total is None else total)
    return a * scaled, b * scaled


def renormalised_split(relevance, a, b, total=None):
    """Chefer's split of ``a + b``: LRP-0, then each side rescaled to its absolute share of the image's total."""
    r_a, r_b = plain_split(relevance, a, b, total)
    sum_a, sum_b, whole = r_a.sum(), r_b.sum(), relevance.sum()
    both = sum_a.abs() + sum_b.abs()
    return r_a * (sum_a.abs() / both * whole / sum_a), r_b * (sum_b.abs() / both * whole / sum_b)


RULE_SETS = {"chefer": (joint_linear, renormalised_split), "baseline": (per_term_linear, plain_split)}


def attention_products(r_o, step):
    """Relevance ``[N, D]`` at the heads' output -> (``R^(A)`` ``[heads, N, N]``, relevance ``[N, 3D]`` at ``qkv``).

    LRP-0 through ``A v`` and ``q k^T`` to both operands, each result halved (the scale and softmax: none).
    """
    q, k, v, attention = step["q"], step["k"], step["v"], step["A"]
    tokens = len(step["x"])
    scaled = ratio(r_o.reshape(tokens, -1, v.shape[-1]).transpose(0, 1), torch.einsum("hij,hjd->hid", attention, v))
    r_attention = attention * torch.einsum("hjd,hid->hij", v, scaled) / 2
    r_v = v * torch.einsum("hij,hid->hjd", attention, scaled) / 2
    dots = ratio(r_attention, torch.einsum("hid,hjd->hij", q, k))
    r_q = q * torch.einsum("hjd,hij->hid", k, dots) / 2
    r_k = k * torch.einsum("hid,hij->hjd", q, dots) / 2
    return r_attention, torch.stack([r_q, r_k, r_v]).permute(2, 0, 1, 3).reshape(tokens, -1)


@torch.no_grad()
def explicit_relevance(model, forward, target, rule_set, lowest=0):
    """The explicit engine's pass for one image from a relevance of 1 at logit ``target``, down to block ``lowest``.

    Returns the relevance ``[N, D]`` at block ``lowest``'s input (``norm_pre`` passes it: it is the sequence's) and
    ``R^(A)`` of each block (``None`` below ``lowest``). The heads of distilled DeiT split the logit by the residual
    rule; each head's Linear rule goes to the token row it reads.
    """
    linear, split = RULE_SETS[rule_set]
    classifiers, heads_out, final = forward["classifiers"], forward["heads_out"], forward["final"]
    start = torch.zeros_like(forward["logits"])
    start[target] = 1.0
    shares = [start] if len(classifiers) == 1 else list(split(start, heads_out[0], heads_out[1]))
    relevance = torch.zeros_like(final)
    for row, (share, classifier) in enumerate(zip(shares, classifiers, strict=True)):
        relevance[row] = linear(share[None], final[row][None], classifier.weight)[0]
    attention_relevances = [None] * len(model.blocks)
    for index in reversed(range(lowest, len(model.blocks))):
        block, s = model.blocks[index], forward["blocks"][index]
        residual, branch = split(relevance, s["mid"], s["m"])
        branch = linear(linear(branch, s["f1"], block.mlp.fc2.weight), s["h2"], block.mlp.fc1.weight)
        relevance = residual + branch
        residual, branch = split(relevance, s["x"], s["a"])
        attention_relevances[index], r_qkv = attention_products(linear(branch, s["o"], block.attn.proj.weight), s)
        relevance = residual + linear(r_qkv, s["h1"], block.attn.qkv.weight)
    return relevance, attention_relevances


def transformer_attribution_map(model, image, target, start_layer=0):
    """Chefer et al.'s transformer attribution for one image: the ``N x N`` matrix chain, read at the readout rows."""
    with torch.enable_grad():
        forward = vit_forward(model, image)
        grads = torch.autograd.grad(forward["logits"][target], [s["A"] for s in forward["blocks"]])
    _, found = explicit_relevance(model, forward, target, "chefer", lowest=start_layer)
    tokens = len(forward["final"])
    chain = torch.eye(tokens, dtype=image.dtype)
    for grad, r_attention in zip(grads[start_layer:], found[start_layer:], strict=True):
        fused = (grad * r_attention).clamp(min=0).mean(dim=0)
        chain = (torch.eye(tokens, dtype=image.dtype) + fused) @ chain  # later blocks on the left
    readout = chain[: len(forward["classifiers"])].mean(dim=0)  # the class token (and the distillation token)
    return readout[model.num_prefix_tokens :].reshape(model.patch_embed.grid_size).detach()


def partial_lrp_map(model, image, target):
    """Partial LRP for one image: the baselines' ``R^(A)`` of the last block, positive part, mean over heads, at the
    readout rows and the patch columns."""
    with torch.no_grad():
        forward = vit_forward(model, image)
    _, found = explicit_relevance(model, forward, target, "baseline", lowest=len(model.blocks) - 1)
    readout = found[-1].clamp(min=0).mean(dim=0)[: len(forward["classifiers"])].mean(dim=0)
    return readout[model.num_prefix_tokens :].reshape(model.patch_embed.grid_size)


def lrp_map(model, image, target):
    """Full LRP for one image: the baselines' relevance at the first block's input, the position embedding's sum
    split by LRP-0, each patch embedding's share summed over channels."""
    with torch.no_grad():
        forward = vit_forward(model, image)
    relevance, _ = explicit_relevance(model, forward, target, "baseline")
    prefix = model.num_prefix_tokens
    tokens = forward["sequence"][prefix:]  # the patch embeddings plus the position embedding
    patches = (forward["embedded"] * ratio(relevance[prefix:], tokens)).sum(dim=-1)
    return patches.reshape(model.patch_embed.grid_size)


def zbox(relevance, image, conv):
    """The z^B rule through a patch convolution for one image: ``[D, gh, gw]`` at its output -> ``[3, H, W]``.

    Bounds ``L``, ``H``: the image's minimum and maximum; ``z = p W^T - L sum(W+) - H sum(W-)`` per patch ``p``;
    ``R_p = p (s W) - L (s W+) - H (s W-)``, ``s = R / z`` (bias ignored).
    """
    size = tuple(conv.kernel_size)
    patches = F.unfold(image[None], size, stride=size)[0].T  # [P, 3 kh kw]
    weight = conv.weight.flatten(1)  # [D, 3 kh kw]
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    low, high = image.min(), image.max()
    z = patches @ weight.T - low * w_pos.sum(dim=1) - high * w_neg.sum(dim=1)  # [P, D]
    scaled = ratio(relevance.flatten(1).T, z)
    at_patches = patches * (scaled @ weight) - low * (scaled @ w_pos) - high * (scaled @ w_neg)
    return F.fold(at_patches.T[None], image.shape[-2:], size, stride=size)[0]


@torch.no_grad()
def transformer_attribution_pixels(model, image, target):
    """The reference's ``relprop(method="full")`` on ``ViT_LRP`` for one image ``[H, W]``.

    Chefer's rules to the first block's input, their residual rule on the position embedding's sum (over the whole
    sequence, or the patches alone without an embedding for the class token), the prefix rows dropped, the patch
    convolution's z^B rule, summed over RGB.
    """
    forward = vit_forward(model, image)
    relevance, _ = explicit_relevance(model, forward, target, "chefer")
    embedded, sequence = forward["embedded"], forward["sequence"]
    if model.no_embed_class:
        covered, relevance = sequence[-len(embedded) :], relevance[-len(embedded) :]
    else:
        covered = sequence
    position = model.pos_embed[0]
    at_tokens, at_position = renormalised_split(relevance, covered - position, position, total=covered)
    assert at_tokens.sum().abs() > 0.01 * at_position.sum().abs()  # both sides of the sum take a share
    at_conv = at_tokens[-len(embedded) :].T.reshape(-1, *model.patch_embed.grid_size)
    return zbox(at_conv, image, model.patch_embed.proj).sum(dim=0)


# --- AttnLRP / CP-LRP: the relevance form (not the gradient form), one image -----------------------------------------


def stab(d, eps=1e-6):
    return d + eps * torch.where(d >= 0, 1.0, -1.0).to(d)


def eps_split(relevance, parts):
    """Epsilon-0 rule through a sum: each summand gets its share ``part * R / sum``."""
    total = sum(parts)
    return [part * relevance / total for part in parts]


def gamma_rule(relevance, x, weight, bias, gamma):
    """zennit's generalised Gamma rule, written out; gamma 0: the epsilon-0 rule with the bias keeping its share."""
    z = x @ weight.T + bias
    if gamma == 0:
        return x * ((relevance / z) @ weight)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    w_up, w_down = weight + gamma * weight.clamp(min=0), weight + gamma * weight.clamp(max=0)
    b_up, b_down = bias + gamma * bias.clamp(min=0), bias + gamma * bias.clamp(max=0)
    up = relevance * (z > 0) / stab(x_pos @ w_up.T + x_neg @ w_down.T + b_up)
    down = relevance * (z < 0) / stab(x_pos @ w_down.T + x_neg @ w_up.T + b_down)
    return x_pos * (up @ w_up + down @ w_down) + x_neg * (up @ w_down + down @ w_up)


def layer_norm_rule(relevance, x, norm):
    """Std held constant: y = C x / std * w + b, a linear map of x; the epsilon-0 rule through it."""
    centring = torch.eye(x.shape[-1], dtype=x.dtype) - 1.0 / x.shape[-1]
    std = (x.var(dim=-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    y = (x @ centring) / std * norm.weight + norm.bias
    return x * (((relevance / y) * norm.weight / std) @ centring)


def attnlrp_attention(relevance, step, attn, rule, gamma):
    """R at the attention's output ``[N, D]`` -> R at its input ``h1`` ``[N, D]``."""
    tokens, width = step["h1"].shape
    q, k, v, probs = step["q"] * attn.scale, step["k"], step["v"], step["A"]  # [heads, N, d], the scale on q
    scores = q @ k.transpose(-2, -1)
    heads_out = probs @ v
    r_o = gamma_rule(relevance, step["o"], attn.proj.weight, attn.proj.bias, gamma)
    r_o = r_o.reshape(tokens, attn.num_heads, -1).transpose(0, 1)  # [heads, N, d]
    if rule == "cp":  # probabilities are constant weights: the epsilon rule to v only
        r_q = r_k = torch.zeros_like(q)
        r_v = v * (probs.transpose(-2, -1) @ (r_o / heads_out))
    else:  # uniform rule on A v, AttnLRP's softmax rule, uniform rule on q k^T
        share = r_o / (2 * heads_out)
        r_probs = probs * (share @ v.transpose(-2, -1))
        r_v = v * (probs.transpose(-2, -1) @ share)
        r_scores = scores * (r_probs - probs * r_probs.sum(dim=-1, keepdim=True))
        share = r_scores / (2 * scores)
        r_q, r_k = q * (share @ k), k * (share.transpose(-2, -1) @ q)
    r_qkv = torch.stack([r_q, r_k, r_v]).permute(2, 0, 1, 3).reshape(tokens, 3 * width)
    return gamma_rule(r_qkv, step["h1"], attn.qkv.weight, attn.qkv.bias, gamma)


@torch.no_grad()
def attnlrp_pixels(model, image, target, rule, gamma, conv_gamma):
    """Pixel relevance ``[H, W]`` of one image for a class-token ViT (DeiT distilled too), every rule written out."""
    assert isinstance(model.norm_pre, nn.Identity)  # a LayerNorm there would take the LayerNorm rule
    forward = vit_forward(model, image)
    classifiers, outputs, final = forward["classifiers"], forward["heads_out"], forward["final"]
    logits = forward["logits"]
    start = torch.zeros_like(logits)
    start[target] = logits[target]  # Gradient x Input: the logit's own value
    relevance = torch.zeros_like(final)
    shares = eps_split(start, [o / len(outputs) for o in outputs])
    for row, (share, c) in enumerate(zip(shares, classifiers, strict=True)):
        relevance[row] = gamma_rule(share[None], final[row][None], c.weight, c.bias, gamma)[0]
    relevance = layer_norm_rule(relevance, forward["out"], model.norm)
    for block, s in zip(reversed(model.blocks), reversed(forward["blocks"]), strict=True):
        r_mid, r_m = eps_split(relevance, [s["mid"], s["m"]])
        r_f = gamma_rule(r_m, s["f1"], block.mlp.fc2.weight, block.mlp.fc2.bias, gamma)  # identity through GELU
        r_h2 = gamma_rule(r_f, s["h2"], block.mlp.fc1.weight, block.mlp.fc1.bias, gamma)
        relevance = r_mid + layer_norm_rule(r_h2, s["mid"], block.norm2)
        r_x, r_a = eps_split(relevance, [s["x"], s["a"]])
        r_h1 = attnlrp_attention(r_a, s, block.attn, rule, gamma)
        relevance = r_x + layer_norm_rule(r_h1, s["x"], block.norm1)
    prefix, embedded = model.num_prefix_tokens, forward["embedded"]
    r_embedded = eps_split(relevance[prefix:], [embedded, forward["sequence"][prefix:] - embedded])[0]
    conv = model.patch_embed.proj
    size = tuple(conv.kernel_size)
    patches = F.unfold(image[None], size, stride=size)[0].T  # [P, 3 ph pw]
    r_patches = gamma_rule(r_embedded, patches, conv.weight.flatten(1), conv.bias, conv_gamma)
    return F.fold(r_patches.T[None], image.shape[-2:], size, stride=size)[0].sum(dim=0)


# --- Swin: each block's attention over the padded grid as one block-diagonal matrix, natural token order --------


def selection(block, height, width):
    """``P [Hp * Wp, H * W]``: the block's shifted, padded token grid from the natural one (rows of padding: 0)."""
    (wh, ww), (sh, sw) = block.window_size, block.shift_size
    hp, wp = -(-height // wh) * wh, -(-width // ww) * ww
    matrix = torch.zeros(hp * wp, height * width, dtype=torch.float64)
    window = torch.zeros(hp * wp, dtype=torch.long)
    local = torch.zeros(hp * wp, dtype=torch.long)
    for r in range(hp):
        for c in range(wp):
            if r < height and c < width:
                matrix[r * wp + c, ((r + sh) % height) * width + (c + sw) % width] = 1.0  # roll by -shift
            window[r * wp + c] = (r // wh) * (wp // ww) + c // ww
            local[r * wp + c] = (r % wh) * ww + c % ww
    return matrix, window, local


def gathers(height, width):
    """The four ``[H/2 * W/2, H * W]`` selections of patch merging, children in timm's order (padding: 0 rows)."""
    h2, w2 = -(-height // 2), -(-width // 2)
    out = []
    for dy, dx in ((0, 0), (1, 0), (0, 1), (1, 1)):
        matrix = torch.zeros(h2 * w2, height * width, dtype=torch.float64)
        for i in range(h2):
            for j in range(w2):
                if 2 * i + dy < height and 2 * j + dx < width:
                    matrix[i * w2 + j, (2 * i + dy) * width + 2 * j + dx] = 1.0
        out.append(matrix)
    return out


def spreading(coarse, fine):
    """``[coarse, fine]``: each fine token a quarter of its parent (the rollout's uniform rule between stages)."""
    matrix = torch.zeros(coarse[0] * coarse[1], fine[0] * fine[1], dtype=torch.float64)
    for r in range(fine[0]):
        for c in range(fine[1]):
            matrix[(r // 2) * coarse[1] + c // 2, r * fine[1] + c] = 0.25
    return matrix


def swin_forward(model, image):
    """The Swin forward per token in natural order, with each block's attention over the whole padded grid."""
    x = model.patch_embed(image[None])[0]  # [H, W, C]
    height, width = x.shape[:2]
    x = x.reshape(height * width, -1)
    steps = []
    for stage in model.layers:
        if not isinstance(stage.downsample, nn.Identity):
            merge = stage.downsample
            parts = [g.to(x.dtype) for g in gathers(height, width)]
            n = merge.norm(torch.cat([g @ x for g in parts], dim=-1))
            steps.append(dict(kind="merge", module=merge, parts=parts, n=n))
            x, (height, width) = merge.reduction(n), (-(-height // 2), -(-width // 2))
        for block in stage.blocks:
            attn, heads = block.attn, block.attn.num_heads
            p, window, local = selection(block, height, width)
            p = p.to(x.dtype)
            h1 = p @ block.norm1(x)  # [Np, C], padding rows 0 after the norm, as timm pads
            q, k, v = attn.qkv(h1).reshape(len(h1), 3, heads, -1).permute(1, 2, 0, 3)  # [heads, Np, d]
            table = attn.relative_position_bias_table[attn.relative_position_index]  # [w, w, heads]
            scores = q @ k.transpose(-2, -1) * attn.scale + table[local][:, local].permute(2, 0, 1)
            if block.attn_mask is not None:
                scores = scores + block.attn_mask[window][torch.arange(len(h1)), local][:, local]
            scores = scores.masked_fill(window[:, None] != window[None, :], float("-inf"))
            attention = torch.softmax(scores, dim=-1)
            o = (attention @ v).transpose(0, 1).reshape(len(h1), -1)
            a = p.T @ attn.proj(o)
            mid = x + a
            h2 = block.norm2(mid)
            f1 = block.mlp.act(block.mlp.fc1(h2))
            m = block.mlp.fc2(f1)
            steps.append(dict(kind="block", module=block, p=p, x=x, h1=h1, q=q, k=k, v=v, A=attention, o=o, a=a))
            steps[-1].update(mid=mid, h2=h2, f1=f1, m=m, grid=(height, width))
            x = mid + m
    final = model.norm(x)
    pooled = final.mean(dim=0)
    return steps, final, pooled, model.head.fc(pooled)


def swin_maps(model, image, target, rule_set):
    """The three explicit explainers' maps on a Swin for one image, with the rule classes of ``rule_set``
    (``"chefer"`` or ``"baseline"``) on natural-order tensors; also the relevance's ``total`` at the first block's
    input and what padding (and ``z = 0``) ``dropped`` on the way."""
    one = lambda t: t[None].detach()  # noqa: E731  (the rules take a batch of one)
    chefer = rule_set == "chefer"
    linear, residual, product = LinearRule(joint=chefer), ResidualRule(renormalise=chefer), ProductRule()
    steps, final, pooled, logits = swin_forward(model, image)
    tolerance = 1e-9 if logits.dtype == torch.float64 else 1e-4
    torch.testing.assert_close(logits, model(image[None])[0], rtol=tolerance, atol=tolerance)
    blocks = [s for s in steps if s["kind"] == "block"]
    grads = torch.autograd.grad(logits[target], [s["A"] for s in blocks])
    start = F.one_hot(torch.tensor([target]), logits.shape[-1]).to(logits.dtype)
    at_pool = linear(start, one(pooled), model.head.fc.weight.to(logits.dtype))
    relevance = EndsRule.mean(at_pool, one(final))
    fused, attention_relevance, dropped = [], [], 0.0
    for step in reversed(steps):
        if step["kind"] == "merge":
            at_norm = linear(relevance, one(step["n"]), step["module"].reduction.weight)
            chunks = at_norm[0].chunk(4, dim=-1)
            below = sum(g.T @ chunk for g, chunk in zip(step["parts"], chunks, strict=True))[None]
            dropped += float((at_norm.sum() - below.sum()).detach())
            relevance = below
            continue
        block, s = step["module"], {key: one(value) for key, value in step.items() if torch.is_tensor(value)}
        kept, branch = residual.split(relevance, s["mid"], s["m"])
        branch = linear(branch, s["f1"], block.mlp.fc2.weight)
        branch = linear(branch, s["h2"], block.mlp.fc1.weight)
        relevance = ResidualRule.fork(kept, branch, s["mid"])
        kept, branch = residual.split(relevance, s["x"], s["a"])
        at_o = linear(step["p"] @ branch[0], s["o"], block.attn.proj.weight)
        at_o = at_o.reshape(1, len(step["p"]), block.attn.num_heads, -1).transpose(1, 2)
        r_attention, r_v = product(at_o, s["A"], s["v"])
        r_q, r_k = product(r_attention, s["q"], s["k"].transpose(-2, -1))
        r_qkv = torch.stack([r_q, r_k.transpose(-2, -1), r_v]).permute(1, 3, 0, 2, 4).flatten(2)
        at_h1 = linear(r_qkv, s["h1"], block.attn.qkv.weight)
        dropped += float((r_qkv.sum() - at_h1.sum()).detach())  # what the padding rows (zeros) and z = 0 take
        relevance = ResidualRule.fork(kept, (step["p"].T @ at_h1[0])[None], s["x"])
        attention_relevance.insert(0, (step["p"].T @ r_attention[0] @ step["p"]))  # [heads, N, N] natural order
        step["r_attention"] = r_attention[0]
    for step, grad in zip(blocks, grads, strict=True):
        fused.append(step["p"].T @ (grad * step["r_attention"]).clamp(min=0).mean(dim=0) @ step["p"])
    grids = [s["grid"] for s in blocks]
    vector = torch.full((1, grids[-1][0] * grids[-1][1]), 1.0 / (grids[-1][0] * grids[-1][1]), dtype=logits.dtype)
    readout = vector @ attention_relevance[-1].clamp(min=0).mean(dim=0)
    identity = vector  # the identity-only path, a constant on every patch: the map leaves it out
    for index in reversed(range(len(blocks))):
        vector = vector + vector @ fused[index]
        if index and grids[index - 1] != grids[index]:
            vector = vector @ spreading(grids[index], grids[index - 1]).to(vector.dtype)
            identity = identity @ spreading(grids[index], grids[index - 1]).to(vector.dtype)
    vector = vector - identity
    for index in reversed(range(1, len(blocks))):
        if grids[index - 1] != grids[index]:
            readout = readout @ spreading(grids[index], grids[index - 1]).to(readout.dtype)
    first = grids[0]
    return dict(
        transformer_attribution=vector.reshape(first).detach(),
        partial_lrp=readout.reshape(first).detach(),
        lrp=relevance[0].sum(dim=-1).reshape(first).detach(),
        total=float(relevance.sum().detach()),
        dropped=dropped,
    )
