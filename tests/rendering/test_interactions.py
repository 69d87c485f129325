"""ERF pictures: a few patches' receptive fields tinted over the image; the curve is the mean size per block."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from lightning_vitx.analysis import patch_interactions  # noqa: E402
from lightning_vitx.callbacks._panel import interaction_figures  # noqa: E402
from lightning_vitx.rendering import Picture, erf_figure, erf_size_figure  # noqa: E402
from lightning_vitx.rendering.interactions import NO_INTERACTION, QUERY_COLOURS, pick_queries  # noqa: E402


def small_model():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=16, embed_dim=32, num_heads=2, depth=3,
        num_classes=3,
    ).eval()  # fmt: skip


def panel(picture, index):
    top, left, height, width = picture.boxes[f"image {index}"]
    return picture.pixels[top : top + height, left : left + width].astype(float)


def faded(images, index, factor):
    """The image as the figure fades it, enlarged ``factor`` times: 0-255 ``[H, W, 3]``."""
    rgb = 0.45 + 0.55 * ((images[index] * 0.5 + 0.5).clamp(0, 1))
    return rgb.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1).permute(1, 2, 0)


def rgb255(values):
    return (torch.as_tensor(values, dtype=torch.float32) * 255).round().numpy()


def test_erf_figure_tints_each_shown_patchs_receptive_field():
    model, images = small_model(), torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = patch_interactions(model, images, indicator="attention", mass=0.5)
    picture = erf_figure(images, result, (0.5,) * 3, (0.5,) * 3, layer=1, captions=["a", "b"], queries=2)
    assert "Effective receptive field (ERF) at block 2 of 3" in picture.texts[0]
    sizes = []
    for index in range(2):
        shown = pick_queries(result.interactions[1][index], (4, 4), 2)
        assert len(shown) == 2
        drawn = panel(picture, index)
        factor = drawn.shape[0] // 64
        patch = 16 * factor
        colours = [torch.tensor(to_rgba(colour)[:3]) for colour in QUERY_COLOURS]
        near = {(q // 4 + dr, q % 4 + dc) for q in shown for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
        checked = 0
        for key in range(16):  # away from the stars, labels and outlines: the faded image, tinted by each field
            row, column = divmod(key, 4)
            if (row, column) in near:
                continue
            expected = faded(images, index, factor)
            for colour, query in zip(colours, shown, strict=False):
                if result.erf[1][index, query, key]:
                    expected = 0.5 * colour + 0.5 * expected
            y, x = row * patch + patch // 2, column * patch + patch // 2
            np.testing.assert_allclose(drawn[y, x], rgb255(expected[y, x]), atol=1)
            checked += 1
        assert checked >= 4
        for colour, query in zip(QUERY_COLOURS, shown, strict=False):  # each star, in its patch's centre
            y, x = (query // 4) * patch + patch // 2, (query % 4) * patch + patch // 2
            np.testing.assert_allclose(drawn[y, x], rgb255(to_rgba(colour)[:3]), atol=1)
        sizes += [str(int(result.erf_size[1][index, q])) for q in shown]
    assert [text for text in picture.texts[1:] if text.isdigit()] == sizes  # the ERF size beside each star
    with pytest.raises(ValueError, match="layer must lie in"):
        erf_figure(images, result, (0.5,) * 3, (0.5,) * 3, layer=3)


def test_a_block_without_interaction_says_so():
    model, images = small_model(), torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    result = patch_interactions(model, images)  # gradient indicator: the head reads the class token only
    assert int(result.erf_size[-1].sum()) == 0
    picture, curve = erf_figure(images, result, (0.5,) * 3, (0.5,) * 3, layer=-1), erf_size_figure(result)
    try:
        messages = [text.replace("\n", " ") for text in picture.texts[1:]]
        assert messages == [NO_INTERACTION] * 2
        for index in range(2):  # nothing tinted, no star: the faded image around the message
            drawn = panel(picture, index)
            expected = rgb255(faded(images, index, drawn.shape[0] // 64))
            np.testing.assert_allclose(drawn[:30], expected[:30], atol=1)
        assert any(NO_INTERACTION in t.get_text().replace("\n", " ") for t in curve.axes[0].texts)
    finally:
        plt.close(curve)


def test_queries_are_spread_and_have_interaction():
    mass = torch.zeros(16, 16)
    mass[0, 1], mass[1, 2], mass[10, 3] = 5.0, 4.0, 1.0  # 0 and 1 are neighbours; 10 is two rows down
    assert pick_queries(mass, (4, 4), 3) == [0, 10]
    assert pick_queries(torch.zeros(16, 16), (4, 4), 3) == []


def test_erf_size_curve_is_the_mean_size_per_block():
    model, images = small_model(), torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    result = patch_interactions(model, images, indicator="attention")
    figure = erf_size_figure(result)
    try:
        lines = figure.axes[0].lines
        assert len(lines) == 4
        np.testing.assert_allclose(lines[-1].get_ydata(), result.mean_erf_size().mean(0).numpy(), rtol=1e-6)
        np.testing.assert_allclose(lines[0].get_xdata(), [1, 2, 3])  # blocks counted from 1
    finally:
        plt.close(figure)


def test_interaction_figures_for_the_monitor():
    model, images = small_model(), torch.randn(2, 3, 64, 64)
    figures = interaction_figures(model, images, target=1)
    assert sorted(figures) == ["erf", "erf_size"]
    assert all(isinstance(figure, Picture) for figure in figures.values())  # drawn once, kept as pixels
    assert "block 2 of 3" in figures["erf"].texts[0]  # the block before the last by default
    assert figures["erf_size"].pixels.shape == (320, 440, 3)  # the curve's figure at 100 dpi
