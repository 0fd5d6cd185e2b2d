"""Synthetic shapes: contract, determinism, learnability, and the PNG writer round trip."""

import numpy as np
import pytest
import torch

from utils.data_utils import SegmentationDataset
from utils.synthetic import SyntheticSegmentationDataset, make_synthetic_pair, write_synthetic_dataset


@pytest.mark.parametrize("in_channels", [1, 3])
def test_binary_pair_contract(in_channels):
    image, mask = make_synthetic_pair(np.random.default_rng(0), (24, 40), num_classes=1, in_channels=in_channels)
    assert image.shape == (in_channels, 24, 40) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert mask.shape == (1, 24, 40) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0} and mask.any()


def test_multiclass_pair_contract_and_every_class_appears():
    seen = set()
    for index in range(30):
        image, mask = make_synthetic_pair(np.random.default_rng([0, index]), (32, 32), num_classes=4)
        assert mask.shape == (32, 32) and mask.dtype == np.int64
        assert mask.min() >= 0 and mask.max() <= 3
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2, 3}


def test_mask_is_learnable_from_the_image():
    """Shapes are brighter than the background, so even a brightness threshold finds them."""
    for index in range(10):
        image, mask = make_synthetic_pair(np.random.default_rng([1, index]), (64, 64))
        brightness, inside = image.max(axis=0), mask[0] > 0
        assert brightness[inside].mean() > brightness[~inside].mean() + 0.25


def test_tiny_images_still_have_foreground():
    for index in range(20):
        _, mask = make_synthetic_pair(np.random.default_rng([2, index]), (4, 4))
        assert mask.any()


def test_dataset_is_deterministic_per_seed_and_index():
    first = SyntheticSegmentationDataset(5, image_size=32, seed=3)
    second = SyntheticSegmentationDataset(5, image_size=(32, 32), seed=3)
    other = SyntheticSegmentationDataset(5, image_size=32, seed=4)
    for index in (4, 0, 2):  # access order must not matter
        assert torch.equal(first[index][0], second[index][0])
        assert torch.equal(first[index][1], second[index][1])
    assert not torch.equal(first[0][0], first[1][0])
    assert not torch.equal(first[0][0], other[0][0])


@pytest.mark.parametrize("num_classes", [1, 3])
def test_dataset_items_follow_the_data_contract(num_classes):
    dataset = SyntheticSegmentationDataset(3, image_size=(16, 24), num_classes=num_classes, in_channels=1)
    image, mask = dataset[1]
    assert image.shape == (1, 16, 24) and image.dtype == torch.float32
    if num_classes == 1:
        assert mask.shape == (1, 16, 24) and mask.dtype == torch.float32
    else:
        assert mask.shape == (16, 24) and mask.dtype == torch.int64
    original = dataset.load_original_mask(1)
    assert original.shape == (16, 24)
    assert np.array_equal(original, mask.numpy().reshape(16, 24))
    with pytest.raises(IndexError):
        dataset[3]


@pytest.mark.parametrize("num_classes", [1, 4])
def test_written_dataset_reads_back_with_the_same_masks(tmp_path, num_classes):
    pairs = write_synthetic_dataset(tmp_path, 4, image_size=(20, 28), num_classes=num_classes, seed=5)
    assert [p.name for p, _ in pairs] == [f"sample_{i:04d}.png" for i in range(4)]
    expected = SyntheticSegmentationDataset(4, (20, 28), num_classes, seed=5)
    loaded = SegmentationDataset(tmp_path / "images", tmp_path / "masks", image_size=(20, 28), num_classes=num_classes)
    for index in range(4):
        assert torch.equal(loaded[index][1], expected[index][1])
        # 8-bit quantisation of the image only
        assert torch.allclose(loaded[index][0], expected[index][0], atol=1 / 255)
