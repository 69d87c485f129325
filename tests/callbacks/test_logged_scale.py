"""Every logged map picture carries its colour scale: a strip below it, the range and the map's state in its caption."""

import matplotlib
import numpy as np
import pytest
import torch

from lightning_vitx.callbacks._explaining import ExplainingRun, MonitorPass
from lightning_vitx.callbacks._panel import PanelRows, pass_record
from lightning_vitx.data import tiny_vit_for_shapes
from lightning_vitx.loggers import PassRecord
from lightning_vitx.rendering import MapScale, shared_scale

SIZE = 32


def drawn(model, panel, per_map_scale=False):
    """The pictures ``pass_record`` makes of ``panel`` for a monitor named ``explain``."""
    shown = MonitorPass(ExplainingRun(model, torch.device("cpu"), 4), {}, {}, [], per_map_scale=per_map_scale)
    return pass_record(PassRecord(0, 0, {}), shown, panel)


@pytest.fixture(scope="module")
def logged():
    """One pass's record for four samples: a rollout-like map (.0143-.0146), an all-zero map, a flat one, a NaN."""
    model = tiny_vit_for_shapes(SIZE, seed=0).eval()
    images = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    grid = model.patch_embed.grid_size
    narrow = 0.0143 + 0.0003 * torch.rand(grid, generator=torch.Generator().manual_seed(1))
    maps = torch.stack([narrow, torch.zeros(grid), torch.full(grid, 0.5), torch.full(grid, float("nan"))])
    signed = torch.randn(4, *grid, generator=torch.Generator().manual_seed(2))
    panel = PanelRows(
        ids=torch.arange(4),
        images=images,
        labels=torch.tensor([0, 1, 2, 0]),
        masks=torch.zeros(4, SIZE, SIZE, dtype=torch.bool),
        probabilities=torch.softmax(torch.randn(4, 3), dim=1),
        maps={"rollout": maps, "lrp": signed},
        scores={},
    )
    return drawn(model, panel), maps


def strip(picture: np.ndarray) -> np.ndarray:
    """The colour bar's rows: below the picture and its one-row white gap."""
    return picture[SIZE + 1 :]


def colours(cmap: str, positions: list[float]) -> np.ndarray:
    return (np.array([matplotlib.colormaps[cmap](p)[:3] for p in positions]) * 255).round()


def test_each_map_picture_ends_in_its_colour_bar(logged):
    record, _ = logged
    for name, cmap in (("rollout", "inferno"), ("lrp", "RdBu_r")):
        pictures = record.images[f"explain/{name}/maps"].pictures
        for picture in pictures:
            assert picture.shape[0] > SIZE and (picture[SIZE] == 255).all()  # the white gap
            bar = strip(picture).astype(float)
            assert (bar == bar[:1]).all()  # every row of the strip is the same
            ends = bar[0, [0, -1]]
            assert np.abs(ends - colours(cmap, [0.0, 1.0])).max() <= 1, name  # low end left, high end right
        masks = record.images[f"explain/{name}/maps"].masks
        assert masks is not None and masks[0].shape == pictures[0].shape[:2]  # outlines still fit the picture


def test_the_caption_states_the_range_and_the_maps_state(logged):
    record, maps = logged
    captions = record.images["explain/rollout/maps"].captions
    scale = shared_scale(maps)
    assert (scale.low, scale.high) == (0.0, 0.5)  # the four maps share one scale; unsigned, it starts at 0
    assert all(f"rollout: scale 0..{scale.high:.3g}" in caption for caption in captions)
    assert [caption.rsplit(", ", 1)[-1] for caption in captions[1:]] == ["all zero", "flat", "NaN"]
    assert not captions[0].endswith(("all zero", "flat", "NaN"))
    assert all("lrp: scale ±" in caption for caption in record.images["explain/lrp/maps"].captions)


def test_a_narrow_map_is_drawn_near_its_level_not_stretched():
    """From 0, a map spanning .0143-.0146 fills the top 2 % of the colormap, not all of it."""
    narrow = torch.tensor([[[0.0143, 0.0146]]])
    positions = shared_scale(narrow).apply(narrow)
    assert float(positions.min()) > 0.97
    assert shared_scale(narrow, from_zero=False).apply(narrow).tolist() == [[[0.0, 1.0]]]
    assert MapScale(0.0, 0.0).flat  # all-zero maps keep a flat scale


def test_per_map_scales_give_each_picture_its_own_range(logged):
    record, maps = logged
    model = tiny_vit_for_shapes(SIZE, seed=0).eval()
    panel = PanelRows(
        ids=torch.arange(4),
        images=torch.zeros(4, 3, SIZE, SIZE),
        labels=None,
        masks=None,
        probabilities=torch.full((4, 3), 1 / 3),
        maps={"rollout": maps},
        scores={},
    )
    per_map = drawn(model, panel, per_map_scale=True)
    images = per_map.images["explain/rollout/maps"]
    assert all(picture.shape[0] > SIZE for picture in images.pictures)
    assert f"scale 0..{float(maps[0].max()):.3g}" in images.captions[0]  # its own range, not the shared 0..0.5
    assert "flat scale at 0.5" in images.captions[2]
