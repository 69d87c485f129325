"""Patch interactions: hand-built cases, the exact edge-removal check, batching, model state, Swin windows."""

import pytest
import timm
import torch
from torch import nn

from lightning_vitx.adapters import CaptureNeeds, capture_pass, detect
from lightning_vitx.analysis import (
    edge_ablation_effects,
    patch_interactions,
    rank_correlation,
    receptive_fields,
    sample_pairs,
)
from lightning_vitx.analysis.patch_interactions import interaction_matrices

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 16, "num_heads": 2, "num_classes": 5}  # a 4x4 patch grid
QUERY, KEY = 5, 10  # the strong edge, as patch indices


class FixedTokens(nn.Module):
    """Replaces a q_norm / k_norm: every token's query (key) is a fixed vector, whatever the input."""

    def __init__(self, pattern):
        super().__init__()
        self.register_buffer("pattern", pattern)

    def forward(self, x):
        return x * 0 + self.pattern


def edge_model(logit=8.0, seed=0):
    """Uniform attention except: patch QUERY attends to patch KEY, and the class token to patch QUERY (logit 8).

    So the class token reads QUERY's state, which block 0 filled with KEY's: the edge QUERY -> KEY carries the
    evidence. Set ``logit=-1e4`` to get the same model with that edge removed (its row renormalised over the rest).
    """
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, **TINY).eval()
    tokens, dim = 17, 8
    queries, keys = torch.zeros(tokens, dim), torch.zeros(tokens, dim)
    queries[1 + QUERY, 0], keys[1 + KEY, 0] = logit * dim**0.5, 1.0
    queries[0, 1], keys[1 + QUERY, 1] = 8.0 * dim**0.5, 1.0
    for block in model.blocks:
        block.attn.q_norm, block.attn.k_norm = FixedTokens(queries), FixedTokens(keys)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed + 1))
    return model


def images(batch=3, seed=0, size=32):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


ALL_PAIRS = torch.stack(torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij"), -1).reshape(-1, 2)


def test_receptive_fields_by_hand():
    # a 2x2 grid: patches at (0,0), (0,1), (1,0), (1,1)
    interactions = torch.tensor(
        [[4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]]
    )
    erf, size, tendency = receptive_fields(interactions[None], grid_size=(2, 2), mass=0.6)
    # row 0: shares .4 .3 .2 .1; .4 alone is short of .6, .4 + .3 reaches it
    # row 2: four shares of .25, three needed to reach .6 (ties go to the lower index)
    assert erf[0].tolist() == [[True, True, False, False], [False] * 4, [True, True, True, False], [False] * 3 + [True]]
    assert size[0].tolist() == [2, 0, 3, 1]
    # tendency, (rows, columns): row 0 = .3 (0, 1) + .2 (1, 0) + .1 (1, 1); row 2, from (1, 0): .25 of
    # (-1, 0) + (-1, 1) + (0, 0) + (0, 1); row 3 keeps all its mass on itself; the empty row 1 gets zero
    expected = torch.tensor([[0.3, 0.4], [0.0, 0.0], [-0.5, 0.5], [0.0, 0.0]])
    torch.testing.assert_close(tendency[0], expected)
    _, every, _ = receptive_fields(interactions[None], grid_size=(2, 2), mass=1.0)
    assert every[0].tolist() == [4, 0, 4, 1]  # the whole row, zeros left out
    with pytest.raises(ValueError, match="mass"):
        receptive_fields(interactions, (2, 2), mass=0.0)
    with pytest.raises(ValueError, match="expected interactions"):
        receptive_fields(interactions, (3, 2))


@pytest.mark.parametrize("indicator", ["attention", "gradient"])
def test_one_strong_edge_is_found_by_the_indicator_the_causal_check_and_the_erf(indicator):
    model, x = edge_model(), images()
    edge = torch.tensor([[QUERY, KEY]])
    drops = torch.stack([edge_ablation_effects(model, x, edge, c)[:, 0] for c in range(5)], dim=1)
    target = drops.argmax(dim=1)  # the class the edge supports most, per image
    assert (drops.amax(dim=1) > 0).all()
    effects = edge_ablation_effects(model, x, ALL_PAIRS, target)
    result = patch_interactions(model, x, target, indicator=indicator)
    strong = QUERY * 16 + KEY
    assert effects.abs().argmax(dim=1).tolist() == [strong] * 3
    assert result.pair_scores(ALL_PAIRS).argmax(dim=1).tolist() == [strong] * 3
    # the gradient indicator of the last block is zero on patch rows: only the class token's row reaches the head
    for block in range(2) if indicator == "attention" else [0]:
        assert result.erf[block][:, QUERY].nonzero()[:, 1].tolist() == [KEY] * 3  # the ERF of QUERY is that edge
        assert result.erf_size[block][:, QUERY].tolist() == [1] * 3
    if indicator == "gradient":
        assert result.interactions[1].abs().sum() == 0
    # QUERY at (1, 1), KEY at (2, 2): the tendency points one row down and one column right (attention rows hold
    # ~0.99 of their mass on the edge; the rest spreads evenly)
    if indicator == "attention":
        torch.testing.assert_close(result.tendency[0][:, QUERY], torch.ones(3, 2), atol=0.02, rtol=0)


def test_edge_ablation_equals_the_model_without_that_edge():
    x = images()
    target = torch.tensor([0, 3, 4])
    with torch.no_grad():
        picked = edge_model()(x).gather(1, target[:, None])[:, 0]
        without = edge_model(logit=-1e4)(x).gather(1, target[:, None])[:, 0]
    effect = edge_ablation_effects(edge_model(), x, torch.tensor([[QUERY, KEY], [0, 1]]), target)
    torch.testing.assert_close(effect[:, 0], picked - without, atol=1e-5, rtol=0)
    assert effect[:, 0].abs().min() > 1e-3
    # pairs in one pass or one by one, images batched or not: the same drops
    pairs = sample_pairs((4, 4), 7, seed=1)
    batched = edge_ablation_effects(edge_model(), x, pairs, target, batch_size=64)
    single = torch.cat(
        [edge_ablation_effects(edge_model(), x[i : i + 1], pairs, target[i : i + 1], 1) for i in range(3)]
    )
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=0)


def test_edge_ablation_refuses_swin_and_bad_pairs(models, make_images):
    with pytest.raises(TypeError, match="dense attention"):
        edge_ablation_effects(models["swin"], make_images(72, batch=1), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="patch indices"):
        edge_ablation_effects(edge_model(), images(1), torch.tensor([[0, 16]]))
    with pytest.raises(ValueError, match="LongTensor"):
        edge_ablation_effects(edge_model(), images(1), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("case", ["vit", "deit_distilled", "swin"])
def test_batch_equals_one_at_a_time(case, models, make_images):
    size = 72 if case == "swin" else 224
    x, target = make_images(size, batch=2), torch.tensor([1, 4])
    batched = patch_interactions(models[case], x, target)
    for i in range(2):
        single = patch_interactions(models[case], x[i : i + 1], target[i : i + 1])
        for name in ("interactions", "erf_size", "tendency"):
            for a, b in zip(getattr(batched, name), getattr(single, name), strict=True):
                torch.testing.assert_close(a[i : i + 1].float(), b.float(), atol=1e-4, rtol=1e-4)


def test_swin_interactions_stay_within_windows(models, make_images):
    model, x = models["swin"], make_images(72, batch=2)
    record = capture_pass(detect(model), x, needs=CaptureNeeds(gradients=True))
    for indicator in ("attention", "gradient"):
        matrices = interaction_matrices(record, indicator)
        vector = torch.rand(2, matrices[0].shape[-1], generator=torch.Generator().manual_seed(0))
        for matrix, attention, grad, geometry in zip(
            matrices, record.attentions, record.attention_grads, record.geometries, strict=True
        ):
            fused = attention.mean(1) if indicator == "attention" else (grad * attention).clamp(min=0).mean(1)
            vector = torch.rand(2, geometry.num_tokens, generator=torch.Generator().manual_seed(1))
            # the dense matrix is the window attention scattered: the same product as the geometry's own
            torch.testing.assert_close(torch.bmm(vector[:, None], matrix)[:, 0], geometry.times(vector, fused))
            if indicator == "attention" and geometry.padded_size == geometry.grid_size:
                torch.testing.assert_close(matrix.sum(-1), torch.ones_like(matrix.sum(-1)))
            # a token interacts with at most one window's worth of tokens
            assert int((matrix > 0).sum(-1).max()) <= geometry.window_area
    result = patch_interactions(model, x, indicator="attention")
    assert result.grid_sizes == [g.grid_size for g in record.geometries]
    sizes = result.mean_erf_size()
    assert sizes.shape == (2, 8)
    # later stages count merged tokens in first-stage patches: a 9x9 stage token covers 4 of the 18x18 grid's
    torch.testing.assert_close(sizes[:, 2], result.erf_size[2].float().mean(-1) * (18 * 18) / (9 * 9))


def snapshot(model):
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "flags": [(m.training, getattr(m, "fused_attn", None)) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def test_model_left_as_found_and_inference_mode_gives_the_same(fresh_vit, make_images):
    model = fresh_vit
    model.train()
    model.blocks[0].attn.fused_attn = True
    model.blocks[1].requires_grad_(False)
    model.head.weight.grad = torch.full_like(model.head.weight, 0.5)
    x, pairs = make_images(224, batch=2), torch.tensor([[0, 1], [3, 7]])
    before = snapshot(model)
    result = patch_interactions(model, x, 2)
    effects = edge_ablation_effects(model, x, pairs, 2)
    with pytest.raises(ValueError, match="target"):
        edge_ablation_effects(model, x, pairs, 99)  # raises inside: the flags still come back
    after = snapshot(model)
    for key in ("flags", "requires_grad", "hooks"):
        assert after[key] == before[key], key
    assert torch.equal(after["rng"], before["rng"])
    assert all(torch.equal(a, b) for a, b in zip(after["params"], before["params"], strict=True))
    assert all(
        (a is None and b is None) or torch.equal(a, b) for a, b in zip(after["grads"], before["grads"], strict=True)
    )
    with torch.inference_mode():
        inside = patch_interactions(model, x.clone(), 2)
        inside_effects = edge_ablation_effects(model, x.clone(), pairs, 2)
    torch.testing.assert_close(inside.interactions[1], result.interactions[1], rtol=0, atol=0)
    torch.testing.assert_close(inside_effects, effects, rtol=0, atol=0)
    assert model.training


def test_rank_correlation_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    torch.testing.assert_close(rank_correlation(x, -x), torch.tensor(-1.0))
    # ties: ranks of y are 1, 2.5, 2.5, 4, 5 -> Pearson of the ranks
    y = torch.tensor([0.0, 1.0, 1.0, 7.0, 9.0])
    rx, ry = torch.tensor([1, 2, 3, 4, 5.0]), torch.tensor([1, 2.5, 2.5, 4, 5])
    expected = torch.corrcoef(torch.stack([rx, ry]))[0, 1]
    torch.testing.assert_close(rank_correlation(x, y), expected)
    torch.testing.assert_close(
        rank_correlation(torch.stack([x, x]), torch.stack([y, -y])), torch.stack([expected, -expected])
    )


def test_bad_options_say_what_to_do(models, make_images):
    with pytest.raises(ValueError, match="indicator must be one of"):
        patch_interactions(models["vit"], make_images(224, batch=1), indicator="flow")
    with pytest.raises(ValueError, match="mass must be"):
        patch_interactions(models["vit"], make_images(224, batch=1), mass=1.5)
