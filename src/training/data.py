"""Build the training loader and the validation dataset from a TrainConfig.

With no split given (`val_split` None) and no val/ folder or split files, a seeded 10 % is held
out (none below 10 pairs); `val_split` 0 turns validation off. `TrainingData.notes` holds the
one-line messages the trainer prints about it (and about masks that look like class ids).
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from src.models import DiffusionConfig
from utils.image_io import class_id_hint


@dataclass
class TrainingData:
    train_loader: DataLoader
    val_dataset: Dataset | None
    split: dict  # {"train": [names], "val": [names]}, saved in checkpoints
    notes: list = field(default_factory=list)  # one-line messages for the user


def base_dataset(dataset: Dataset) -> Dataset:
    """The dataset under any Subset wrappers."""
    while hasattr(dataset, "dataset") and not hasattr(dataset, "pairs"):
        dataset = dataset.dataset
    return dataset


def _names(dataset: Dataset | None) -> list:
    if dataset is None:
        return []
    pairs = getattr(base_dataset(dataset), "pairs", None)
    if pairs is None:
        return [f"synthetic_{i}" for i in range(len(dataset))]
    return [Path(image).name for image, _ in pairs]


def build_training_data(config, model_config: DiffusionConfig, world_size: int = 1) -> TrainingData:
    """Synthetic data, a pre-split --data-dir, or --image-dir/--mask-dir with an optional val split."""
    distributed = world_size > 1
    if config.synthetic:
        return _synthetic_data(config, model_config, distributed)

    from utils.data_utils import is_presplit, load_dataset

    val_split = "auto" if config.val_split is None else (config.val_split or None)  # 0: no validation
    loaders = load_dataset(
        image_dir=config.image_dir,
        mask_dir=config.mask_dir,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        image_size=model_config.image_size,
        val_split=val_split,
        augmentation_mode=config.augmentation_mode,
        num_workers=config.num_workers,
        pin_memory=False,
        shuffle=True,
        seed=config.seed,
        num_classes=model_config.num_classes,
        in_channels=model_config.in_channels,
        drop_last=distributed,
        distributed=distributed,
        ignore_index=config.ignore_index,
        resize=config.resize,
    )
    train_loader, val_loader = loaders if isinstance(loaders, tuple) else (loaders, None)
    val_dataset = val_loader.dataset if val_loader is not None else None
    data = TrainingData(train_loader, val_dataset, {"train": _names(train_loader.dataset), "val": _names(val_dataset)})
    if val_split == "auto" and not is_presplit(config.data_dir):
        total = len(data.split["train"]) + len(data.split["val"])
        if val_dataset is not None:
            data.notes.append(
                f"validation: held out {len(val_dataset)} of {total} pairs (seeded 10 %); "
                "--val-split 0 turns it off, --val-split F sets the share"
            )
        else:
            data.notes.append(
                f"validation: none: {total} pairs are too few to hold out 10 % (fewer than 10); "
                "--val-split F holds out a share anyway"
            )
    if model_config.num_classes == 1:
        class_ids = detect_class_id_masks(
            [mask for _, mask in base_dataset(train_loader.dataset).pairs], config.ignore_index
        )
        if class_ids:
            data.notes.append(f"warning: {class_id_hint(class_ids)}")
    return data


def detect_class_id_masks(mask_paths: list, ignore_index=None, sample: int = 16):
    """ClassIds when the first `sample` masks together look like class ids (see looks_like_class_ids), else None."""
    from utils.errors import DatasetError
    from utils.image_io import looks_like_class_ids, read_mask_values

    levels, value_max = set(), 0.0
    for path in mask_paths[:sample]:
        try:
            values, top, is_colour = read_mask_values(path)
        except DatasetError:
            continue  # already reported by the loader
        if is_colour:
            return None
        levels.update(np.unique(values).tolist())
        value_max = max(value_max, top)
        if len(levels) > 256:
            return None
    return looks_like_class_ids(levels, value_max, ignore_index)


def _synthetic_data(config, model_config: DiffusionConfig, distributed: bool) -> TrainingData:
    from utils.synthetic import synthetic_split

    # 0: no validation; else a share of the training set's size on top of it, from its own seed stream
    val_size = 0 if config.val_split == 0 else max(8, int(round(config.synthetic_samples * (config.val_split or 0.2))))
    train, val = synthetic_split(
        config.synthetic_samples,
        val_size,
        config.seed,
        image_size=model_config.image_size,
        num_classes=model_config.num_classes,
        in_channels=model_config.in_channels,
    )
    sampler = DistributedSampler(train, shuffle=True, seed=config.seed) if distributed else None
    loader = DataLoader(
        train,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=config.num_workers,
        drop_last=distributed,
    )
    return TrainingData(loader, val, {"train": _names(train), "val": _names(val)})
