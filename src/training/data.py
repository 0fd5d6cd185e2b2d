"""Build the training loader and the validation dataset from a TrainConfig."""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from src.models import DiffusionConfig


@dataclass
class TrainingData:
    train_loader: DataLoader
    val_dataset: Optional[Dataset]
    split: dict  # {"train": [names], "val": [names]}, saved in checkpoints


def base_dataset(dataset: Dataset) -> Dataset:
    """The dataset under any Subset wrappers."""
    while hasattr(dataset, "dataset") and not hasattr(dataset, "pairs"):
        dataset = dataset.dataset
    return dataset


def _names(dataset: Optional[Dataset]) -> list:
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

    from utils.data_utils import load_dataset

    loaders = load_dataset(
        image_dir=config.image_dir,
        mask_dir=config.mask_dir,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        image_size=model_config.image_size,
        val_split=config.val_split,
        augmentation_mode=config.augmentation_mode,
        num_workers=config.num_workers,
        pin_memory=False,
        shuffle=True,
        seed=config.seed,
        num_classes=model_config.num_classes,
        in_channels=model_config.in_channels,
        drop_last=distributed,
        distributed=distributed,
    )
    train_loader, val_loader = loaders if isinstance(loaders, tuple) else (loaders, None)
    val_dataset = val_loader.dataset if val_loader is not None else None
    return TrainingData(train_loader, val_dataset, {"train": _names(train_loader.dataset), "val": _names(val_dataset)})


def _synthetic_data(config, model_config: DiffusionConfig, distributed: bool) -> TrainingData:
    from utils.synthetic import SyntheticSegmentationDataset

    common = dict(image_size=model_config.image_size, num_classes=model_config.num_classes, in_channels=model_config.in_channels)
    train = SyntheticSegmentationDataset(config.synthetic_samples, seed=config.seed, **common)
    val_size = max(8, int(round(config.synthetic_samples * (config.val_split or 0.2))))
    # A different seed: validation images are never training images.
    val = SyntheticSegmentationDataset(val_size, seed=config.seed + 1_000_003, **common)
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
