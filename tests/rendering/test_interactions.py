"""ERF pictures: one arrow per patch along its tendency, coloured by its ERF size; the curve is the mean size."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402

from lightning_vitx.analysis import patch_interactions  # noqa: E402
from lightning_vitx.callbacks._panel import interaction_figures  # noqa: E402
from lightning_vitx.rendering import erf_figure, erf_size_figure  # noqa: E402


def small_model():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=16, embed_dim=32, num_heads=2, depth=3,
        num_classes=3,
    ).eval()  # fmt: skip


def test_erf_figure_draws_each_patch_tendency_coloured_by_size():
    model, images = small_model(), torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = patch_interactions(model, images, indicator="attention", mass=0.5)
    figure = erf_figure(images, result, (0.5,) * 3, (0.5,) * 3, layer=1, captions=["a", "b"])
    try:
        quivers = [c for axis in figure.axes for c in axis.collections if isinstance(c, Quiver)]
        assert len(quivers) == 2
        for index, quiver in enumerate(quivers):
            assert quiver.N == 16  # a 4x4 grid: one arrow per patch
            np.testing.assert_allclose(quiver.get_array(), result.erf_size[1][index].float().numpy())
            assert quiver.norm.vmin == 0 and quiver.norm.vmax == 16  # one colour range: 0 .. all patches
            # arrows in pixels (16 px patches), x along columns, y along rows (down the image)
            np.testing.assert_allclose(quiver.U, result.tendency[1][index, :, 1].numpy() * 16, rtol=1e-6)
            np.testing.assert_allclose(quiver.V, result.tendency[1][index, :, 0].numpy() * 16, rtol=1e-6)
            np.testing.assert_allclose(quiver.X[:4], [8, 24, 40, 56])
    finally:
        plt.close(figure)
    with pytest.raises(ValueError, match="layer must lie in"):
        erf_figure(images, result, (0.5,) * 3, (0.5,) * 3, layer=3)


def test_erf_size_curve_is_the_mean_size_per_block():
    model, images = small_model(), torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    result = patch_interactions(model, images, indicator="attention")
    figure = erf_size_figure(result)
    try:
        lines = figure.axes[0].lines
        assert len(lines) == 4
        np.testing.assert_allclose(lines[-1].get_ydata(), result.mean_erf_size().mean(0).numpy(), rtol=1e-6)
        np.testing.assert_allclose(lines[0].get_xdata(), [0, 1, 2])
    finally:
        plt.close(figure)


def test_interaction_figures_for_the_monitor():
    model, images = small_model(), torch.randn(2, 3, 64, 64)
    figures = interaction_figures(model, images, target=1)
    try:
        assert sorted(figures) == ["erf", "erf_size"]
        assert "block 1" in figures["erf"].texts[0].get_text()  # the block before the last by default
    finally:
        for figure in figures.values():
            plt.close(figure)
