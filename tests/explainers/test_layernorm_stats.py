"""layernorm_stats: the captured LayerNorm statistics, a hand-built ordering, and a dense oracle on a small Swin."""

import importlib.util
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import lightning_vitx.explainers as X
from lightning_vitx.adapters import CaptureNeeds, capture_pass, detect
from lightning_vitx.explainers.layernorm_stats import RULES, token_weights

_ORACLES = Path(__file__).parents[1] / "adapters" / "test_swin_adapter.py"
_spec = importlib.util.spec_from_file_location("swin_oracles", _ORACLES)
_oracles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_oracles)
dense_from_windows, merge_matrix = _oracles.dense_from_windows, _oracles.merge_matrix


def norm_inputs(adapter):
    """Forward pre-hooks recording every block's norm1 / norm2 input, and each merging norm's, in call order."""
    seen, handles = {}, []
    named = {}
    for index, block in enumerate(adapter.blocks()):
        named[(index, "norm1")], named[(index, "norm2")] = block.norm1, block.norm2
    for index, norm in getattr(adapter, "merging_norms", dict)().items():
        named[(index, "merge")] = norm
    for key, module in named.items():
        handles.append(module.register_forward_pre_hook(lambda m, i, key=key: seen.__setitem__(key, i[0].detach())))
    return seen, named, handles


@pytest.mark.parametrize("case", ["vit", "swin"])
def test_captured_statistics_equal_recomputed_ones(case, models, make_images):
    model = models[case]
    adapter = detect(model)
    size = 72 if case == "swin" else 224
    seen, named, handles = norm_inputs(adapter)
    try:
        record = capture_pass(adapter, make_images(size, batch=2), needs=CaptureNeeds(norm_stats=True))
    finally:
        for handle in handles:
            handle.remove()
    expected_keys = {key for key in named}
    assert {(i, k) for i, stats in enumerate(record.norm_stats) for k in stats} == expected_keys
    if case == "swin":
        assert {k for (_, k) in expected_keys} == {"norm1", "norm2", "merge"} and len(adapter.merging_norms()) == 3
    for (index, key), module in named.items():
        x = seen[(index, key)].flatten(1, -2)
        stats = record.norm_stats[index][key]
        torch.testing.assert_close(stats.mean, x.mean(-1))
        torch.testing.assert_close(stats.std, (x.var(-1, unbiased=False) + module.eps).sqrt())
        assert stats.mean.shape == (2, record.geometries[index].num_tokens)
        # the norm's output is (x - mean) / std * weight + bias
        normed = (x - stats.mean[..., None]) / stats.std[..., None] * module.weight + module.bias
        torch.testing.assert_close(normed, module(x), rtol=1e-4, atol=1e-5)


def scaled_token_vit():
    """A one-block ViT whose patch tokens are scaled copies of one vector: they differ only in their LN scale."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=4,
        embed_dim=8,
        depth=1,
        num_heads=2,
        num_classes=3,
    ).eval()
    with torch.no_grad():
        model.pos_embed.zero_()
        model.patch_embed.proj.bias.zero_()
        model.cls_token.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(2))
        model.head.weight[0].neg_()  # this seed's class 0 has negative attention gradients: make them positive
    pattern = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    scale = torch.arange(1, 17, dtype=torch.float32).reshape(4, 4)  # token j's input is scale[j] * u
    image = (pattern[:, None, :, None, :] * scale[None, :, None, :, None]).reshape(3, 16, 16)
    return model, image[None], scale


def test_hand_built_tokens_differing_only_in_scale():
    model, image, scale = scaled_token_vit()
    record = capture_pass(detect(model), image, target=0, needs=CaptureNeeds(gradients=True, norm_stats=True))
    std = record.norm_stats[0]["norm1"].std[0, 1:].reshape(4, 4)
    torch.testing.assert_close(std / std[0, 0], scale, rtol=1e-4, atol=0)  # sigma_j proportional to the scale
    base = X.create("generic_attention", model).read(record)[0]
    assert bool((base > 0).all())
    torch.testing.assert_close(base, torch.full_like(base, float(base[0, 0])), rtol=1e-4, atol=1e-7)  # no order
    for rule, decreasing in [("inverse_std", True), ("std", False), ("final", True)]:
        maps = X.create("layernorm_stats", model, rule=rule).read(record)[0].flatten()
        order = maps.argsort(descending=decreasing)
        assert torch.equal(order, torch.arange(16)), (rule, maps)  # ordered by scale: smaller sigma, more relevance
    # inverse_std: the attention part of each token's relevance is proportional to 1 / sigma_j
    maps = X.create("layernorm_stats", model, rule="inverse_std").read(record)[0].flatten()
    weights = token_weights(record.norm_stats[0]["norm1"], "inverse_std")[0, 1:]
    torch.testing.assert_close(maps / maps[0], weights / weights[0], rtol=1e-4, atol=0)
    # final (the default): the uniform base map times 1 / sigma_j of the last block's norm2
    maps = X.create("layernorm_stats", model).read(record)[0].flatten()
    weights = 1.0 / record.norm_stats[-1]["norm2"].std[0, 1:]
    torch.testing.assert_close(maps / maps[0], weights / weights[0], rtol=1e-4, atol=0)


def test_token_weights():
    from lightning_vitx.adapters import TokenStats

    std = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0]])
    stats = TokenStats(torch.zeros_like(std), std)
    for rule in RULES:
        torch.testing.assert_close(token_weights(stats, rule).mean(-1), torch.ones(1))
    outlier = token_weights(stats, "outlier")
    z = 3.0  # the outlier's z-score: (10 - 1.9) / 2.7
    torch.testing.assert_close(outlier[0, -1] / outlier[0, 0], torch.tensor(2.0 / z))
    with pytest.raises(ValueError, match="rule must be one of"):
        token_weights(stats, "bogus")


def layernorm_oracle(record, rule="inverse_std", identity_only=False):
    """Dense chain in float64: v (I + Ā_l diag(s_l)) per block, diag(s_merge) then the merge matrix at each patch
    merging; ``identity_only``: the same chain with every Ā_l = 0 (the path the avg-pool readout drops)."""
    geometries = record.geometries
    last = geometries[-1].num_tokens
    vector = torch.full((record.batch_size, last), 1.0 / last, dtype=torch.float64)
    for index in reversed(range(len(geometries))):
        geometry = geometries[index]
        if index + 1 < len(geometries) and geometries[index + 1].grid_size != geometry.grid_size:
            merge = token_weights(record.norm_stats[index + 1]["merge"], rule)
            vector = (vector * merge.double()) @ merge_matrix(
                geometries[index + 1].grid_size, geometry.grid_size
            ).double()
        n = geometry.num_tokens
        fused = (record.attention_grads[index] * record.attentions[index]).clamp(min=0).mean(dim=1)
        dense = dense_from_windows(fused, geometry)[:, :n, :n].double()
        dense = dense * token_weights(record.norm_stats[index]["norm1"], rule)[:, None, :].double()
        if identity_only:
            dense = torch.zeros_like(dense)
        vector = vector + torch.einsum("bn,bnm->bm", vector, dense)
    return vector.reshape(record.batch_size, *record.layout.grid_size)


@pytest.mark.parametrize("rule", ["inverse_std", "std", "outlier"])
def test_windowed_propagation_equals_dense_oracle(models, make_images, rule):
    model = models["swin"]
    images = make_images(72, batch=2)
    record = capture_pass(detect(model), images, needs=CaptureNeeds(gradients=True, norm_stats=True))
    maps = X.create("layernorm_stats", model, rule=rule)(images)
    # Swin's head averages its tokens: the map drops the identity-only path (a constant on every patch)
    expected = (layernorm_oracle(record, rule) - layernorm_oracle(record, rule, identity_only=True)).float()
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    one = X.create("layernorm_stats", model, rule=rule)(images[1:])
    torch.testing.assert_close(one, maps[1:], rtol=1e-5, atol=1e-9)


def test_rule_none_is_generic_attention(models, make_images):
    for case, size in (("vit", 224), ("swin", 72)):
        maps = X.create_many({"layernorm_stats": {"rule": "none"}, "generic_attention": {}}, models[case])(
            make_images(size, batch=2)
        )
        torch.testing.assert_close(maps["layernorm_stats"], maps["generic_attention"], rtol=0, atol=0)


def test_swin_left_as_found_and_options(models, make_images, copy_model):
    model = copy_model(models["swin"]).train()
    images = make_images(72, batch=2)
    hooks = {n: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for n, m in model.named_modules()}
    X.create("layernorm_stats", model)(images)
    with pytest.raises(ValueError):
        X.create("layernorm_stats", model)(images, target=99)
    assert all(m.training for m in model.modules())
    assert {n: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for n, m in model.named_modules()} == hooks
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="rule must be one of"):
        X.create("layernorm_stats", model, rule="sigma")
    with pytest.raises(ValueError, match="norm_stats=True"):
        record = capture_pass(detect(model), images, needs=CaptureNeeds(gradients=True))
        X.create("layernorm_stats", model).read(record)


def test_non_layernorm_blocks_raise_a_clear_error(make_model):
    model = make_model("vit_tiny_patch16_224", depth=2)
    model.blocks[1].norm1 = nn.Identity()
    with pytest.raises(ValueError, match="block 1 .* no LayerNorm \\['norm1'\\]"):
        X.create("layernorm_stats", model)(torch.randn(1, 3, 224, 224))
