"""Data loaders: training and validation splits of a dataset folder, as DataLoaders.

``load_dataset`` finds the pairs (a pre-split data_dir, split files, or a seeded split), builds a
SegmentationDataset for each part (utils/segmentation_dataset.py, which states the data
contract) and preloads it, so bad data stops the run before training starts. The SPEC's names
(SegmentationDataset, the Dual* transforms, ...) stay importable from here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from utils.augmentations import (
    AUGMENTATION_MODES,
    ColorJitter,
    DualRandomHorizontalFlip,
    DualRandomResizedCrop,
    DualRandomRotation,
    DualRandomVerticalFlip,
    build_augmentations,
)
from utils.errors import DatasetError, DatasetWarning, Issue
from utils.image_io import IMAGE_EXTENSIONS
from utils.pairing import MASK_SUFFIXES, Pair, find_pairs, read_split_file, split_pairs
from utils.sample_keys import SampleKeySampler
from utils.segmentation_dataset import SegmentationDataset, discover_pairs
from utils.synthetic import SyntheticSegmentationDataset, make_synthetic_pair, synthetic_split, write_synthetic_dataset

__all__ = [
    "AUGMENTATION_MODES",
    "IMAGE_EXTENSIONS",
    "MASK_SUFFIXES",
    "ColorJitter",
    "DualRandomHorizontalFlip",
    "DualRandomResizedCrop",
    "DualRandomRotation",
    "DualRandomVerticalFlip",
    "build_augmentations",
    "DatasetError",
    "DatasetWarning",
    "Issue",
    "SegmentationDataset",
    "SyntheticSegmentationDataset",
    "discover_pairs",
    "find_pairs",
    "load_dataset",
    "load_synthetic_dataset",
    "make_synthetic_pair",
    "read_split_file",
    "split_pairs",
    "write_synthetic_dataset",
]

# With no split given, hold out this share for validation, when there are at least MIN_PAIRS_TO_SPLIT pairs
AUTO_VAL_SPLIT = 0.1
MIN_PAIRS_TO_SPLIT = 10


def _make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    pin_memory: bool,
    seed: int,
    drop_last: bool = False,
    distributed: bool = False,
) -> DataLoader:
    """A DataLoader with a seeded order; with ``distributed`` a DistributedSampler shuffles
    instead (the trainer calls ``loader.sampler.set_epoch(epoch)``). With workers, the sampler
    hands each sample its own augmentation seed (utils/sample_keys.py), so the batches depend on
    neither the worker count nor a resume; without, the process's seeded stream augments."""
    sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last) if distributed else None
    if num_workers > 0:
        sampler = SampleKeySampler(len(dataset), shuffle, seed, sampler)
    if drop_last and len(dataset) < batch_size:
        warnings.warn(
            f"{len(dataset)} samples < batch_size {batch_size} with drop_last: no batches", DatasetWarning, stacklevel=3
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        drop_last=drop_last,
        # Workers that live across epochs keep whatever they cached (and are not re-forked).
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def is_presplit(data_dir: str | Path | None) -> bool:
    """Whether ``data_dir`` brings its own validation set (val/ folder or splits/*.txt)."""
    if data_dir is None:
        return False
    root = Path(data_dir)
    return ((root / "train" / "images").is_dir() and (root / "val" / "images").is_dir()) or all(
        (root / "splits" / name).is_file() for name in ("train.txt", "val.txt")
    )


def auto_val_split(num_pairs: int) -> float | None:
    """The validation share used when none is given: AUTO_VAL_SPLIT (at least one pair), or
    None (no validation) below MIN_PAIRS_TO_SPLIT pairs, where one image says little and costs a tenth of the data."""
    return AUTO_VAL_SPLIT if num_pairs >= MIN_PAIRS_TO_SPLIT else None


def _split_sources(
    image_dir: str | Path | None,
    mask_dir: str | Path | None,
    data_dir: str | Path | None,
    val_split: float | str | None,
    seed: int,
    skip_invalid: bool,
) -> tuple[list[Pair], list[Pair] | None]:
    """(train_pairs, val_pairs or None) from the folders given.

    data_dir may hold ``train/{images,masks}`` + ``val/{images,masks}`` (pre-split), or
    ``images/`` + ``masks/``, optionally with ``splits/train.txt`` + ``splits/val.txt``
    (stems, one a line: the official split of e.g. Kvasir-SEG). Otherwise image_dir and
    mask_dir are used, split by ``val_split`` when it is set ("auto": ``auto_val_split``).
    """
    if data_dir is not None:
        root = Path(data_dir)
        if (root / "train" / "images").is_dir() and (root / "val" / "images").is_dir():
            if val_split == "auto":
                val_split = None
            if val_split is not None:
                warnings.warn(
                    f"{root} is already split into train/ and val/: val_split ignored", DatasetWarning, stacklevel=3
                )
            train = discover_pairs(root / "train" / "images", root / "train" / "masks", None, skip_invalid)
            val = discover_pairs(root / "val" / "images", root / "val" / "masks", None, skip_invalid)
            return train, val
        if not (root / "images").is_dir():
            raise DatasetError(
                f"{root}: expected train/ and val/ (each with images/ and masks/), or images/ and masks/"
            )
        image_dir, mask_dir = root / "images", root / "masks"
        split_files = (root / "splits" / "train.txt", root / "splits" / "val.txt")
        if val_split in (None, "auto") and all(path.is_file() for path in split_files):
            train, val = (
                discover_pairs(image_dir, mask_dir, read_split_file(path), skip_invalid) for path in split_files
            )
            return train, val
    if image_dir is None or mask_dir is None:
        raise ValueError("give image_dir and mask_dir, or data_dir")
    pairs = discover_pairs(image_dir, mask_dir, None, skip_invalid)
    if val_split == "auto":
        val_split = auto_val_split(len(pairs))
    if val_split is None:
        return pairs, None
    return split_pairs(pairs, val_split, seed)


def load_dataset(
    image_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    batch_size: int = 8,
    image_size: int | tuple[int, int] = (256, 256),
    val_split: float | None = None,
    augmentation_mode: str = "medium",
    num_workers: int = 0,
    pin_memory: bool = False,
    shuffle: bool = True,
    seed: int = 42,
    num_classes: int = 1,
    in_channels: int = 3,
    mask_threshold: float = 0.5,
    skip_invalid: bool = False,
    cache: bool = True,
    data_dir: str | Path | None = None,
    drop_last: bool = False,
    distributed: bool = False,
    ignore_index: int | None = None,
    resize: str = "stretch",
) -> DataLoader | tuple[DataLoader, DataLoader]:
    """A DataLoader over image/mask folders, or ``(train_loader, val_loader)``.

    Returns two loaders when ``val_split`` is set (seeded split of the pairs) or when
    ``data_dir`` is pre-split (see ``_split_sources``). ``val_split="auto"`` holds out
    AUTO_VAL_SPLIT of the pairs when there are at least MIN_PAIRS_TO_SPLIT (one loader otherwise).
    Only the training set is augmented
    (``augmentation_mode``) and shuffled; the validation loader keeps stem order.
    ``loader.dataset`` is the SegmentationDataset itself.
    Every file is decoded (and cached, with ``cache``) here, before any training step:
    bad data raises DatasetError now, or is skipped with a warning when ``skip_invalid``.
    Batches: images (B, C, H, W) float32 in [0, 1]; masks (B, 1, H, W) float32 {0, 1}
    for num_classes == 1, else (B, H, W) int64.
    """
    if augmentation_mode not in AUGMENTATION_MODES:
        raise ValueError(f"augmentation_mode must be one of {AUGMENTATION_MODES}, got {augmentation_mode!r}")
    train_pairs, val_pairs = _split_sources(image_dir, mask_dir, data_dir, val_split, seed, skip_invalid)
    common = dict(
        image_size=image_size,
        mask_threshold=mask_threshold,
        num_classes=num_classes,
        in_channels=in_channels,
        skip_invalid=skip_invalid,
        cache=cache,
        ignore_index=ignore_index,
        resize=resize,
    )
    train_set = SegmentationDataset.from_pairs(train_pairs, augmentations=augmentation_mode, **common).preload()
    train_loader = _make_loader(train_set, batch_size, shuffle, num_workers, pin_memory, seed, drop_last, distributed)
    if val_pairs is None:
        return train_loader
    val_set = SegmentationDataset.from_pairs(val_pairs, augmentations=None, **common).preload()
    return train_loader, _make_loader(val_set, batch_size, False, num_workers, pin_memory, seed)


def load_synthetic_dataset(
    num_samples: int = 200,
    batch_size: int = 8,
    image_size: int | tuple[int, int] = (64, 64),
    val_split: float | None = None,
    num_classes: int = 1,
    in_channels: int = 3,
    seed: int = 42,
    num_workers: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    distributed: bool = False,
) -> DataLoader | tuple[DataLoader, DataLoader]:
    """Like ``load_dataset`` over ``SyntheticSegmentationDataset`` (for ``--synthetic``).

    With ``val_split`` the validation samples come from the validation seed stream
    (utils.synthetic.synthetic_split), so they never repeat a training sample.
    """
    num_val = 0 if val_split is None else max(1, int(round(num_samples * val_split)))
    if num_val >= num_samples:
        raise ValueError(f"val_split={val_split} of {num_samples} samples leaves no training data")
    train_set, val_set = synthetic_split(
        num_samples - num_val, num_val, seed, image_size=image_size, num_classes=num_classes, in_channels=in_channels
    )
    train_loader = _make_loader(train_set, batch_size, shuffle, num_workers, False, seed, drop_last, distributed)
    if val_set is None:
        return train_loader
    return train_loader, _make_loader(val_set, batch_size, False, num_workers, False, seed)
