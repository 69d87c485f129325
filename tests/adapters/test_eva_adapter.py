"""The EVA / EVA-02 adapter: the recorded attention and the readouts' maps equal a dense per-image oracle in which
the rotary position embedding is written out, and what the blocks cannot give is refused at create."""

import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import RmsNorm

import lightning_vitx.explainers as X
from lightning_vitx.adapters import CaptureNeeds, EvaAdapter, TokenLayout, capture_pass, detect

sys.path.insert(0, str(Path(__file__).parent))
from dense_oracle import assert_attention_equals, peak, per_image_attention, readout_row, rollout_oracle  # noqa: E402

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}
CASES = {
    # EVA-02: RoPE on the patch tokens, SwiGLU MLP, class token, average-pool head
    "eva02": ("eva02_tiny_patch14_224", {}),
    # EVA-02 with the inner attention norm (scale_attn_inner) and a sigmoid gate between attn @ v and proj
    "eva02_inner_norm": ("eva02_tiny_patch14_224", {"scale_attn_inner": True}),
    # RoPE without a class token, one register token
    "eva02_registers": ("eva02_tiny_patch14_224", {"class_token": False, "num_reg_tokens": 1}),
    # EVA-01: absolute position embedding only, GELU MLP, class-token head
    "eva": ("eva_giant_patch14_224", {"mlp_ratio": 4.0, "global_pool": "token"}),
}


def make_eva(case: str, seed: int = 0, **extra):
    name, kwargs = CASES[case]
    torch.manual_seed(seed)
    return peak(timm.create_model(name, pretrained=False, **TINY, **kwargs, **extra))


def rotate(t: torch.Tensor, rope: torch.Tensor, prefix: int) -> torch.Tensor:
    """RoPE written out: each pair of channels ``(2i, 2i+1)`` of patch token ``p`` is the complex number
    ``t_2i + j t_2i+1``, turned by the angle ``θ_{p,i}`` whose sine and cosine the model's embedding holds."""
    sin, cos = rope.chunk(2, dim=-1)  # [P, d] each; interleaved layout: both channels of a pair share the angle
    torch.testing.assert_close(sin[:, 0::2], sin[:, 1::2], rtol=0, atol=0)
    turn = torch.polar(torch.ones_like(sin[:, 0::2]), torch.atan2(sin[:, 0::2], cos[:, 0::2]))
    pairs = torch.complex(t[:, prefix:, 0::2], t[:, prefix:, 1::2]) * turn
    return torch.cat([t[:, :prefix], torch.stack([pairs.real, pairs.imag], dim=-1).flatten(-2)], dim=1)


def eva_logits(rope):
    def logits(block, x):
        attn, h = block.attn, block.norm1(x)[0]  # [N, C]
        w_q, w_k, _ = attn.qkv.weight.chunk(3)
        q = h @ w_q.T + attn.q_bias  # EVA's keys have no bias
        k = h @ w_k.T
        q, k = (t.reshape(h.shape[0], attn.num_heads, -1).transpose(0, 1) for t in (q, k))  # [heads, N, d]
        if rope is not None:
            q, k = rotate(q, rope, attn.num_prefix_tokens), rotate(k, rope, attn.num_prefix_tokens)
        return q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5

    return logits


def eva_tokens(model):
    def tokens(image):
        x = model.patch_embed(image)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
        return model.norm_pre(torch.cat([*prefix, x], dim=1) + model.pos_embed)

    return tokens


def oracle(model, images):
    rope = model.rope.get_embed() if model.rope is not None else None
    run = lambda block, x: block(x, rope=rope)  # noqa: E731 - the model's own block carries the tokens on
    return per_image_attention(model, images, eva_tokens(model), eva_logits(rope), run)


@pytest.mark.parametrize("case", list(CASES))
def test_recorded_attention_equals_the_dense_rope_oracle(case):
    model = make_eva(case)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    record = capture_pass(detect(model), images, needs=CaptureNeeds(head_outputs=True))
    expected = oracle(model, images)
    assert_attention_equals(record.attentions, expected)
    # per-head outputs are attn @ v, read before the inner norm and the gate (gmar's head_output source)
    with torch.no_grad():
        block, x = model.blocks[0], eva_tokens(model)(images)
        v = block.norm1(x) @ block.attn.qkv.weight.chunk(3)[2].T + block.attn.v_bias
        v = v.unflatten(-1, (block.attn.num_heads, -1)).transpose(1, 2)
    torch.testing.assert_close(record.head_outputs[0], expected[0] @ v, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["eva02", "eva02_registers", "eva"])
def test_readout_maps_equal_the_dense_oracle(case):
    model = make_eva(case)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    attentions = oracle(model, images)
    prefix, tokens = model.num_prefix_tokens, attentions[0].shape[-1]
    row = readout_row(2, tokens, prefix, model.global_pool)
    rollout = rollout_oracle(attentions, row)[:, prefix:].reshape(2, 4, 4)
    torch.testing.assert_close(X.create("rollout", model)(images), rollout, rtol=1e-5, atol=1e-7)
    raw = torch.einsum("bn,bnm->bm", row, attentions[-1].mean(dim=1))[:, prefix:].reshape(2, 4, 4)
    torch.testing.assert_close(X.create("raw_attention", model)(images), raw, rtol=1e-5, atol=1e-7)


def test_layout():
    adapter = detect(make_eva("eva02_registers"))
    assert isinstance(adapter, EvaAdapter) and adapter.family == "eva"
    assert adapter.layout(torch.zeros(1, 3, 32, 32)) == TokenLayout(1, (4, 4), "avg", ())
    assert detect(make_eva("eva")).layout(torch.zeros(1, 3, 32, 32)) == TokenLayout(1, (4, 4), "token", (0,))


def test_dynamic_image_size_rotates_by_the_input_grid():
    model = make_eva("eva02", dynamic_img_size=True)
    maps = X.create("rollout", model)(torch.randn(1, 3, 48, 32))
    assert maps.shape == (1, 6, 4) and torch.isfinite(maps).all()


@pytest.mark.parametrize(
    "extra, refused, error, message",
    [
        ({"use_post_norm": True}, ["layernorm_stats", "tokentm"], TypeError, r"timm\.models\.eva\.Eva: .*post-norm"),
        ({"norm_layer": RmsNorm}, ["layernorm_stats"], ValueError, r"timm\.models\.eva\.Eva: .*LayerNorm .*RmsNorm"),
    ],
)
def test_what_the_blocks_cannot_give_is_refused_at_create(extra, refused, error, message):
    model = make_eva("eva02", **extra)
    for name in refused:
        with pytest.raises(error, match=message + r".*Use 'generic_attention'"):
            X.create(name, model)
    maps = X.create("generic_attention", model)(torch.randn(2, 3, 32, 32))  # the explainer the message names
    assert maps.shape == (2, 4, 4) and torch.isfinite(maps).all()


@pytest.mark.parametrize("pool", ["map", "max"])
def test_other_heads_are_refused(pool):
    extra = {"global_pool": pool, "class_token": False} if pool == "map" else {"global_pool": pool}
    model = make_eva("eva02", **extra)
    with pytest.raises(ValueError, match=rf"timm\.models\.eva\.Eva with global_pool='{pool}'"):
        X.create("rollout", model)
