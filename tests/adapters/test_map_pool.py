"""ViTs with an attention-pool head (``global_pool='map'``, SigLIP): the readout row is the pool's attention of its
latent query, and the readouts' maps equal a dense per-image oracle written out from the modules' weights."""

import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import AttentionPoolLatent

import lightning_vitx.explainers as X
from lightning_vitx.adapters import AttentionPoolViTAdapter, TokenLayout, capture_pass, detect

sys.path.insert(0, str(Path(__file__).parent))
from dense_oracle import assert_attention_equals, peak, per_image_attention, rollout_oracle  # noqa: E402

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}
CASES = {
    "siglip": {"class_token": False},  # SigLIP's layout: no prefix token, the pool reads every patch
    "cls_skipped": {"class_token": True},  # a class token the pool does not read (pool_include_prefix=False)
    "cls_pooled": {"class_token": True, "pool_include_prefix": True},  # ... and one it reads
    "two_latents": {"class_token": False},  # pool replaced below: two latent queries averaged, qk_norm
}


def make_map_vit(case: str, seed: int = 0, **extra):
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, global_pool="map", **TINY, **CASES[case], **extra
    )
    if case == "two_latents":
        model.attn_pool = AttentionPoolLatent(
            32, out_features=32, num_heads=2, latent_len=2, pool_type="avg", qk_norm=True
        )
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():  # a peaked pool: random init attends near uniformly
        model.attn_pool.latent.normal_(0.0, 2.0, generator=generator)
        model.attn_pool.kv.weight.normal_(0.0, 0.5, generator=generator)
    return peak(model)


def vit_tokens(model):
    def tokens(image):
        x = model.patch_embed(image)
        if model.cls_token is not None:
            x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return model.norm_pre(x + model.pos_embed)  # the class token's position embedding is in pos_embed here

    return tokens


def vit_logits(block, x):
    attn, h = block.attn, block.norm1(x)[0]  # [N, C]
    q, k, _ = (h @ w.T + b for w, b in zip(attn.qkv.weight.chunk(3), attn.qkv.bias.chunk(3), strict=True))
    q, k = (t.reshape(h.shape[0], attn.num_heads, -1).transpose(0, 1) for t in (q, k))  # [heads, N, d]
    return q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5


def pool_rows(model, images):
    """Per image, the pool's attention per head over the last block's tokens, ``[B, heads, N]``: the latent query
    and the tokens' keys from the pool's own Linear weights, 0 on the tokens it does not read."""
    pool, rows = model.attn_pool, []
    with torch.no_grad():
        for image in images:
            x = vit_tokens(model)(image[None])
            for block in model.blocks:
                x = block(x)
            x = model.norm(x)[0]  # [N, C]
            read = x if model.pool_include_prefix else x[model.num_prefix_tokens :]
            heads, dim = pool.num_heads, pool.head_dim
            q = (pool.latent[0] @ pool.q.weight.T + pool.q.bias).reshape(-1, heads, dim).transpose(0, 1)
            k = (read @ pool.kv.weight[: heads * dim].T + pool.kv.bias[: heads * dim]).reshape(-1, heads, dim)
            q, k = pool.q_norm(q), pool.k_norm(k.transpose(0, 1))  # [heads, latents, d], [heads, K, d]
            probabilities = (q @ k.transpose(-2, -1) * dim**-0.5).softmax(dim=-1).mean(dim=1)  # latents averaged
            rows.append(F.pad(probabilities, (x.shape[0] - read.shape[0], 0)))
    return torch.stack(rows)


def oracle(model, images):
    return per_image_attention(model, images, vit_tokens(model), vit_logits, lambda block, x: block(x))


@pytest.mark.parametrize("case", list(CASES))
def test_readout_maps_equal_the_dense_oracle(case):
    model = make_map_vit(case)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    attentions, pool = oracle(model, images), pool_rows(model, images)
    record = capture_pass(detect(model), images)
    assert_attention_equals(record.attentions, attentions)
    assert pool.std() > 0.02, "the pool's oracle attention is near uniform: the comparison would be weak"
    torch.testing.assert_close(record.readout_attention, pool, rtol=0, atol=1e-5)
    prefix, row = model.num_prefix_tokens, pool.mean(dim=1)  # the readout row: the pool's row, heads averaged
    rollout = rollout_oracle(attentions, row)[:, prefix:].reshape(3, 4, 4)
    torch.testing.assert_close(X.create("rollout", model)(images), rollout, rtol=1e-5, atol=1e-7)
    raw = torch.einsum("bn,bnm->bm", row, attentions[-1].mean(dim=1))[:, prefix:].reshape(3, 4, 4)
    torch.testing.assert_close(X.create("raw_attention", model)(images), raw, rtol=1e-5, atol=1e-7)


def test_layout_and_readout_row():
    adapter = detect(make_map_vit("cls_skipped"))
    assert isinstance(adapter, AttentionPoolViTAdapter) and adapter.family == "vit_map"
    layout = adapter.layout(torch.zeros(1, 3, 32, 32))
    assert layout == TokenLayout(1, (4, 4), "map", ())
    with pytest.raises(ValueError, match="depends on the input"):
        layout.readout_weights(1)
    record = capture_pass(adapter, torch.randn(2, 3, 32, 32))
    weights = record.readout_weights()
    assert weights.shape == (2, 17) and (weights[:, 0] == 0).all()  # the pool skips the class token
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))


def siglip_as_found():
    """SigLIP's image tower as timm builds it (no classifier: the pooled feature is the output), made tiny."""
    torch.manual_seed(0)
    kwargs = {key: value for key, value in TINY.items() if key != "num_classes"}
    return peak(timm.create_model("vit_base_patch16_siglip_224", pretrained=False, **kwargs))


def test_a_siglip_tower_as_found_explained_by_feature_similarity():
    model = siglip_as_found()
    assert model.num_classes == 0 and isinstance(model.attn_pool, AttentionPoolLatent)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = model(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4)))

    def similarity(features):  # a label-free target: the cosine of the pooled feature to a reference
        return F.cosine_similarity(features, reference.expand_as(features), dim=-1)

    fused = [(module, module.fused_attn) for module in model.modules() if hasattr(module, "fused_attn")]
    names = ["rollout", "raw_attention", "gradcam", "generic_attention", "gmar", "legrad"]
    maps = {name: X.create(name, model)(images, similarity) for name in names}
    assert [module.fused_attn for module, _ in fused] == [flag for _, flag in fused]  # the pool's left as it was
    for name, value in maps.items():
        assert value.shape == (2, 4, 4) and torch.isfinite(value).all(), name
        # Grad-CAM's ReLU may zero a whole map of a random model (benchmarks/coverage.py ZERO_BY_RELU)
        assert name == "gradcam" or value.flatten(1).std(dim=1).gt(0).all(), name
    model.attn_pool.fused_attn = not model.attn_pool.fused_attn  # the pool read the same either way
    for name in names:
        torch.testing.assert_close(X.create(name, model)(images, similarity), maps[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lrp", "partial_lrp", "transformer_attribution", "attnlrp"])
def test_the_lrp_family_is_refused_at_create_naming_the_pool_and_what_works(name):
    model = make_map_vit("siglip")
    pattern = rf"{name} cannot explain this timm\.models\.vision_transformer\.VisionTransformer.*AttentionPoolLatent"
    with pytest.raises(TypeError, match=pattern) as error:
        X.create(name, model)
    working = str(error.value).split("Use one of [")[1].split("]")[0].replace("'", "").split(", ")
    assert "rollout" in working and "generic_attention" in working
    assert X.create(working[0], model)(torch.randn(1, 3, 32, 32)).shape == (1, 4, 4)


def test_other_attention_pools_are_refused_at_create():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY, global_pool="prr")
    with pytest.raises(ValueError, match=r"global_pool='prr' is not supported yet.*AttentionPoolPrr"):
        X.create("rollout", model)
