"""Data pipeline: naming conventions, layouts, formats, augmentation, splits, bad input, Kvasir-SEG."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from utils.augmentations import (
    ColorJitter,
    DualRandomHorizontalFlip,
    DualRandomResizedCrop,
    DualRandomRotation,
    DualRandomVerticalFlip,
    build_augmentations,
)
from utils.data_utils import (
    DatasetError,
    DatasetWarning,
    SegmentationDataset,
    find_pairs,
    load_dataset,
    load_synthetic_dataset,
    read_split_file,
    split_pairs,
)
from utils.errors import display_path

KVASIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kvasir-seg"
H, W = 12, 16  # non-square, so height/width mix-ups fail


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def photo(seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_mask(height: int = H, width: int = W, value: int = 255) -> np.ndarray:
    """0/value mask with an off-centre box (asymmetric, so flips and rotations show)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[2:6, 3:10] = value
    return mask


def stems(pairs) -> list[str]:
    return [image.stem for image, _ in pairs]


# ---- naming conventions and layouts -------------------------------------------------------


def test_same_stem_with_any_extension_pairs(tmp_path):
    save(tmp_path / "images/image001.jpg", photo())
    save(tmp_path / "masks/image001.png", box_mask())
    save(tmp_path / "images/image002.png", photo(1))
    save(tmp_path / "masks/image002.png", box_mask())
    save(tmp_path / "images/image003.jpg", photo(2))
    save(tmp_path / "masks/image003.jpg", box_mask())  # same extension
    pairing = find_pairs(tmp_path / "images", tmp_path / "masks")
    assert pairing.issues == []
    assert [(i.name, m.name) for i, m in pairing.pairs] == [
        ("image001.jpg", "image001.png"),
        ("image002.png", "image002.png"),
        ("image003.jpg", "image003.jpg"),
    ]


def test_mask_and_gt_suffixes_pair(tmp_path):
    save(tmp_path / "images/photo_001.jpg", photo())
    save(tmp_path / "masks/photo_001_mask.png", box_mask())
    save(tmp_path / "images/IMG_123.png", photo())
    save(tmp_path / "masks/IMG_123_mask.png", box_mask())
    save(tmp_path / "images/data_05.tiff", photo())
    save(tmp_path / "masks/data_05_gt.png", box_mask())
    pairing = find_pairs(tmp_path / "images", tmp_path / "masks")
    assert pairing.issues == []
    assert {(i.name, m.name) for i, m in pairing.pairs} == {
        ("photo_001.jpg", "photo_001_mask.png"),
        ("IMG_123.png", "IMG_123_mask.png"),
        ("data_05.tiff", "data_05_gt.png"),
    }


def test_extensions_are_case_insensitive_and_other_files_ignored(tmp_path):
    save(tmp_path / "images/a.JPG", photo())
    save(tmp_path / "masks/a.PnG", box_mask())
    save(tmp_path / "images/.hidden.png", photo())  # hidden: ignored
    save(tmp_path / "masks/._a.png", box_mask())  # macOS resource fork: ignored
    (tmp_path / "images/notes.txt").write_text("not an image")
    (tmp_path / "masks/Thumbs.db").write_bytes(b"\0" * 10)
    (tmp_path / "images/sub.png").mkdir()  # a folder named like an image
    pairing = find_pairs(tmp_path / "images", tmp_path / "masks")
    assert pairing.issues == []
    assert [(i.name, m.name) for i, m in pairing.pairs] == [("a.JPG", "a.PnG")]


def test_images_and_masks_side_by_side_in_one_folder(tmp_path):
    save(tmp_path / "a.jpg", photo())
    save(tmp_path / "a_mask.png", box_mask())
    save(tmp_path / "b.png", photo())
    save(tmp_path / "b_gt.png", box_mask())
    dataset = SegmentationDataset(tmp_path, tmp_path, image_size=(H, W))
    assert [(i.name, m.name) for i, m in dataset.pairs] == [("a.jpg", "a_mask.png"), ("b.png", "b_gt.png")]


def test_pre_split_data_dir_gives_train_and_val_loaders(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        for index in range(count):
            save(tmp_path / f"{split}/images/{split}_{index:03d}.jpg", photo(index))
            save(tmp_path / f"{split}/masks/{split}_{index:03d}.png", box_mask())
    train_loader, val_loader = load_dataset(data_dir=tmp_path, batch_size=2, image_size=(H, W))
    assert stems(train_loader.dataset.pairs) == ["train_000", "train_001", "train_002"]
    assert stems(val_loader.dataset.pairs) == ["val_000", "val_001"]
    assert val_loader.dataset.transform is None


def test_data_dir_with_split_files_uses_them(tiny_dataset):
    (tiny_dataset / "splits").mkdir()
    (tiny_dataset / "splits/train.txt").write_text("sample_0000\nsample_0002\n\nsample_0004\n")
    (tiny_dataset / "splits/val.txt").write_text("# held out\nsample_0001.png\n")
    train_loader, val_loader = load_dataset(data_dir=tiny_dataset, image_size=(24, 32), batch_size=2)
    assert stems(train_loader.dataset.pairs) == ["sample_0000", "sample_0002", "sample_0004"]
    assert stems(val_loader.dataset.pairs) == ["sample_0001"]


def test_dataset_from_stems_and_from_pairs(tiny_dataset):
    by_stems = SegmentationDataset(
        tiny_dataset / "images", tiny_dataset / "masks", 16, stems=["sample_0003", "sample_0001"]
    )
    assert by_stems.stems == ["sample_0001", "sample_0003"]  # sorted by stem
    by_pairs = SegmentationDataset.from_pairs(by_stems.pairs, image_size=16)
    assert torch.equal(by_pairs[1][0], by_stems[1][0])
    with pytest.raises(DatasetError, match="sample_9999: listed stem has no image"):
        SegmentationDataset(tiny_dataset / "images", tiny_dataset / "masks", stems=["sample_9999"])


# ---- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("image_ext", [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"])
@pytest.mark.parametrize("mask_ext", [".png", ".bmp", ".tiff", ".jpg"])
def test_every_format_loads(tmp_path, image_ext, mask_ext):
    save(tmp_path / f"images/x{image_ext}", photo())
    save(tmp_path / f"masks/x{mask_ext}", box_mask())
    image, mask = SegmentationDataset(tmp_path / "images", tmp_path / "masks", image_size=(H, W))[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert torch.equal(mask, torch.from_numpy(box_mask() > 127).float()[None])  # JPEG noise thresholded away


def test_16bit_tiff_image_and_mask(tmp_path):
    image16 = np.zeros((H, W), dtype=np.uint16)
    image16[:, : W // 2] = 65535
    image16[0, 0] = 128 * 257
    save(tmp_path / "images/deep.tiff", image16)
    mask16 = np.zeros((H, W), dtype=np.uint16)
    mask16[2:6, 3:10] = 40000  # > 0.5 of 65535
    mask16[8:10, 3:10] = 20000  # < 0.5 of 65535
    save(tmp_path / "masks/deep.tif", mask16)
    dataset = SegmentationDataset(tmp_path / "images", tmp_path / "masks", image_size=(H, W))
    image, mask = dataset[0]
    assert image.shape == (3, H, W)
    assert torch.allclose(image[:, 0, 0], torch.full((3,), 128 / 255))
    assert image[:, 5, 1].eq(1.0).all() and image[:, 5, -1].eq(0.0).all()
    assert torch.equal(mask[0], torch.from_numpy(box_mask() > 0).float())


@pytest.mark.parametrize("in_channels", [1, 3])
def test_grayscale_images(tmp_path, in_channels):
    gray = photo()[..., 0]
    save(tmp_path / "images/g.png", gray)
    save(tmp_path / "masks/g.png", box_mask())
    image, _ = SegmentationDataset(tmp_path / "images", tmp_path / "masks", (H, W), in_channels=in_channels)[0]
    assert image.shape == (in_channels, H, W)
    for channel in image:
        assert torch.allclose(channel, torch.from_numpy(gray).float() / 255)


def test_rgba_image_drops_alpha(tmp_path):
    rgba = np.concatenate([photo(), np.full((H, W, 1), 7, np.uint8)], axis=2)
    save(tmp_path / "images/a.png", rgba)
    save(tmp_path / "masks/a.png", box_mask())
    image, _ = SegmentationDataset(tmp_path / "images", tmp_path / "masks", (H, W))[0]
    assert torch.allclose(image, torch.from_numpy(photo()).permute(2, 0, 1).float() / 255)


def test_mask_threshold_and_label_style_masks(tmp_path):
    grey = np.zeros((H, W), np.uint8)
    grey[:, :4], grey[:, 4:8], grey[:, 8:12] = 60, 140, 250
    save(tmp_path / "images/grey.png", photo())
    save(tmp_path / "masks/grey.png", grey)
    save(tmp_path / "images/ones.png", photo())
    save(tmp_path / "masks/ones.png", box_mask(value=1))  # 0/1 PNG masks are labels, not "almost black"
    half = SegmentationDataset(tmp_path / "images", tmp_path / "masks", (H, W), mask_threshold=0.5)
    low = SegmentationDataset(tmp_path / "images", tmp_path / "masks", (H, W), mask_threshold=0.2)
    # columns hold 60, 140, 250, 0; "grey" sorts before "ones"
    assert half[0][1][0, 0].tolist() == [0.0] * 4 + [1.0] * 8 + [0.0] * 4  # > 127.5
    assert low[0][1][0, 0].tolist() == [1.0] * 12 + [0.0] * 4  # > 51
    assert torch.equal(half[1][1][0], torch.from_numpy(box_mask() > 0).float())


def test_colour_binary_mask_uses_its_brightest_channel(tmp_path):
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 0] = box_mask()
    save(tmp_path / "images/r.png", photo())
    save(tmp_path / "masks/r.png", red)
    _, mask = SegmentationDataset(tmp_path / "images", tmp_path / "masks", (H, W))[0]
    assert torch.equal(mask[0], torch.from_numpy(box_mask() > 0).float())


def test_multiclass_masks_are_class_ids(tmp_path):
    labels = np.zeros((H, W), np.uint8)
    labels[2:6, 3:10], labels[8:11, 1:5] = 1, 2
    save(tmp_path / "images/m.png", photo())
    save(tmp_path / "masks/m.png", labels)
    dataset = SegmentationDataset(tmp_path / "images", tmp_path / "masks", (H, W), num_classes=3)
    image, mask = dataset[0]
    assert mask.shape == (H, W) and mask.dtype == torch.int64
    assert torch.equal(mask, torch.from_numpy(labels).long())
    assert np.array_equal(dataset.load_original_mask(0), labels)


def test_multiclass_mask_with_values_beyond_num_classes_names_the_file(tmp_path):
    save(tmp_path / "images/m.png", photo())
    save(tmp_path / "masks/m.png", box_mask())  # 0/255
    dataset = SegmentationDataset(tmp_path / "images", tmp_path / "masks", (H, W), num_classes=3)
    with pytest.raises(DatasetError, match=r"masks/m.png: values 255 are not class ids 0..2.*num_classes=1"):
        dataset.preload(progress=False)


# ---- data contract and cache --------------------------------------------------------------


def test_items_follow_the_data_contract(tiny_dataset):
    dataset = SegmentationDataset(tiny_dataset / "images", tiny_dataset / "masks", image_size=20)
    assert dataset.image_size == (20, 20) and dataset.num_classes == 1 and dataset.in_channels == 3
    image, mask = dataset[0]
    assert image.shape == (3, 20, 20) and image.dtype == torch.float32
    assert mask.shape == (1, 20, 20) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    original = dataset.load_original_mask(0)
    assert original.shape == (24, 32) and set(np.unique(original)) <= {0, 1}
    assert dataset.load_original_image(0).shape == (24, 32, 3)


def test_original_mask_matches_training_mask_at_native_size(tiny_dataset):
    dataset = SegmentationDataset(tiny_dataset / "images", tiny_dataset / "masks", image_size=(24, 32))
    for index in range(len(dataset)):
        assert np.array_equal(dataset[index][1][0].numpy(), dataset.load_original_mask(index))


def test_cache_serves_later_epochs_without_the_files(tiny_dataset):
    loader = load_dataset(
        tiny_dataset / "images",
        tiny_dataset / "masks",
        batch_size=3,
        image_size=16,
        augmentation_mode="none",
        shuffle=False,
    )
    first = [batch for batch in loader]
    for path in (tiny_dataset / "images").iterdir():
        path.unlink()
    second = [batch for batch in loader]
    for (image_a, mask_a), (image_b, mask_b) in zip(first, second):
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)


def test_without_cache_files_are_read_each_time(tiny_dataset):
    dataset = SegmentationDataset(tiny_dataset / "images", tiny_dataset / "masks", 16, cache=False)
    dataset[0]
    dataset.pairs[0][0].unlink()
    with pytest.raises(DatasetError, match="sample_0000.png"):
        dataset[0]


def test_loader_with_a_worker_process(tiny_dataset):
    loader = load_dataset(tiny_dataset / "images", tiny_dataset / "masks", batch_size=4, image_size=16, num_workers=1)
    images, masks = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and masks.shape == (4, 1, 16, 16)


def test_distributed_loader_uses_a_distributed_sampler(tiny_dataset, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        loader = load_dataset(
            tiny_dataset / "images",
            tiny_dataset / "masks",
            batch_size=2,
            image_size=16,
            distributed=True,
            drop_last=True,
        )
        assert isinstance(loader.sampler, DistributedSampler)
        loader.sampler.set_epoch(1)
        assert len(list(loader)) == 3
    finally:
        dist.destroy_process_group()


def test_synthetic_loaders_follow_the_contract():
    train_loader, val_loader = load_synthetic_dataset(num_samples=10, batch_size=4, image_size=16, val_split=0.2)
    assert len(train_loader.dataset) == 8 and len(val_loader.dataset) == 2
    images, masks = next(iter(train_loader))
    assert images.shape == (4, 3, 16, 16) and masks.shape == (4, 1, 16, 16)


# ---- augmentation -------------------------------------------------------------------------


def test_modes_are_defined_as_the_readme_says():
    assert build_augmentations("none", 32) == []
    (flip,) = build_augmentations("light", 32)
    assert isinstance(flip, DualRandomHorizontalFlip) and flip.p == 0.5
    medium = build_augmentations("medium", 32)
    assert [type(t) for t in medium] == [
        DualRandomHorizontalFlip,
        DualRandomVerticalFlip,
        DualRandomRotation,
        ColorJitter,
    ]
    assert medium[1].p == 0.3 and medium[2].degrees == [-15.0, 15.0]
    heavy = build_augmentations("heavy", 32)
    assert [type(t) for t in heavy] == [
        DualRandomHorizontalFlip,
        DualRandomVerticalFlip,
        DualRandomRotation,
        DualRandomResizedCrop,
        ColorJitter,
    ]
    assert heavy[2].degrees == [-30.0, 30.0] and heavy[3].scale == (0.7, 1.0) and heavy[3].size == (32, 32)
    with pytest.raises(ValueError, match="augmentation_mode"):
        build_augmentations("extreme", 32)


def pattern_pair(tmp_path: Path, size: int = 16) -> SegmentationDataset:
    """An image whose every channel is 255 exactly where the (asymmetric) mask is foreground."""
    mask = box_mask(size, size)
    save(tmp_path / "images/p.png", np.repeat(mask[..., None], 3, axis=2))
    save(tmp_path / "masks/p.png", mask)
    return mask


def test_flips_and_rotation_move_image_and_mask_together(tmp_path):
    mask = torch.from_numpy(pattern_pair(tmp_path) > 0).float()
    for transform, expected in [
        (DualRandomHorizontalFlip(p=1.0), mask.flip(-1)),
        (DualRandomVerticalFlip(p=1.0), mask.flip(-2)),
        (DualRandomRotation(degrees=(90, 90)), torch.rot90(mask, 1)),
    ]:
        dataset = SegmentationDataset(tmp_path / "images", tmp_path / "masks", 16, augmentations=[transform])
        image, augmented = dataset[0]
        assert torch.equal(augmented[0], expected), transform
        assert torch.equal(image, expected.expand(3, -1, -1)), transform


def test_heavy_augmentation_keeps_image_and_mask_aligned(tmp_path):
    pattern_pair(tmp_path, size=32)
    dataset = SegmentationDataset(tmp_path / "images", tmp_path / "masks", 32, augmentations="heavy")
    original = torch.from_numpy(dataset.load_original_mask(0)).float()
    torch.manual_seed(0)
    changed = 0
    for _ in range(20):
        image, mask = dataset[0]
        # Colour jitter rescales brightness, but the shape stays brighter than the black background.
        bright = (image.mean(0) > image.mean(0).max() / 2).float()
        disagree = (bright != mask[0]).float().mean().item()
        assert disagree < 0.05  # only interpolated edge pixels may differ
        changed += not torch.equal(mask[0], original)
    assert changed >= 10  # the augmentation really moved the mask


def test_color_jitter_changes_images_only(tmp_path):
    pattern_pair(tmp_path)
    plain = SegmentationDataset(tmp_path / "images", tmp_path / "masks", 16)
    jittered = SegmentationDataset(tmp_path / "images", tmp_path / "masks", 16, color_jitter=True)
    torch.manual_seed(0)
    images = [jittered[0][0] for _ in range(5)]
    assert any(not torch.equal(image, plain[0][0]) for image in images)
    assert all(torch.equal(jittered[0][1], plain[0][1]) for _ in range(5))


def test_validation_set_is_never_augmented(tiny_dataset):
    train_loader, val_loader = load_dataset(
        tiny_dataset / "images",
        tiny_dataset / "masks",
        batch_size=2,
        image_size=(24, 32),
        val_split=0.5,
        augmentation_mode="heavy",
    )
    assert train_loader.dataset.transform is not None
    assert val_loader.dataset.transform is None
    plain = SegmentationDataset.from_pairs(val_loader.dataset.pairs, image_size=(24, 32))
    expected = torch.stack([plain[i][0] for i in range(len(plain))])
    for _ in range(2):
        torch.manual_seed(_)
        assert torch.equal(torch.cat([images for images, _ in val_loader]), expected)


# ---- splits -------------------------------------------------------------------------------


def test_split_is_reproducible_disjoint_and_order_independent(tiny_dataset):
    pairs = find_pairs(tiny_dataset / "images", tiny_dataset / "masks").pairs
    train, val = split_pairs(pairs, 0.34, seed=7)
    assert len(val) == 2 and len(train) == 4
    assert set(stems(train)).isdisjoint(stems(val)) and set(stems(train + val)) == set(stems(pairs))
    assert split_pairs(list(reversed(pairs)), 0.34, seed=7) == (train, val)
    assert any(split_pairs(pairs, 0.34, seed=s)[1] != val for s in range(8, 12))
    first = load_dataset(tiny_dataset / "images", tiny_dataset / "masks", val_split=0.34, seed=7, image_size=8)
    again = load_dataset(tiny_dataset / "images", tiny_dataset / "masks", val_split=0.34, seed=7, image_size=8)
    assert first[1].dataset.pairs == again[1].dataset.pairs == val


def test_shuffled_order_is_seeded(tiny_dataset):
    def order(seed):
        loader = load_dataset(
            tiny_dataset / "images",
            tiny_dataset / "masks",
            batch_size=6,
            image_size=8,
            augmentation_mode="none",
            seed=seed,
        )
        return next(iter(loader))[0]

    assert torch.equal(order(1), order(1))


# ---- bad input ----------------------------------------------------------------------------


def test_empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match=r"images: no images \(\.jpg"):
        load_dataset(tmp_path / "images", tmp_path / "masks")


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope", tmp_path / "masks")


def test_image_without_mask(tiny_dataset):
    save(tiny_dataset / "images/lonely.jpg", photo())
    with pytest.raises(DatasetError, match=r"images/lonely.jpg: no mask in .*lonely_mask\.\*"):
        load_dataset(tiny_dataset / "images", tiny_dataset / "masks")


def test_mask_without_image(tiny_dataset):
    save(tiny_dataset / "masks/orphan_gt.png", box_mask())
    with pytest.raises(DatasetError, match=r"masks/orphan_gt.png: no image in .* \(looked for orphan\.\*\)"):
        load_dataset(tiny_dataset / "images", tiny_dataset / "masks")


def test_ambiguous_masks_and_duplicate_stems(tiny_dataset):
    save(tiny_dataset / "masks/sample_0001_mask.png", box_mask(24, 32))
    save(tiny_dataset / "images/sample_0002.jpg", photo(0, 24, 32))
    with pytest.raises(DatasetError) as caught:
        load_dataset(tiny_dataset / "images", tiny_dataset / "masks")
    message = str(caught.value)
    assert "2 problems" in message
    assert "images/sample_0001.png: several masks match (masks/sample_0001.png, masks/sample_0001_mask.png)" in message
    assert "images/sample_0002.jpg, images/sample_0002.png: images share the stem 'sample_0002'" in message


def test_unreadable_file(tiny_dataset):
    (tiny_dataset / "masks/sample_0003.png").write_bytes(b"this is not a PNG")
    with pytest.raises(DatasetError, match="masks/sample_0003.png: unreadable or truncated image"):
        load_dataset(tiny_dataset / "images", tiny_dataset / "masks")


@pytest.mark.parametrize("cache", [True, False])
def test_truncated_file_stops_before_training(tiny_dataset, cache):
    path = save(tiny_dataset / "images/sample_0004.jpg", photo(0, 24, 32))
    (tiny_dataset / "images/sample_0004.png").unlink()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match="images/sample_0004.jpg: unreadable or truncated image"):
        load_dataset(tiny_dataset / "images", tiny_dataset / "masks", cache=cache)  # not while iterating


def test_mask_size_differs_from_its_image(tiny_dataset):
    save(tiny_dataset / "masks/sample_0002.png", box_mask(20, 30))
    with pytest.raises(
        DatasetError,
        match=r"masks/sample_0002.png: size 30x20 differs from its image "
        r"images/sample_0002.png \(32x24\)",
    ):
        load_dataset(tiny_dataset / "images", tiny_dataset / "masks")


def test_all_background_mask_warns(tiny_dataset):
    save(tiny_dataset / "masks/sample_0005.png", np.zeros((24, 32), np.uint8))
    with pytest.warns(DatasetWarning, match="masks/sample_0005.png: mask is all background"):
        loader = load_dataset(tiny_dataset / "images", tiny_dataset / "masks", image_size=8)
    assert len(loader.dataset) == 6  # legal data: kept


def test_decompression_bomb(tiny_dataset, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32x24 = 768 > 2 * 100: PIL refuses
    with pytest.raises(DatasetError, match=r"sample_0000.png: .*decompression bomb.*MAX_IMAGE_PIXELS"):
        load_dataset(tiny_dataset / "images", tiny_dataset / "masks")


def test_skip_invalid_skips_each_bad_pair_with_a_warning(tiny_dataset):
    save(tiny_dataset / "images/lonely.jpg", photo())
    (tiny_dataset / "masks/sample_0003.png").write_bytes(b"garbage")
    path = save(tiny_dataset / "images/sample_0004.jpg", photo(0, 24, 32))
    (tiny_dataset / "images/sample_0004.png").unlink()
    path.write_bytes(path.read_bytes()[:300])  # header fine, data truncated: found while preloading
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = load_dataset(tiny_dataset / "images", tiny_dataset / "masks", image_size=8, skip_invalid=True)
    messages = "\n".join(str(w.message) for w in caught if issubclass(w.category, DatasetWarning))
    for name in ("images/lonely.jpg", "masks/sample_0003.png", "images/sample_0004.jpg"):
        assert name in messages
    assert loader.dataset.stems == ["sample_0000", "sample_0001", "sample_0002", "sample_0005"]
    assert len(list(loader)) == 1


def test_display_path_is_short():
    assert display_path(Path("/data/set/masks/foo.png")) == "masks/foo.png"


# ---- Kvasir-SEG (skipped when the data is absent) -----------------------------------------


@pytest.fixture
def kvasir():
    if not (KVASIR / "images").is_dir():
        pytest.skip(f"Kvasir-SEG not found at {KVASIR}")
    return KVASIR


def test_kvasir_official_split_files_pair_completely(kvasir):
    train, val = (read_split_file(kvasir / "splits" / name) for name in ("train.txt", "val.txt"))
    assert len(train) == 880 and len(val) == 120 and set(train).isdisjoint(val)
    pairing = find_pairs(kvasir / "images", kvasir / "masks", stems=train + val)
    assert pairing.issues == [] and len(pairing.pairs) == 1000


def test_kvasir_loads_through_load_dataset_with_its_split_files(kvasir, tmp_path):
    """A few stems of each official split, through the same data_dir/splits code path."""
    (tmp_path / "images").symlink_to(kvasir / "images")
    (tmp_path / "masks").symlink_to(kvasir / "masks")
    (tmp_path / "splits").mkdir()
    for name, count in (("train.txt", 12), ("val.txt", 4)):
        chosen = read_split_file(kvasir / "splits" / name)[:count]
        (tmp_path / "splits" / name).write_text("\n".join(chosen) + "\n")
    train_loader, val_loader = load_dataset(data_dir=tmp_path, batch_size=4, image_size=64)
    assert len(train_loader.dataset) == 12 and len(val_loader.dataset) == 4
    images, masks = next(iter(train_loader))
    assert images.shape == (4, 3, 64, 64) and masks.shape == (4, 1, 64, 64)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    original = val_loader.dataset.load_original_mask(0)
    width, height = Image.open(val_loader.dataset.pairs[0][1]).size
    assert original.shape == (height, width) and 0 < original.mean() < 1


def test_empty_masks_are_reported_in_one_warning_or_on_first_use(tiny_dataset):
    for name in ("sample_0001.png", "sample_0004.png"):
        save(tiny_dataset / "masks" / name, np.zeros((24, 32), np.uint8))
    with pytest.warns(DatasetWarning) as caught:
        SegmentationDataset(tiny_dataset / "images", tiny_dataset / "masks", 8).preload(progress=False)
    assert len(caught) == 1 and "2 problems" in str(caught[0].message)
    lazy = SegmentationDataset(tiny_dataset / "images", tiny_dataset / "masks", 8)
    with pytest.warns(DatasetWarning, match="masks/sample_0004.png: mask is all background"):
        lazy[4]


def test_cache_is_skipped_when_it_would_not_fit(tiny_dataset, monkeypatch):
    monkeypatch.setattr("utils.segmentation_dataset._available_memory_bytes", lambda: 1000)
    with pytest.warns(DatasetWarning, match="sample cache would need"):
        dataset = SegmentationDataset(tiny_dataset / "images", tiny_dataset / "masks", 16)
    assert not dataset.cache and dataset[0][0].shape == (3, 16, 16)


def test_readme_custom_augmentation_example(tiny_dataset):
    custom_augmentations = [DualRandomHorizontalFlip(p=0.7), DualRandomRotation(degrees=20)]
    dataset = SegmentationDataset(
        image_dir=tiny_dataset / "images",
        mask_dir=tiny_dataset / "masks",
        augmentations=custom_augmentations,
        color_jitter=True,
    )
    image, mask = dataset[0]
    assert image.shape == (3, 256, 256) and mask.shape == (1, 256, 256)
    assert [type(t) for t in dataset.transform.transforms] == [
        DualRandomHorizontalFlip,
        DualRandomRotation,
        ColorJitter,
    ]


# ---- datasets as users bring them: ignore label, aspect ratio, EXIF, default split ---------


def test_ignore_index_becomes_void_and_rotation_fills_void(tmp_path):
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[:, 8:] = 2
    labels[:3] = 255  # unlabelled rows
    save(tmp_path / "images" / "a.png", photo())
    save(tmp_path / "masks" / "a.png", labels)
    plain = SegmentationDataset(tmp_path / "images", tmp_path / "masks", (H, W), num_classes=3, ignore_index=255)
    _, mask = plain[0]
    assert mask.dtype == torch.int64 and torch.equal(mask[:3], torch.full((3, W), -1))
    assert torch.equal(mask[3:], torch.from_numpy(labels[3:]).long())
    rotated = SegmentationDataset(
        tmp_path / "images",
        tmp_path / "masks",
        (H, W),
        num_classes=3,
        ignore_index=255,
        augmentations=[DualRandomRotation(degrees=(45, 45), mask_fill=255)],
    )
    _, mask = rotated[0]
    assert mask[0, 0] == -1 and mask[-1, -1] == -1  # corners rotated in: no class, not background
    save(tmp_path / "binary" / "a.png", np.where(labels == 2, 1, labels).astype(np.uint8))  # 0/1 labels and 255
    binary = SegmentationDataset(tmp_path / "images", tmp_path / "binary", (H, W), ignore_index=255)
    _, mask = binary[0]
    assert mask.shape == (1, H, W) and torch.equal(mask[0, :3], torch.full((3, W), -1.0))
    assert torch.equal(mask[0, 3:], torch.from_numpy(labels[3:] // 2).float())


def test_pad_keeps_the_aspect_ratio_and_marks_the_padding_void(tmp_path):
    save(tmp_path / "images" / "wide.png", np.full((10, 40, 3), 200, dtype=np.uint8))
    save(tmp_path / "masks" / "wide.png", np.full((10, 40), 255, dtype=np.uint8))
    dataset = SegmentationDataset(tmp_path / "images", tmp_path / "masks", (16, 16), resize="pad")
    image, mask = dataset[0]
    # 40x10 fits 16x16 as 16x4, centred: rows 6..9 hold the picture
    assert torch.all(mask[0, 6:10] == 1) and torch.all(mask[0, :6] == -1) and torch.all(mask[0, 10:] == -1)
    assert torch.all(image[:, 6:10] > 0.7) and torch.all(image[:, :6] == 0)
    stretched = SegmentationDataset(tmp_path / "images", tmp_path / "masks", (16, 16))
    assert torch.all(stretched[0][1] == 1)


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path):
    """A JPEG stored sideways with EXIF 'rotate 90' is read as viewers show it, matching a mask drawn on it."""
    shown = np.zeros((20, 12, 3), dtype=np.uint8)  # as displayed: 12 wide, 20 high, bright top half
    shown[:10] = 255
    stored = np.ascontiguousarray(np.rot90(shown, 1))  # the sensor's landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    save(tmp_path / "images" / "phone.jpg", stored, exif=exif, quality=95)
    save(tmp_path / "masks" / "phone.png", (shown[..., 0] > 0).astype(np.uint8) * 255)
    dataset = SegmentationDataset(tmp_path / "images", tmp_path / "masks", (20, 12))
    image, mask = dataset[0]
    assert torch.all(mask[0, :10] == 1) and torch.all(mask[0, 10:] == 0)
    assert image[:, :9].mean() > 0.9 and image[:, 11:].mean() < 0.1
    assert dataset.load_original_image(0).shape == (20, 12, 3)


@pytest.mark.parametrize("count, expected_val", [(9, 0), (10, 1), (25, 2)])
def test_auto_val_split_holds_out_ten_percent_from_ten_pairs(tmp_path, count, expected_val):
    for i in range(count):
        save(tmp_path / "images" / f"{i:02d}.png", photo(i, 8, 8))
        save(tmp_path / "masks" / f"{i:02d}.png", box_mask(8, 8))
    loaders = load_dataset(tmp_path / "images", tmp_path / "masks", image_size=8, val_split="auto", cache=False)
    val = len(loaders[1].dataset) if isinstance(loaders, tuple) else 0
    assert val == expected_val
