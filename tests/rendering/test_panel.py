"""The composite panel, composed as a tensor: its cells, colour bars and marks, read back from the pixels."""

import matplotlib
import numpy as np
import pytest
import torch

from lightning_vitx.rendering import Picture, overlay, panel_figure, shared_scale
from lightning_vitx.rendering.heatmap import MASK_COLOUR
from lightning_vitx.rendering.panel import short_number, tick_values

GREY = (0.5,) * 3  # mean and std: zero images are mid grey


def rgb255(values):
    return (np.asarray(values, dtype=float) * 255).round()


def cmap(name, position):
    return rgb255(matplotlib.colormaps[name](position)[:3])


def cell(picture: Picture, row: int, column: int) -> np.ndarray:
    top, left, height, width = picture.boxes[f"cell {row} {column}"]
    return picture.pixels[top : top + height, left : left + width].astype(float)


def bar(picture: Picture, column: int) -> np.ndarray:
    top, left, height, width = picture.boxes[f"bar {column}"]
    return picture.pixels[top : top + height, left : left + width].astype(float)


def test_one_row_per_sample_titled_columns_and_each_cell_its_overlay_enlarged(tmp_path):
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = {"a": torch.rand(3, 2, 2), "b": torch.rand(3, 2, 2)}
    panel = panel_figure(images, maps, GREY, GREY, captions=["x", "y", "z"], title="epoch 3")
    assert sorted(key for key in panel.boxes if key.startswith("cell")) == [
        f"cell {r} {c}" for r in range(3) for c in range(3)
    ]
    assert panel.texts[:7] == ["epoch 3", "image", "a", "b", "x", "y", "z"]
    rows = [panel.boxes[f"cell {r} 0"][0] for r in range(3)]
    assert rows == sorted(rows) and panel.boxes["cell 0 0"][1] < panel.boxes["cell 0 1"][1] < panel.boxes["cell 0 2"][1]
    drawn = overlay(images, maps["b"], GREY, GREY)  # one shared scale for the column
    factor = cell(panel, 2, 2).shape[0] // 16
    expected = rgb255(drawn[2].permute(1, 2, 0).clamp(0, 1)).repeat(factor, axis=0).repeat(factor, axis=1)
    np.testing.assert_allclose(cell(panel, 2, 2), expected, atol=1)  # each pixel: its overlay pixel, 12x12
    panel.savefig(tmp_path / "panel.png", dpi=100)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "panel.png").convert("RGB")), panel.pixels)


def test_a_known_map_has_its_colour_and_the_bar_runs_through_the_colormap():
    maps = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])  # shared scale 0..1: the first at the top colour
    panel = panel_figure(torch.zeros(2, 3, 8, 8), {"a": maps}, GREY, GREY)
    hot = 0.3 * 0.5 + 0.7 * np.asarray(matplotlib.colormaps["inferno"](1.0)[:3])  # alpha 0.7 over mid grey
    np.testing.assert_allclose(cell(panel, 0, 1)[-1, -1], rgb255(hot), atol=1)  # away from the "flat 1" mark
    lower = cell(panel, 1, 1)[40:]  # below its "all zero" mark: no heat, the grey image
    np.testing.assert_allclose(lower, np.full_like(lower, 128), atol=0)
    strip = bar(panel, 1)
    np.testing.assert_allclose(strip[0, 0], cmap("inferno", 0.0), atol=1)
    np.testing.assert_allclose(strip[0, -1], cmap("inferno", 1.0), atol=1)
    assert {"flat 1", "all zero", "0", "0.4", "0.8"} <= set(panel.texts)  # the marks and the bar's ticks
    per_map = panel_figure(torch.zeros(2, 3, 8, 8), {"a": maps}, GREY, GREY, per_map=True)
    assert "each map's own range" in per_map.texts


def test_flat_and_all_zero_maps_are_marked_and_a_flat_column_has_a_one_colour_bar():
    maps = torch.stack([torch.full((2, 2), 3.0), torch.zeros(2, 2), torch.tensor([[0.0, 1.0], [2.0, 4.0]])])
    panel = panel_figure(torch.zeros(3, 3, 8, 8), {"a": maps}, GREY, GREY)
    assert panel.texts.count("flat 3") == 1 and panel.texts.count("all zero") == 1
    marked = cell(panel, 0, 1)[8, 8]  # under the mark's dark box: darker than the hot flat map beside it
    assert marked.sum() < cell(panel, 0, 1)[-1, -1].sum()
    only_zeros = panel_figure(torch.zeros(2, 3, 8, 8), {"a": torch.zeros(2, 2, 2)}, GREY, GREY)
    assert "flat: every map 0" in only_zeros.texts
    strip = bar(only_zeros, 1)
    assert (strip == strip[:1, :1]).all() and np.allclose(strip[0, 0], cmap("inferno", 0.0), atol=1)
    nan = panel_figure(torch.zeros(1, 3, 8, 8), {"a": torch.full((1, 2, 2), float("nan"))}, GREY, GREY)
    assert "NaN" in nan.texts and "all zero" not in nan.texts


def test_a_signed_column_is_centred_at_zero_and_says_where_it_clipped():
    maps = torch.randn(8, 4, 4, generator=torch.Generator().manual_seed(0))
    maps[3] *= 60.0
    scale = shared_scale(maps, signed=True)
    panel = panel_figure(torch.zeros(8, 3, 8, 8), {"lrp": maps}, GREY, GREY, signed={"lrp": True})
    strip = bar(panel, 1)
    np.testing.assert_allclose(strip[0, strip.shape[1] // 2], cmap("RdBu_r", 0.5), atol=3)  # white-ish middle
    np.testing.assert_allclose(strip[0, 0], cmap("RdBu_r", 0.0), atol=1)
    top, left, height, _ = panel.boxes["bar 1"]
    np.testing.assert_allclose(panel.pixels[top + height // 2, left - 3], cmap("RdBu_r", 0.0), atol=1)  # arrow
    assert f"clipped at ±{scale.high:.3g} (largest |R| {scale.clipped_from:.3g})" in panel.texts
    assert [short_number(-scale.high), "0", short_number(scale.high)] == [t for t in panel.texts if t in {
        short_number(-scale.high), "0", short_number(scale.high)}]  # fmt: skip


def test_masks_are_outlined_in_every_cell_of_their_row():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    panel = panel_figure(torch.zeros(1, 3, 8, 8), {"a": torch.zeros(1, 2, 2)}, GREY, GREY, masks=masks)
    for column in (0, 1):
        picture = cell(panel, 0, column)
        factor = picture.shape[0] // 8
        np.testing.assert_allclose(picture[2 * factor, 3 * factor], rgb255(MASK_COLOUR), atol=1)  # the edge
        np.testing.assert_allclose(picture[4 * factor, 4 * factor], [128, 128, 128], atol=0)  # inside: the image


@pytest.mark.parametrize(("peak", "signed"), [(1.46e-5, False), (0.0146, False), (123456.0, False), (3e-4, True)])
def test_colour_bar_labels_stay_few_and_short_on_any_range(peak, signed):
    ticks = tick_values(-peak if signed else 0.0, peak, signed)
    labels = [short_number(value) for value in ticks]
    assert 2 <= len(labels) <= 4 and all(len(label) <= 6 for label in labels), labels
    maps = torch.linspace(-peak if signed else 0.0, peak, 16).reshape(1, 4, 4)
    panel = panel_figure(torch.zeros(1, 3, 8, 8), {"m": maps}, GREY, GREY, signed={"m": signed})
    assert set(labels) <= set(panel.texts)
