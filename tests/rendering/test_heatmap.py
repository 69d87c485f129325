import torch

from lightning_vitx.rendering import (
    colorize,
    denormalize,
    flat_maps,
    model_mean_std,
    normalize_maps,
    overlay,
    per_map_scales,
    shared_scale,
)


def test_normalize_maps_min_max_per_map():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    expected = torch.tensor([[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(normalize_maps(maps), expected)


def test_denormalize_inverts_the_model_normalisation():
    rgb = torch.rand(2, 3, 8, 8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalised = (rgb - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(denormalize(normalised, mean, std), rgb)


def test_colorize_uses_the_colormap_ends():
    rgb = colorize(torch.tensor([[[0.0, 1.0]]]), cmap="gray")
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.zeros(3))
    torch.testing.assert_close(rgb[0, :, 0, 1], torch.ones(3))


def test_overlay_puts_heat_where_the_map_is_high_and_leaves_the_image_where_it_is_low():
    maps = torch.zeros(1, 2, 2)
    maps[0, 0, 0] = 1.0
    out = overlay(torch.zeros(1, 3, 32, 32), maps, (0.5,) * 3, (0.5,) * 3, alpha=1.0, cmap="gray")
    assert out.shape == (1, 3, 32, 32)
    assert out[0, :, 0, 0].mean() > 0.9  # full heat: white
    torch.testing.assert_close(out[0, :, -1, -1], torch.full((3,), 0.5))  # no relevance: the grey image itself


def test_model_mean_std_reads_pretrained_cfg(models):
    assert model_mean_std(models["vit"]) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_maps_of_one_explainer_share_the_colour_scale():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[0.0, 0.5], [1.0, 2.0]]])  # the second is half the first
    scale = shared_scale(maps)
    assert (scale.low, scale.high) == (0.0, 4.0)
    positions = scale.apply(maps)
    torch.testing.assert_close(positions[1], positions[0] / 2)  # not stretched to its own range
    torch.testing.assert_close(per_map_scales(maps)[1].apply(maps[1]), per_map_scales(maps)[0].apply(maps[0]))


def test_constant_and_all_zero_maps_are_drawn_flat_and_marked():
    maps = torch.stack([torch.full((2, 2), 3.0), torch.zeros(2, 2), torch.tensor([[0.0, 1.0], [2.0, 4.0]])])
    constant, zero = flat_maps(maps)
    assert constant.tolist() == [True, True, False] and zero.tolist() == [False, True, False]
    drawn = overlay(torch.zeros(3, 3, 8, 8), maps, (0.5,) * 3, (0.5,) * 3)
    assert drawn[0].flatten(1).std(dim=1).max() == 0 and drawn[1].flatten(1).std(dim=1).max() == 0
    assert drawn[2].flatten(1).std(dim=1).min() > 0
    assert shared_scale(torch.zeros(2, 2, 2)).apply(torch.zeros(2, 2, 2)).eq(0).all()


def test_a_signed_map_is_centred_at_zero_on_a_diverging_colormap():
    maps = torch.tensor([[[-1.0, 0.0], [0.5, 3.0]]])
    scale = shared_scale(maps, signed=True)
    assert (scale.low, scale.high, scale.cmap) == (-3.0, 3.0, "RdBu_r")
    torch.testing.assert_close(scale.apply(maps), torch.tensor([[[1 / 3, 0.5], [0.5833333, 1.0]]]))
    zero_pixel = overlay(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 2), (0.5,) * 3, (0.5,) * 3, signed=True)
    torch.testing.assert_close(zero_pixel, torch.full((1, 3, 8, 8), 0.75))  # zero relevance: the light grey image
    end = overlay(torch.zeros(1, 3, 8, 8), torch.tensor([[[-1.0, 1.0]]]), (0.5,) * 3, (0.5,) * 3, signed=True)
    torch.testing.assert_close(end[0, :, 0, 0], colorize(torch.zeros(1, 1, 1), "RdBu_r")[0, :, 0, 0])  # opaque ends


def test_non_finite_values_do_not_stretch_or_break_the_scale():
    maps = torch.tensor([[[float("nan"), 1.0], [2.0, float("inf")]]])
    scale = shared_scale(maps, from_zero=False)
    assert (scale.low, scale.high) == (1.0, 2.0)
    torch.testing.assert_close(scale.apply(maps), torch.tensor([[[0.0, 0.0], [1.0, 0.0]]]))
    from_zero = shared_scale(maps)  # the default: unsigned scales start at 0
    assert (from_zero.low, from_zero.high) == (0.0, 2.0)
    torch.testing.assert_close(from_zero.apply(maps), torch.tensor([[[0.0, 0.5], [1.0, 0.0]]]))


def test_one_signed_map_far_above_the_rest_does_not_blank_them():
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(8, 14, 14, generator=generator)
    maps[3] *= 60.0  # lrp's per-image peaks vary 46-60x on the trained ViT
    scale = shared_scale(maps, signed=True)
    others = torch.cat([maps[:3], maps[4:]])
    assert scale.high < 1.5 * float(others.abs().max())  # the bound follows the ordinary maps
    assert scale.clipped_from == float(maps.abs().max())
    colours = scale.apply(others)
    assert float(colours.std()) > 0.1  # they use the colour range (with the 60x map's bound: std ~0.004)
