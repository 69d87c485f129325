import torch

from lightning_vitx.rendering import colorize, denormalize, model_mean_std, normalize_maps, overlay, panel_figure


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


def test_overlay_puts_heat_where_the_map_is_high():
    maps = torch.zeros(1, 2, 2)
    maps[0, 0, 0] = 1.0
    out = overlay(torch.zeros(1, 3, 32, 32), maps, (0.5,) * 3, (0.5,) * 3, alpha=1.0, cmap="gray")
    assert out.shape == (1, 3, 32, 32)
    assert out[0, :, 0, 0].mean() > 0.9 and out[0, :, -1, -1].mean() < 0.1


def test_model_mean_std_reads_pretrained_cfg(models):
    assert model_mean_std(models["vit"]) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_panel_figure_has_one_row_per_sample_and_titled_columns(tmp_path):
    figure = panel_figure(torch.zeros(3, 3, 16, 16), {"a": torch.rand(3, 2, 2), "b": torch.rand(3, 2, 2)},
                          (0.5,) * 3, (0.5,) * 3, captions=["x", "y", "z"])
    axes = figure.get_axes()
    assert len(axes) == 9
    assert [axis.get_title() for axis in axes[:3]] == ["image", "a", "b"]
    figure.savefig(tmp_path / "panel.png")
    assert (tmp_path / "panel.png").stat().st_size > 1000
