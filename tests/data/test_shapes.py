import pytest
import torch

from lightning_vitx.data import SHAPE_CLASSES, ShapesDataset, shortcut_mask


def test_samples_are_reproducible_and_masks_cover_the_shape():
    data = ShapesDataset(num_samples=32, image_size=48, seed=3)
    again = ShapesDataset(num_samples=32, image_size=48, seed=3)
    labels = set()
    for index in range(32):
        image, label, mask = data[index]
        image2, label2, mask2 = again[index]
        assert torch.equal(image, image2) and label == label2 and torch.equal(mask, mask2)
        labels.add(label)
        area = mask.float().mean()
        assert 0.02 < area < 0.25
        # the shape is one flat colour: no noise inside the mask
        inside = image[:, mask]
        assert inside.std(dim=1).max() < 1e-6
    assert labels == {0, 1, 2}
    assert not torch.equal(ShapesDataset(4, 48, seed=4)[0][0], data[0][0])


def _reference_mask(kind: int, size: int, cy: float, cx: float, radius: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dy, dx = ys - cy, xs - cx
    if kind == 0:
        return dy.square() + dx.square() <= radius**2
    if kind == 1:
        return (dy.abs() <= radius * 0.85) & (dx.abs() <= radius * 0.85)
    inside_height = (dy >= -radius) & (dy <= radius * 0.8)
    return inside_height & (dx.abs() <= (dy + radius) / (1.8 * radius) * radius)


def _reference_sample(seed: int, index: int, size: int, noise: float = 0.25) -> tuple[torch.Tensor, int, torch.Tensor]:
    """The generator as it was before distractors existed: the default dataset must stay bit for bit the same."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    label = int(torch.randint(3, (), generator=generator))
    radius = uniform(0.12, 0.22) * size
    cy, cx = uniform(radius, size - radius), uniform(radius, size - radius)
    mask = _reference_mask(label, size, cy, cx, radius)
    background = torch.rand(3, 1, 1, generator=generator) * 0.4 + 0.1
    image = background + noise * torch.randn(3, size, size, generator=generator)
    colour = torch.rand(3, generator=generator) * 0.5 + 0.5
    colour[int(torch.randint(3, (), generator=generator))] *= 0.3
    image = torch.where(mask, colour[:, None, None], image).clamp(0.0, 1.0)
    return (image - 0.5) / 0.5, label, mask


@pytest.mark.parametrize(("size", "seed"), [(64, 0), (32, 1), (48, 7), (16, 2)])
def test_the_default_dataset_is_unchanged(size, seed):
    """Models trained on the default dataset (the suite's shared one, users' own) see the same images as before."""
    data = ShapesDataset(32, size, seed=seed)
    explicit = ShapesDataset(32, size, seed=seed, distractors=0, gap=5.0)  # gap only matters with distractors
    for index in range(32):
        image, label, mask = data[index]
        reference = _reference_sample(seed, index, size)
        assert torch.equal(image, reference[0]) and label == reference[1] and torch.equal(mask, reference[2])
        image2, label2, mask2 = explicit[index]
        assert torch.equal(image, image2) and label == label2 and torch.equal(mask, mask2)
        assert data.sample(index).distractors.shape == (0, size, size)


def _pixel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Least distance between the pixel centres of two ``[S, S]`` masks."""
    return float(torch.cdist(a.nonzero().float(), b.nonzero().float()).min())


def test_distractors_are_grey_decoys_apart_from_the_shape_and_the_mask_covers_the_shape_only():
    data = ShapesDataset(num_samples=48, image_size=64, seed=2, distractors=2, gap=2.0)
    labels = set()
    for index in range(48):
        image, label, mask, decoys, _ = data.sample(index)
        labels.add(label)
        assert decoys.shape == (2, 64, 64) and decoys.dtype == torch.bool
        assert torch.equal((image, label, mask)[2], data[index][2]) and torch.equal(image, data[index][0])
        pixels = image * 0.5 + 0.5  # back to 0..1
        # the coloured shape: flat, chromatic, and what the mask covers
        shape = pixels[:, mask]
        assert shape.std(dim=1).max() < 1e-6
        assert float(shape[:, 0].max() - shape[:, 0].min()) > 0.1
        for k, decoy in enumerate(decoys):
            assert 0.01 < decoy.float().mean() < 0.25  # present, and a shape's size
            inside = pixels[:, decoy]
            assert inside.std(dim=1).max() < 1e-6  # one flat colour...
            assert float(inside[:, 0].max() - inside[:, 0].min()) < 1e-6  # ...that is grey
            assert 0.4 - 1e-6 <= float(inside[0, 0]) <= 0.8 + 1e-6
            assert not (decoy & mask).any()
            assert _pixel_distance(decoy, mask) >= 2.0
            for other in decoys[k + 1 :]:
                assert _pixel_distance(decoy, other) >= 2.0
    assert labels == {0, 1, 2}


def test_distractors_are_reproducible_and_follow_the_seed():
    data = ShapesDataset(8, 64, seed=5, distractors=2)
    again = ShapesDataset(8, 64, seed=5, distractors=2)
    other = ShapesDataset(8, 64, seed=6, distractors=2)
    for index in range(8):
        first, second = data.sample(index), again.sample(index)
        assert torch.equal(first.image, second.image) and first.label == second.label
        assert torch.equal(first.mask, second.mask) and torch.equal(first.distractors, second.distractors)
    assert not torch.equal(data.sample(0).distractors, other.sample(0).distractors)
    # decoys draw after everything else: the label, background and noise are those of the plain dataset
    plain = ShapesDataset(8, 64, seed=5)
    for index in range(8):
        image, label, mask, decoys, _ = data.sample(index)
        plain_image, plain_label, plain_mask = plain[index]
        assert label == plain_label
        background = ~(mask | plain_mask | decoys.any(dim=0))
        assert torch.equal(image[:, background], plain_image[:, background])


def test_decoys_look_like_the_shape_in_size_and_kind():
    """Neither size nor which shapes are present tells the shape apart from a decoy."""
    data = ShapesDataset(num_samples=300, image_size=64, seed=0, distractors=2)
    shape_area, decoy_area = [], []
    decoy_kinds = set()
    for index in range(len(data)):
        sample = data.sample(index)
        shape_area.append(float(sample.mask.sum()))
        decoy_area += [float(d.sum()) for d in sample.distractors]
        for decoy in sample.distractors:  # the kind of a decoy from its fill of its bounding box
            ys, xs = decoy.nonzero().unbind(1)
            fill = float(decoy.sum()) / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
            decoy_kinds.add("square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle")
    shape_mean, decoy_mean = sum(shape_area) / len(shape_area), sum(decoy_area) / len(decoy_area)
    assert abs(shape_mean - decoy_mean) / shape_mean < 0.1
    assert decoy_kinds == set(SHAPE_CLASSES)


def test_crowded_images_get_fewer_decoys_that_still_keep_apart():
    data = ShapesDataset(4, 32, seed=0, distractors=6, gap=1.0)
    for index in range(4):
        image, label, mask, decoys, _ = data.sample(index)
        assert 0 <= decoys.shape[0] < 6
        assert not (decoys & mask).any()
        assert decoys.sum(0).max() <= 1  # no two decoys share a pixel


@pytest.mark.parametrize("options", [{"distractors": -1}, {"distractors": 1.5}, {"distractors": True}, {"gap": -1.0}])
def test_bad_options_fail(options):
    with pytest.raises(ValueError):
        ShapesDataset(4, 32, **options)


def test_the_data_module_passes_distractors_on():
    from lightning_vitx.data import ShapesDataModule

    module = ShapesDataModule(image_size=32, train_size=4, val_size=4, batch_size=4, seed=3, distractors=1)
    images, labels, masks = next(iter(module.val_dataloader()))
    expected = ShapesDataset(4, 32, seed=4, distractors=1)
    torch.testing.assert_close(images, torch.stack([expected[i][0] for i in range(4)]))
    assert not torch.equal(images, torch.stack([ShapesDataset(4, 32, seed=4)[i][0] for i in range(4)]))


def test_the_shortcut_watermark_codes_the_class_and_leaves_the_rest_of_the_sample_as_it_was():
    plain = ShapesDataset(num_samples=12, image_size=32, seed=3, distractors=1)
    cued = ShapesDataset(num_samples=12, image_size=32, seed=3, distractors=1, shortcut=1.0)
    for index in range(12):
        before, after = plain.sample(index), cued.sample(index)
        cue = after.shortcut
        assert torch.equal(cue, shortcut_mask(after.label, 32)) and int(cue.sum()) == 16
        assert torch.equal(before.image[:, ~cue], after.image[:, ~cue])  # only the watermark's pixels change
        assert torch.allclose(after.image[:, cue], torch.tensor(1.0))  # white, normalised with mean 0.5, std 0.5
        assert torch.equal(after.mask, before.mask & ~cue)  # the object's region leaves the watermark out
        image, label, regions = cued[index]
        assert torch.equal(regions["object"], after.mask) and torch.equal(regions["shortcut"], cue)
    corners = {label: tuple(shortcut_mask(label, 32).nonzero()[0].tolist()) for label in range(3)}
    assert len(set(corners.values())) == 3  # one corner per class


def test_the_shortcut_share_and_the_unset_default():
    half = ShapesDataset(num_samples=400, image_size=16, seed=0, shortcut=0.5)
    share = sum(bool(half.sample(index).shortcut.any()) for index in range(400)) / 400
    assert 0.4 < share < 0.6
    none, zero = ShapesDataset(4, 16, seed=1), ShapesDataset(4, 16, seed=1, shortcut=0.0)
    for index in range(4):
        image, label, mask = none[index]
        image0, label0, regions = zero[index]
        assert torch.equal(image, image0) and torch.equal(mask, regions["object"]) and not regions["shortcut"].any()
    with pytest.raises(ValueError, match=r"shortcut must be a share in \[0, 1\]"):
        ShapesDataset(4, 16, shortcut=1.5)


def test_materialize_keeps_the_regions():
    data = ShapesDataset(num_samples=5, image_size=16, seed=2, shortcut=0.6)
    stored = data.materialize()
    for index in range(5):
        image, label, regions = data[index]
        image_m, label_m, regions_m = stored[index]
        assert torch.equal(image, image_m) and int(label_m) == label
        assert all(torch.equal(regions[name], regions_m[name]) for name in ("object", "shortcut"))
