"""The SwinV2 adapter: the recorded attention and the readouts' maps equal a dense per-image oracle in which each
block's cosine attention, continuous position bias and shift mask are recomputed from the module's weights here.

The oracle runs one image at a time in float64 over the block's shifted, padded grid (every token against every
token, pairs in different windows masked), and a hand-written forward through those dense matrices gives the
gradients the gradient readouts read.
"""

import copy
import math
from dataclasses import dataclass

import pytest
import timm
import torch

import lightning_vitx.explainers as X
from lightning_vitx.adapters import SwinTransformerV2Adapter, TokenLayout, capture_pass, detect

TINY = {"embed_dim": 24, "depths": (2, 2), "num_heads": (1, 2), "window_size": 4, "num_classes": 5}
# 32 px: an 8x8 grid in 4x4 windows, then one 4x4 window (unshifted); 40 px: a 10x10 grid padded to 12x12, then
# 5x5 padded to 8x8, shifted in both stages.
SIZES = [32, 40]


def make_swinv2(size: int, seed: int = 0):
    """A random SwinV2 whose blocks do something: timm zeroes the post-norms' weights at init (identity blocks)."""
    torch.manual_seed(seed)
    model = timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=size, **TINY)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight")):
                param.normal_(1.0, 0.1, generator=generator)
            elif name.endswith(("q_bias", "v_bias", "cpb_mlp.0.weight", "cpb_mlp.2.weight")):
                param.normal_(0.0, 1.0, generator=generator)
            elif name.endswith("logit_scale"):  # some heads above the clamp at 100
                param.uniform_(math.log(5.0), math.log(200.0), generator=generator)
        model.head.fc.weight.normal_(0.0, 0.5, generator=generator)
    return model.eval()


@dataclass
class Windows:
    """One block's attention for one image, over its shifted, padded grid ``Hp x Wp`` (``T`` positions)."""

    probs: torch.Tensor  # [heads, T, T], positions row-major on the shifted padded grid
    tokens: torch.Tensor  # [T, C], the block's input there (zeros at the padding)
    ids: torch.Tensor  # [T], each position's token: row-major index on the unshifted grid, then the padding
    members: torch.Tensor  # [windows, w], the positions of each window in timm's window order
    together: torch.Tensor  # [T, T], True for two positions in one window

    def dense(self, matrix: torch.Tensor) -> torch.Tensor:
        """``[..., T, T]`` over positions -> over token ids (the grid's tokens first, row-major), zero across windows.

        A gradient of the dense matrix is not zero across windows (``dout_i . v_j``); the block's attention has no
        such entries, so neither has its gradient.
        """
        out = torch.zeros_like(matrix)
        out[..., self.ids[:, None], self.ids[None, :]] = matrix * self.together
        return out


def log_spaced(offset: torch.Tensor, size: int) -> torch.Tensor:
    """SwinV2's coordinate of a relative offset: scaled to +-8 over the window, then ``sign * log2(1 + |d|) / 3``."""
    scaled = offset.double() * 8.0 / max(size - 1, 1)
    return torch.sign(scaled) * torch.log2(scaled.abs() + 1.0) / 3.0


def cosine_attention(block, x: torch.Tensor) -> Windows:
    """Block ``block``'s attention probabilities for one image's tokens ``x [H, W, C]``, from its weights."""
    attn = block.attn
    (height, width, channels), (wh, ww), (sh, sw) = x.shape, block.window_size, block.shift_size
    hp, wp = -(-height // wh) * wh, -(-width // ww) * ww
    rows, cols = (grid.flatten() for grid in torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij"))
    real = (rows < height) & (cols < width)
    ids = torch.empty(hp * wp, dtype=torch.long)  # the grid rolled by -shift: position (r, c) holds (r+s, c+s)
    ids[real] = ((rows[real] + sh) % height) * width + (cols[real] + sw) % width
    ids[~real] = height * width + torch.arange(int((~real).sum()))
    tokens = torch.zeros(hp * wp, channels, dtype=x.dtype)
    tokens[real] = x.reshape(-1, channels)[ids[real]]

    heads = attn.num_heads
    w_q, w_k, _ = attn.qkv.weight.chunk(3)
    q = (tokens @ w_q.T + attn.q_bias).reshape(hp * wp, heads, -1).transpose(0, 1)
    k = (tokens @ w_k.T + attn.k_bias).reshape(hp * wp, heads, -1).transpose(0, 1)
    q, k = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-12), k / k.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    scale = attn.logit_scale.clamp(max=math.log(100.0)).exp()  # [heads, 1, 1]

    reference = [p if p > 0 else w for p, w in zip(attn.pretrained_window_size, (wh, ww), strict=True)]
    offsets = torch.stack(
        [
            log_spaced(rows[:, None] - rows[None, :], reference[0]),
            log_spaced(cols[:, None] - cols[None, :], reference[1]),
        ],
        dim=-1,
    ).to(x.dtype)  # [T, T, 2]
    first, second = attn.cpb_mlp[0], attn.cpb_mlp[2]
    bias = 16.0 * torch.sigmoid(torch.relu(offsets @ first.weight.T + first.bias) @ second.weight.T)  # [T, T, heads]
    logits = scale * (q @ k.transpose(-2, -1)) + bias.permute(2, 0, 1)

    if sh or sw:  # the rolled-in strips at the bottom/right attend only among themselves: -100, as timm's mask
        strip_r = (rows >= hp - wh).long() + (rows >= hp - sh).long()
        strip_c = (cols >= wp - ww).long() + (cols >= wp - sw).long()
        apart = (strip_r[:, None] != strip_r[None, :]) | (strip_c[:, None] != strip_c[None, :])
        logits = logits - 100.0 * apart
    window = (rows // wh) * (wp // ww) + cols // ww
    logits = logits.masked_fill(window[:, None] != window[None, :], float("-inf"))
    members = torch.empty(int(window.max()) + 1, wh * ww, dtype=torch.long)
    members[window, (rows % wh) * ww + cols % ww] = torch.arange(hp * wp)
    return Windows(logits.softmax(dim=-1), tokens, ids, members, window[:, None] == window[None, :])


def hand_block(block, x: torch.Tensor, windows: Windows, probs: torch.Tensor) -> torch.Tensor:
    """The post-norm block on one image through the dense ``probs``: ``x + norm1(attn(x))``, ``+ norm2(mlp(.))``."""
    attn = block.attn
    height, width, channels = x.shape
    _, _, w_v = attn.qkv.weight.chunk(3)
    v = (windows.tokens @ w_v.T + attn.v_bias).reshape(-1, attn.num_heads, channels // attn.num_heads).transpose(0, 1)
    out = attn.proj((probs @ v).transpose(0, 1).reshape(-1, channels))  # [T, C]
    real = windows.ids < height * width
    branch = torch.zeros(height * width, channels, dtype=x.dtype)
    branch[windows.ids[real]] = out[real]
    x = x + block.norm1(branch.reshape(height, width, channels))
    return x + block.norm2(block.mlp(x))


@dataclass
class Oracle:
    attentions: list  # per block, [B, heads, T, T] over token ids (the grid's tokens first), float64
    windows: list  # per block, [B, heads, windows, w, w], as the capture records them
    grads: list  # per block, d logit[target] / dA, [B, heads, T, T] over token ids
    grad_windows: list  # the same, [B, heads, windows, w, w]
    legrad: list  # per last-stage block, d s^l / dA^l (s^l: the head on that block's tokens), over token ids
    logits: torch.Tensor
    grids: list  # per block, its (H, W)


def oracle(model, images: torch.Tensor, target: torch.Tensor) -> Oracle:
    reference = copy.deepcopy(model).double()
    per_image = []
    for image, label in zip(images.double(), target, strict=True):
        x = reference.patch_embed(image[None])[0]
        attentions, windows, grads, grad_windows, legrad, leaves, found_all = [], [], [], [], [], [], []
        grids = []
        last_stage = len(reference.layers) - 1
        for stage_index, stage in enumerate(reference.layers):
            x = stage.downsample(x[None])[0]
            for block in stage.blocks:
                found = cosine_attention(block, x)
                if stage_index == last_stage:  # legrad: block l alone, its input cut, scored by the head (mean pool)
                    alone = cosine_attention(block, x.detach())
                    probs = alone.probs.detach().requires_grad_(True)
                    out = hand_block(block, x.detach(), alone, probs)
                    mean = out.mean(dim=(0, 1), keepdim=True).expand_as(out)
                    score = reference.forward_head(reference.norm(mean[None]))[0, label]
                    legrad.append(found.dense(torch.autograd.grad(score, probs)[0]))
                # d logit / dA on every path: through the later blocks' queries and keys too
                leaf = torch.zeros_like(found.probs, requires_grad=True)
                x = hand_block(block, x, found, found.probs + leaf)
                leaves.append(leaf)
                attentions.append(found.dense(found.probs.detach()))
                windows.append(found.probs.detach()[:, found.members[:, :, None], found.members[:, None, :]])
                grids.append(tuple(x.shape[:2]))
                found_all.append(found)
        logits = reference.forward_head(reference.norm(x[None]))[0]
        for found, grad in zip(found_all, torch.autograd.grad(logits[label], leaves), strict=True):
            grads.append(found.dense(grad))
            grad_windows.append(grad[:, found.members[:, :, None], found.members[:, None, :]])
        per_image.append((attentions, windows, grads, grad_windows, legrad, logits.detach()))
    stack = lambda i: [torch.stack(t).detach() for t in zip(*(p[i] for p in per_image), strict=True)]  # noqa: E731
    return Oracle(*(stack(i) for i in range(5)), torch.stack([p[5] for p in per_image]), grids)


def merge_matrix(coarse, fine) -> torch.Tensor:
    """``P[parent, child] = 1/4`` for the 2x2 children (padding dropped) each merged token came from."""
    matrix = torch.zeros(coarse[0] * coarse[1], fine[0] * fine[1], dtype=torch.float64)
    for row in range(fine[0]):
        for col in range(fine[1]):
            matrix[(row // 2) * coarse[1] + col // 2, row * fine[1] + col] = 0.25
    return matrix


def to_first_grid(vector: torch.Tensor, grids: list, block: int) -> torch.Tensor:
    """``[B, N_block]`` -> ``[B, gh, gw]`` at the first block's grid, each merged token's value split in four."""
    for index in reversed(range(block)):
        if grids[index] != grids[index + 1]:
            vector = vector @ merge_matrix(grids[index + 1], grids[index])
    return vector.reshape(vector.shape[0], *grids[0])


def uniform(batch: int, grid) -> torch.Tensor:
    return torch.full((batch, grid[0] * grid[1]), 1.0 / (grid[0] * grid[1]), dtype=torch.float64)


def rollout(found: Oracle, batch: int) -> torch.Tensor:
    """``w rownorm(mean_h A_L + I) ... rownorm(mean_h A_1 + I)``, dense; the padding tokens' share dropped."""
    vector = uniform(batch, found.grids[-1])
    for index in reversed(range(len(found.grids))):
        if index + 1 < len(found.grids) and found.grids[index] != found.grids[index + 1]:
            vector = vector @ merge_matrix(found.grids[index + 1], found.grids[index])
        fused = found.attentions[index].mean(dim=1) + torch.eye(found.attentions[index].shape[-1])
        n = vector.shape[-1]
        vector = torch.einsum("bn,bnm->bm", vector, (fused / fused.sum(dim=-1, keepdim=True))[:, :n, :n])
    return vector.reshape(batch, *found.grids[0])


def generic_attention(found: Oracle, batch: int) -> torch.Tensor:
    """``w (I + Ā_L) ... (I + Ā_1) - w (I) ... (I)``, ``Ā = mean_h (dA ⊙ A)^+`` (Chefer 2021b, avg head)."""
    total, identity = uniform(batch, found.grids[-1]), uniform(batch, found.grids[-1])
    for index in reversed(range(len(found.grids))):
        if index + 1 < len(found.grids) and found.grids[index] != found.grids[index + 1]:
            merge = merge_matrix(found.grids[index + 1], found.grids[index])
            total, identity = total @ merge, identity @ merge
        n = total.shape[-1]
        weighted = (found.grads[index] * found.attentions[index]).clamp(min=0).mean(dim=1)[:, :n, :n]
        total = total + torch.einsum("bn,bnm->bm", total, weighted)
    return (total - identity).reshape(batch, *found.grids[0])


def last_block(found: Oracle, batch: int, kind: str) -> torch.Tensor:
    """Raw attention ``w mean_h A`` or Grad-CAM ``relu(mean_h alpha_h w A_h)`` of the last block."""
    grid = found.grids[-1]
    n, row = grid[0] * grid[1], uniform(batch, grid)
    per_head = torch.einsum("bn,bhnm->bhm", row, found.attentions[-1][..., :n, :n])
    if kind == "raw_attention":
        return to_first_grid(per_head.mean(dim=1), found.grids, len(found.grids) - 1)
    alpha = torch.einsum("bn,bhnm->bhm", row, found.grads[-1][..., :n, :n]).mean(dim=-1, keepdim=True)
    return to_first_grid((alpha * per_head).mean(dim=1).clamp(min=0), found.grids, len(found.grids) - 1)


def legrad(found: Oracle, batch: int) -> torch.Tensor:
    """``mean_l mean_{h,q} ReLU(ds^l / dA^l)`` over the last stage's blocks, queries over the grid's tokens."""
    n = found.grids[-1][0] * found.grids[-1][1]
    columns = [grad.clamp(min=0).mean(dim=1)[:, :n, :n].mean(dim=1) for grad in found.legrad]
    return to_first_grid(torch.stack(columns).mean(dim=0), found.grids, len(found.grids) - 1)


READOUTS = {
    "rollout": rollout,
    "raw_attention": lambda found, batch: last_block(found, batch, "raw_attention"),
    "gradcam": lambda found, batch: last_block(found, batch, "gradcam"),
    "generic_attention": generic_attention,
    "legrad": legrad,
}


@pytest.fixture(scope="module", params=SIZES)
def case(request):
    size = request.param
    model = make_swinv2(size)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    target = torch.tensor([1, 3])
    return model, images, target, oracle(model, images, target)


def test_the_oracle_reproduces_the_model(case):
    model, images, _, found = case
    with torch.no_grad():
        torch.testing.assert_close(found.logits.float(), model(images), rtol=1e-5, atol=1e-5)


def test_recorded_attention_and_gradients_equal_the_dense_oracle(case):
    model, images, target, found = case
    record = capture_pass(detect(model), images, target, X.create("generic_attention", model).capture_needs())
    assert [tuple(geometry.grid_size) for geometry in record.geometries] == found.grids
    pairs = zip(record.attentions, record.require_gradients("test"), found.windows, found.grad_windows, strict=True)
    for index, (attention, grad, expected, expected_grad) in enumerate(pairs):
        assert expected.std() > 0.05, "the oracle's attention is near uniform: the comparison would be weak"
        torch.testing.assert_close(attention, expected.float(), rtol=0, atol=1e-5, msg=f"block {index}")
        scale = float(expected_grad.abs().max())
        torch.testing.assert_close(grad, expected_grad.float(), rtol=0, atol=1e-5 * scale, msg=f"block {index}")


@pytest.mark.parametrize("name", list(READOUTS))
def test_readout_maps_equal_the_dense_oracle(case, name):
    model, images, target, found = case
    maps = X.create(name, model)(images, target)
    expected = READOUTS[name](found, images.shape[0]).float()
    assert expected.flatten(1).std(dim=1).gt(0).all(), "a constant oracle map would make a weak comparison"
    scale = float(expected.abs().max())
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5 * scale)


def test_layout_and_refusals():
    model = make_swinv2(32)
    adapter = detect(model)
    assert isinstance(adapter, SwinTransformerV2Adapter) and adapter.family == "swinv2"
    assert adapter.layout(torch.zeros(1, 3, 32, 32)) == TokenLayout(0, (8, 8), "avg", (), (4, 4))
    with pytest.raises(ValueError, match="takes 32x32 images"):
        adapter.layout(torch.zeros(1, 3, 64, 64))
    swinv2 = r"timm\.models\.swin_transformer_v2\.SwinTransformerV2"
    for name in ("lrp", "partial_lrp", "transformer_attribution", "attnlrp"):
        with pytest.raises(TypeError, match=rf"{name} cannot explain this {swinv2}.*cosine attention") as error:
            X.create(name, model)
        suggested = str(error.value).split("Use one of [")[1].split("]")[0].replace("'", "").split(", ")
        assert "tokentm" not in suggested and "layernorm_stats" not in suggested and "rollout" in suggested
    for name in ("tokentm", "layernorm_stats"):
        with pytest.raises(TypeError, match=rf"{name} cannot explain this {swinv2}.*post-norm"):
            X.create(name, model)
    model.reset_classifier(5, global_pool="max")
    with pytest.raises(ValueError, match=rf"{swinv2}: global_pool='max' is not supported"):
        detect(model)
