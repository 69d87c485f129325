"""The relpos-ViT adapter: the recorded attention and the readouts' maps equal a dense per-image oracle with the
blocks' relative position bias, and post-norm blocks are refused by the explainers that need pre-norm ones."""

import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.models.vision_transformer_relpos import RelPosBlock

import lightning_vitx.explainers as X
from lightning_vitx.adapters import RelPosViTAdapter, TokenLayout, capture_pass, detect

sys.path.insert(0, str(Path(__file__).parent))
from dense_oracle import assert_attention_equals, peak, per_image_attention, readout_row, rollout_oracle  # noqa: E402

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}
CASES = {
    "mlp_bias": ("vit_relpos_small_patch16_224", {}),  # log-coordinate MLP bias per block, no class token, avg
    "table_shared": ("vit_srelpos_small_patch16_224", {"rel_pos_type": "bias"}),  # one shared bias table
    "class_token": ("vit_relpos_medium_patch16_cls_224", {}),  # class token (no bias on its rows), token pool
    "post_norm": ("vit_relpos_small_patch16_rpn_224", {}),  # ResPostRelPosBlock: x + norm(attn(x))
}


def make_relpos(case: str, seed: int = 0):
    name, kwargs = CASES[case]
    torch.manual_seed(seed)
    return peak(timm.create_model(name, pretrained=False, **TINY, **kwargs))


def oracle(model, images):
    shared = model.shared_rel_pos.get_bias() if model.shared_rel_pos is not None else None

    def tokens(image):
        x = model.patch_embed(image)
        return torch.cat([model.cls_token, x], dim=1) if model.cls_token is not None else x

    def logits(block, x):
        attn = block.attn
        h = block.norm1(x)[0] if isinstance(block, RelPosBlock) else x[0]  # post-norm blocks: no norm before
        qkv = h @ attn.qkv.weight.T + (attn.qkv.bias if attn.qkv.bias is not None else 0.0)
        q, k, _ = qkv.unflatten(-1, (3, attn.num_heads, -1)).unbind(1)
        q, k = q.transpose(0, 1), k.transpose(0, 1)  # [heads, N, d]
        bias = attn.rel_pos.get_bias() if attn.rel_pos is not None else shared  # [1, heads, N, N]
        return q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias[0]

    run = lambda block, x: block(x, shared_rel_pos=shared)  # noqa: E731
    return per_image_attention(model, images, tokens, logits, run)


@pytest.mark.parametrize("case", list(CASES))
def test_recorded_attention_equals_the_dense_bias_oracle(case):
    model = make_relpos(case)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    record = capture_pass(detect(model), images)
    expected = oracle(model, images)
    assert_attention_equals(record.attentions, expected)


@pytest.mark.parametrize("case", list(CASES))
def test_readout_maps_equal_the_dense_oracle(case):
    model = make_relpos(case)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    attentions = oracle(model, images)
    prefix = model.num_prefix_tokens
    row = readout_row(2, attentions[0].shape[-1], prefix, model.global_pool)
    rollout = rollout_oracle(attentions, row)[:, prefix:].reshape(2, 4, 4)
    torch.testing.assert_close(X.create("rollout", model)(images), rollout, rtol=1e-5, atol=1e-7)
    raw = torch.einsum("bn,bnm->bm", row, attentions[-1].mean(dim=1))[:, prefix:].reshape(2, 4, 4)
    torch.testing.assert_close(X.create("raw_attention", model)(images), raw, rtol=1e-5, atol=1e-7)


def test_layouts():
    adapter = detect(make_relpos("mlp_bias"))
    assert isinstance(adapter, RelPosViTAdapter) and adapter.family == "vit_relpos"
    assert adapter.layout(torch.zeros(1, 3, 32, 32)) == TokenLayout(0, (4, 4), "avg", ())
    assert detect(make_relpos("class_token")).layout(torch.zeros(1, 3, 32, 32)) == TokenLayout(1, (4, 4), "token", (0,))


@pytest.mark.parametrize("name", ["tokentm", "layernorm_stats"])
def test_post_norm_blocks_are_refused_at_create(name):
    model = make_relpos("post_norm")
    message = r"VisionTransformerRelPos: its blocks \(ResPostRelPosBlock\) .*post-norm.*Use 'generic_attention'"
    with pytest.raises(TypeError, match=message):
        X.create(name, model)
