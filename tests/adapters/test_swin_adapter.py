"""The Swin adapter against timm's own window partition and the blocks' real token dependencies."""

import pytest
import timm
import torch
from timm.models.swin_transformer import window_partition

import lightning_vitx.explainers as X
from lightning_vitx.adapters import SwinTransformerAdapter, WindowedAttention, capture_pass, detect
from lightning_vitx.adapters.geometry import spread


def dense_from_windows(fused: torch.Tensor, geometry: WindowedAttention) -> torch.Tensor:
    """``[B, windows, w, w]`` -> ``[B, N + pads, N + pads]`` over token ids, windows laid out by timm's function."""
    (h, w), (hp, wp) = geometry.grid_size, geometry.padded_size
    ids = torch.arange(h * w).reshape(1, h, w, 1)
    ids = torch.roll(ids, shifts=(-geometry.shift_size[0], -geometry.shift_size[1]), dims=(1, 2))
    padded = torch.arange(h * w, h * w + hp * wp).reshape(1, hp, wp, 1)  # padding tokens get ids after the real
    padded[:, :h, :w] = ids
    windows = window_partition(padded, geometry.window_size).reshape(geometry.num_windows, geometry.window_area)
    dense = torch.zeros(fused.shape[0], h * w + hp * wp, h * w + hp * wp)
    for index, members in enumerate(windows):
        dense[:, members[:, None], members[None, :]] = fused[:, index]
    return dense


def merge_matrix(coarse: tuple[int, int], fine: tuple[int, int]) -> torch.Tensor:
    """``P[parent, child] = 1/4`` for the 2x2 children each merged token came from."""
    matrix = torch.zeros(coarse[0] * coarse[1], fine[0] * fine[1])
    for row in range(fine[0]):
        for col in range(fine[1]):
            matrix[(row // 2) * coarse[1] + col // 2, row * fine[1] + col] = 0.25
    return matrix


@pytest.mark.parametrize(
    "geometry",
    [
        WindowedAttention((8, 8), (4, 4), (0, 0)),
        WindowedAttention((8, 8), (4, 4), (2, 2)),
        WindowedAttention((18, 18), (4, 4), (2, 2)),  # padded to 20x20
        WindowedAttention((9, 6), (4, 3), (2, 1)),  # rectangular, padded rows
    ],
)
def test_window_product_equals_dense_product(geometry):
    generator = torch.Generator().manual_seed(0)
    fused = torch.rand(2, geometry.num_windows, geometry.window_area, geometry.window_area, generator=generator)
    vector = torch.rand(2, geometry.num_tokens, generator=generator)
    n = geometry.num_tokens
    dense = dense_from_windows(fused, geometry)
    torch.testing.assert_close(geometry.times(vector, fused), torch.einsum("bn,bnm->bm", vector, dense[:, :n, :n]))
    torch.testing.assert_close(geometry.row_sums(fused), dense.sum(dim=-1)[:, :n])


def test_spread_equals_merge_matrix_chain():
    vector = torch.rand(2, 3 * 2)
    chained = vector @ merge_matrix((3, 2), (5, 3)) @ merge_matrix((5, 3), (9, 6))
    torch.testing.assert_close(spread(vector, (3, 2), (9, 6)), chained)
    torch.testing.assert_close(spread(vector, (3, 2), (3, 2)), vector)
    with pytest.raises(ValueError, match="not merged from"):
        spread(vector, (3, 2), (4, 4))


def test_geometry_matches_the_blocks_real_token_dependencies(models, make_images):
    """Token i's attention output depends on token j exactly where the mapped attention has an edge i <- j."""
    model = models["swin"]
    adapter = detect(model)
    images = make_images(72, batch=1)
    record = capture_pass(adapter, images)
    tokens = model.patch_embed(images).detach()  # [1, 18, 18, C]: the first block's input
    shifted = 1
    block = model.layers[0].blocks[shifted]
    geometry = record.geometries[shifted]
    assert geometry.shift_size == (2, 2) and geometry.padded_size == (20, 20)
    fused = record.attentions[shifted].amax(dim=1)  # an edge exists if any head has one
    x = block.norm1(tokens).detach().requires_grad_(True)
    out = block._attn(x)
    for row, col in [(0, 0), (17, 17), (16, 1), (1, 16), (5, 9)]:
        (grad,) = torch.autograd.grad(out[0, row, col].sum(), x, retain_graph=True)
        depends = grad[0].abs().sum(dim=-1).flatten() > 1e-12
        one_hot = torch.zeros(1, geometry.num_tokens)
        one_hot[0, row * 18 + col] = 1.0
        edges = geometry.times(one_hot, fused)[0] > 1e-12
        assert torch.equal(depends, edges), (row, col)


def rollout_oracle(record, start: int = 0) -> torch.Tensor:
    """``w M_L ... M_s`` with dense ``rownorm(A + I)`` per block (padding tokens as sinks) and merge matrices."""
    geometries = record.geometries
    last = geometries[-1].num_tokens
    vector = torch.full((record.batch_size, last), 1.0 / last)
    for index in reversed(range(start, len(geometries))):
        geometry = geometries[index]
        if index + 1 < len(geometries) and geometries[index + 1].grid_size != geometry.grid_size:
            vector = vector @ merge_matrix(geometries[index + 1].grid_size, geometry.grid_size)
        dense = dense_from_windows(record.attentions[index].mean(dim=1), geometry)
        dense = dense + torch.eye(dense.shape[-1])
        dense = dense / dense.sum(dim=-1, keepdim=True)
        n = geometry.num_tokens
        vector = torch.einsum("bn,bnm->bm", vector, dense[:, :n, :n])
    for index in reversed(range(start)):
        if geometries[index + 1].grid_size != geometries[index].grid_size:
            vector = vector @ merge_matrix(geometries[index + 1].grid_size, geometries[index].grid_size)
    return vector.reshape(record.batch_size, *record.layout.grid_size)


@pytest.mark.parametrize("start_layer", [0, 3])
def test_rollout_equals_dense_oracle(models, make_images, start_layer):
    model = models["swin"]
    images = make_images(72, batch=2)
    record = capture_pass(detect(model), images)
    maps = X.create("rollout", model, start_layer=start_layer)(images)
    torch.testing.assert_close(maps, rollout_oracle(record, start_layer), rtol=1e-5, atol=1e-8)


def test_rollout_keeps_mass_without_padding(make_model):
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=3,
        embed_dim=24,
        depths=(2, 2),
        num_heads=(1, 2),
        window_size=4,
        img_size=32,
    ).eval()
    maps = X.create("rollout", model)(torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 8, 8)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(2))


def test_layout_and_errors():
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)
    )
    adapter = detect(model)
    assert isinstance(adapter, SwinTransformerAdapter) and adapter.family == "swin"
    assert [g.grid_size for g in adapter.attention_geometries(torch.zeros(1, 3, 224, 224))] == [
        (56, 56),
        (28, 28),
        (14, 14),
        (7, 7),
    ]
    with pytest.raises(ValueError, match="takes 224x224 images"):
        adapter.layout(torch.zeros(1, 3, 64, 64))
    model.reset_classifier(5, global_pool="max")
    with pytest.raises(ValueError, match="global_pool='max' is not supported"):
        detect(model)


@pytest.mark.parametrize(
    "name, options",
    [
        ("rollout", {"head_fusion": "max", "discard_ratio": 0.5}),
        ("gmar", {"gradient_source": "head_output"}),
        ("gradcam", {"layer": 0}),  # a first-stage block: the avg readout weighs its 18x18 tokens alike
        ("raw_attention", {"layer": 3}),
        ("generic_attention", {"start_layer": 4}),
    ],
)
def test_explainer_options_on_swin(models, make_images, name, options):
    images = make_images(72, batch=2)
    explainer = X.create(name, models["swin"], **options)
    maps = explainer(images, torch.tensor([1, 4]))
    assert maps.shape == (2, 18, 18) and torch.isfinite(maps).all()
    single = torch.cat([explainer(images[i : i + 1], torch.tensor([t])) for i, t in enumerate([1, 4])])
    torch.testing.assert_close(maps, single, rtol=0, atol=1e-6)
