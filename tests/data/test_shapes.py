import torch

from lightning_vitx.data import ShapesDataset


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
