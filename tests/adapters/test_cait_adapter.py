"""The CaiT adapter: talking-heads self-attention over the patches, then class attention; the recorded attention and
the readouts' maps equal a dense per-image oracle written out from the modules' weights, and what the blocks cannot
give is refused at create."""

import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import lightning_vitx.explainers as X
from lightning_vitx.adapters import CaitAdapter, CaptureNeeds, TokenLayout, capture_pass, detect

sys.path.insert(0, str(Path(__file__).parent))
from dense_oracle import assert_attention_equals, peak, rollout_oracle  # noqa: E402

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}


def make_cait(seed: int = 0, **extra):
    torch.manual_seed(seed)
    model = timm.create_model("cait_xxs24_224", pretrained=False, **{"depth_token_only": 2, **TINY, **extra})
    generator = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():  # the class attention peaked, the talking heads mixing for real, layer scales that matter
        for block in model.blocks_token_only:
            block.attn.q.weight.normal_(0.0, 0.5, generator=generator)
            block.attn.k.weight.normal_(0.0, 0.5, generator=generator)
        for block in model.blocks:
            block.attn.proj_l.weight.normal_(0.0, 0.7, generator=generator)
            block.attn.proj_w.weight.normal_(0.0, 0.7, generator=generator)
        for name, param in model.named_parameters():
            if name.endswith(("gamma_1", "gamma_2")):
                param.fill_(0.5)
    return peak(model)


def split(t, heads):  # [N, C] -> [heads, N, d]
    return t.reshape(t.shape[0], heads, -1).transpose(0, 1)


def oracle(model, images):
    """Per block, ``[B, heads, N, N]`` over ``[class, patches]``: a self-attention block's softmax (its logits mixed
    across heads by ``proj_l``) with a zero class row and column; a class-attention block's class row, other rows 0."""
    per_block = [[] for _ in range(len(model.blocks) + len(model.blocks_token_only))]
    with torch.no_grad():
        for image in images:
            x = model.patch_embed(image[None]) + model.pos_embed  # CaiT's position embedding is on the patches
            for index, block in enumerate(model.blocks):
                attn, h = block.attn, block.norm1(x)[0]
                q, k, _ = (split(t, attn.num_heads) for t in (h @ attn.qkv.weight.T + attn.qkv.bias).chunk(3, dim=-1))
                logits = q @ k.transpose(-2, -1) * attn.scale  # [heads, P, P]
                mixed = torch.einsum("gh,hpq->gpq", attn.proj_l.weight, logits) + attn.proj_l.bias[:, None, None]
                per_block[index].append(F.pad(mixed.softmax(dim=-1), (1, 0, 1, 0)))
                x = block(x)
            cls = model.cls_token
            for offset, block in enumerate(model.blocks_token_only):
                attn, u = block.attn, block.norm1(torch.cat([cls, x], dim=1))[0]  # [N, C]
                q = split((u[:1] @ attn.q.weight.T + attn.q.bias), attn.num_heads)  # the class token's query only
                k = split((u @ attn.k.weight.T + attn.k.bias), attn.num_heads)
                row = (q @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1)  # [heads, 1, N]
                per_block[len(model.blocks) + offset].append(F.pad(row, (0, 0, 0, u.shape[0] - 1)))
                cls = block(x, cls)
    return [torch.stack(attentions) for attentions in per_block]


def test_recorded_attention_and_readout_maps_equal_the_dense_oracle():
    model = make_cait()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    expected = oracle(model, images)
    record = capture_pass(detect(model), images)
    assert_attention_equals(record.attentions[:2], expected[:2])  # self-attention, zero class row and column
    for attention, dense in zip(record.attentions[2:], expected[2:], strict=True):  # class attention: one row
        assert dense[:, :, 0].std() > 0.05 and not dense[:, :, 1:].any()
        torch.testing.assert_close(attention, dense, rtol=0, atol=1e-5)
    row = torch.zeros(3, 17)
    row[:, 0] = 1.0  # the head reads the class token
    rollout = rollout_oracle(expected, row)[:, 1:].reshape(3, 4, 4)
    torch.testing.assert_close(X.create("rollout", model)(images), rollout, rtol=1e-5, atol=1e-7)
    raw = expected[-1].mean(dim=1)[:, 0, 1:].reshape(3, 4, 4)  # the last class-attention block's class row
    torch.testing.assert_close(X.create("raw_attention", model)(images), raw, rtol=1e-5, atol=1e-7)
    assert rollout.flatten(1).std(dim=1).gt(1e-4).all()


def test_gradients_reach_the_softmax_through_the_talking_heads():
    """``d logit / d P`` of the recorded softmax output equals an independent backward through a re-run block."""
    model = make_cait()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    record = capture_pass(detect(model), images, target=2, needs=CaptureNeeds(gradients=True))
    block = model.blocks[1]
    with torch.no_grad():
        x = model.blocks[0](model.patch_embed(images) + model.pos_embed)
    attn, h = block.attn, block.norm1(x)
    q, k, v = (t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2) for t in attn.qkv(h).chunk(3, dim=-1))
    logits = attn.proj_l((q @ k.transpose(-2, -1) * attn.scale).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    probabilities = logits.softmax(dim=-1).detach().requires_grad_(True)
    mixed = attn.proj_w(probabilities.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    out = x + block.gamma_1 * attn.proj((mixed @ v).transpose(1, 2).flatten(2))
    out = out + block.gamma_2 * block.mlp(block.norm2(out))
    (grad,) = torch.autograd.grad(model.forward_head(model.norm(model.forward_cls(out)))[:, 2].sum(), probabilities)
    torch.testing.assert_close(record.attention_grads[1], F.pad(grad, (1, 0, 1, 0)), rtol=1e-4, atol=1e-6)


def test_layout_blocks_and_legrad_start():
    model = make_cait()
    adapter = detect(model)
    assert isinstance(adapter, CaitAdapter) and adapter.family == "cait"
    assert adapter.layout(torch.zeros(1, 3, 32, 32)) == TokenLayout(1, (4, 4), "token", (0,))
    assert len(adapter.blocks()) == 4 and adapter.first_head_block == 2
    assert X.create("legrad", model).start_layer == 2  # the class-attention blocks, whose token the head reads
    maps = X.create("legrad", model)(torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 4, 4) and maps.flatten(1).std(dim=1).gt(0).all()


@pytest.mark.parametrize("name", ["tokentm", "layernorm_stats"])
def test_token_state_readouts_are_refused_at_create(name):
    model = make_cait()
    with pytest.raises(TypeError, match=rf"{name} cannot explain this timm\.models\.cait\.Cait: .*class-attention"):
        X.create(name, model)


@pytest.mark.parametrize("name", ["lrp", "partial_lrp", "transformer_attribution", "attnlrp"])
def test_the_lrp_family_is_refused_at_create_naming_what_works(name):
    model = make_cait()
    with pytest.raises(
        TypeError, match=rf"{name} cannot explain this timm\.models\.cait\.Cait.*talking heads"
    ) as error:
        X.create(name, model)
    working = str(error.value).split("Use one of [")[1].split("]")[0].replace("'", "").split(", ")
    assert "rollout" in working and "tokentm" not in working
    assert X.create(working[0], model)(torch.randn(1, 3, 32, 32)).shape == (1, 4, 4)


def test_a_head_without_pooling_is_refused():
    with pytest.raises(ValueError, match=r"timm\.models\.cait\.Cait with global_pool=''"):
        X.create("rollout", make_cait(global_pool=""))
