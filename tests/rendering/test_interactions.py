"""ERF pictures: a few patches' receptive fields tinted over the image; the curve is the mean size per block."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from lightning_vitx.analysis import patch_interactions  # noqa: E402
from lightning_vitx.callbacks._panel import interaction_figures  # noqa: E402
from lightning_vitx.rendering import erf_figure, erf_size_figure  # noqa: E402
from lightning_vitx.rendering.interactions import NO_INTERACTION, QUERY_COLOURS, pick_queries  # noqa: E402


def small_model():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=16, embed_dim=32, num_heads=2, depth=3,
        num_classes=3,
    ).eval()  # fmt: skip


def test_erf_figure_tints_each_shown_patchs_receptive_field():
    model, images = small_model(), torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = patch_interactions(model, images, indicator="attention", mass=0.5)
    figure = erf_figure(images, result, (0.5,) * 3, (0.5,) * 3, layer=1, captions=["a", "b"], queries=2)
    try:
        assert "Effective receptive field (ERF) at block 2 of 3" in figure.texts[0].get_text()
        for index, axis in enumerate(figure.axes):
            shown = pick_queries(result.interactions[1][index], (4, 4), 2)
            assert len(shown) == 2
            fields = [p for p in axis.patches if isinstance(p, Rectangle) and p.get_fill()]
            tinted = {(round(p.get_x() / 16), round(p.get_y() / 16), p.get_facecolor()) for p in fields}
            expected = {
                (key % 4, key // 4, to_rgba(colour, 0.5))
                for colour, query in zip(QUERY_COLOURS, shown, strict=False)
                for key in result.erf[1][index, query].nonzero()[:, 0].tolist()
            }
            assert tinted == expected  # 16 px patches: each shown patch's ERF, in its colour
            stars = [(line.get_xdata()[0], line.get_ydata()[0]) for line in axis.lines]
            assert stars == [((q % 4 + 0.5) * 16, (q // 4 + 0.5) * 16) for q in shown]
            sizes = [int(text.get_text()) for text in axis.texts]
            assert sizes == [int(result.erf_size[1][index, q]) for q in shown]
    finally:
        plt.close(figure)
    with pytest.raises(ValueError, match="layer must lie in"):
        erf_figure(images, result, (0.5,) * 3, (0.5,) * 3, layer=3)


def test_a_block_without_interaction_says_so():
    model, images = small_model(), torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    result = patch_interactions(model, images)  # gradient indicator: the head reads the class token only
    assert int(result.erf_size[-1].sum()) == 0
    figure, curve = erf_figure(images, result, (0.5,) * 3, (0.5,) * 3, layer=-1), erf_size_figure(result)
    try:
        for axis in figure.axes:
            assert not axis.lines and NO_INTERACTION in axis.texts[0].get_text().replace("\n", " ")
        assert any(NO_INTERACTION in t.get_text().replace("\n", " ") for t in curve.axes[0].texts)
    finally:
        plt.close(figure)
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
    try:
        assert sorted(figures) == ["erf", "erf_size"]
        assert "block 2 of 3" in figures["erf"].texts[0].get_text()  # the block before the last by default
    finally:
        for figure in figures.values():
            plt.close(figure)
