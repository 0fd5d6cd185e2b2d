"""Synthetic segmentation data: textured shapes on a noisy background.

Used by ``train.py --synthetic``, ``demo.py``, ``prepare_data.py --action create-sample``
and the tests. Every sample is a pure function of ``(seed, index)``, so datasets are
reproducible and safe to read from several DataLoader workers.

What makes the mask learnable from the image: the background is dark and smoothly
textured, while each shape is brighter, striped, and (for multi-class data) coloured by
its class. Class ``c`` is always drawn as the same kind of shape
(``c = 1, 4, 7, ...`` ellipses, ``2, 5, ...`` rectangles, ``3, 6, ...`` triangles).
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from utils.image_io import as_size
from utils.sample_keys import SampleKey, split_key

SHAPE_KINDS = ("ellipse", "rectangle", "triangle")


def make_synthetic_pair(
    rng: np.random.Generator, image_size: int | tuple[int, int] = (64, 64), num_classes: int = 1, in_channels: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """One image with 1-3 random shapes and its mask.

    Returns:
        image: (C, H, W) float32 in [0, 1], C = in_channels.
        mask: num_classes == 1: (1, H, W) float32 in {0, 1};
              num_classes == K > 1: (H, W) int64 class ids in 0..K-1 (background 0).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    height, width = as_size(image_size)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    image = _background(rng, yy, xx, in_channels)
    labels = np.zeros((height, width), dtype=np.int64)
    for _ in range(rng.integers(1, 4)):
        class_id = 1 if num_classes == 1 else int(rng.integers(1, num_classes))
        kind = int(rng.integers(len(SHAPE_KINDS))) if num_classes == 1 else (class_id - 1) % 3
        inside = _shape_mask(rng, SHAPE_KINDS[kind], yy, xx)
        image[:, inside] = _foreground(rng, yy, xx, in_channels, class_id, num_classes)[:, inside]
        labels[inside] = class_id  # later shapes cover earlier ones, in the mask too

    image = np.clip(image + rng.normal(0.0, 0.03, image.shape), 0.0, 1.0).astype(np.float32)
    if num_classes == 1:
        return image, (labels > 0).astype(np.float32)[None]
    return image, labels


def _smooth_noise(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W) sum of a few random low-frequency waves, roughly in [-1, 1]."""
    size = max(yy.shape)
    field = np.zeros_like(yy)
    for _ in range(3):
        freq = rng.uniform(0.5, 3.0, size=2) * 2 * np.pi / size
        field += np.sin(freq[0] * yy + freq[1] * xx + rng.uniform(0, 2 * np.pi)) / 3
    return field


def _background(rng, yy, xx, in_channels) -> np.ndarray:
    """(C, H, W) dark, smoothly varying background in about [0.05, 0.45]."""
    base = rng.uniform(0.1, 0.35, size=(in_channels, 1, 1))
    return (base + 0.08 * _smooth_noise(rng, yy, xx)[None]).astype(np.float32)


def _foreground(rng, yy, xx, in_channels, class_id, num_classes) -> np.ndarray:
    """(C, H, W) bright striped texture; its hue encodes the class for multi-class data."""
    if num_classes == 1:
        hue = rng.uniform(0, 1)
    else:
        hue = (class_id - 1) / (num_classes - 1) + rng.uniform(-0.03, 0.03)
    rgb = np.array(colorsys.hsv_to_rgb(hue % 1.0, 0.7, rng.uniform(0.8, 1.0)), dtype=np.float32)
    if in_channels == 3:
        colour = rgb
    else:  # grayscale (or other C): one brightness per class, 0.6..0.95
        level = 0.6 + 0.35 * (class_id - 1) / max(num_classes - 2, 1) if num_classes > 1 else 0.8
        colour = np.full(in_channels, level, dtype=np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(4.0, 10.0)
    stripes = 0.08 * np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
    return (colour[:, None, None] + stripes[None]).astype(np.float32)


def _shape_mask(rng, kind: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W) bool interior of one randomly placed, sized and rotated shape."""
    height, width = yy.shape
    short_side = min(height, width)
    # Integer centre inside the image and radius >= 1.5 px: the centre pixel is always inside.
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    ry, rx = np.maximum(rng.uniform(0.1, 0.3, size=2) * short_side, 1.5)
    theta = rng.uniform(0, np.pi)
    # Coordinates in the shape's own rotated frame.
    u = np.cos(theta) * (xx - cx) + np.sin(theta) * (yy - cy)
    v = -np.sin(theta) * (xx - cx) + np.cos(theta) * (yy - cy)
    if kind == "ellipse":
        inside = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    elif kind == "rectangle":
        inside = (np.abs(u) <= rx) & (np.abs(v) <= ry)
    else:  # triangle: a roughly equilateral one, as three half-planes
        radius = max(rx, ry) * 1.2
        angles = theta + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.3, 0.3, size=3)
        px, py = cx + radius * np.cos(angles), cy + radius * np.sin(angles)
        signs = [(xx - px[i]) * (py[(i + 1) % 3] - py[i]) - (yy - py[i]) * (px[(i + 1) % 3] - px[i]) for i in range(3)]
        inside = (signs[0] <= 0) & (signs[1] <= 0) & (signs[2] <= 0)
        inside |= (signs[0] >= 0) & (signs[1] >= 0) & (signs[2] >= 0)
    inside[cy, cx] = True
    return inside


# Seed streams of one run's synthetic data: training uses `seed`, validation `seed + VAL_SEED_OFFSET`,
# the demo's held-out images `seed + HELD_OUT_SEED_OFFSET`, so no image appears in two of them.
VAL_SEED_OFFSET = 1_000_003
HELD_OUT_SEED_OFFSET = 2_000_003


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``: independent of every other (seed, index)."""
    return np.random.default_rng([seed, index])


class SyntheticSegmentationDataset(Dataset):
    """``num_samples`` synthetic (image, mask) pairs, generated on first access and cached.

    ``__getitem__`` returns
        image: (C, H, W) float32 tensor in [0, 1];
        mask: (1, H, W) float32 in {0, 1} when num_classes == 1,
              (H, W) int64 class ids when num_classes > 1.
    Sample i depends only on (seed, i), so any worker produces the same data.
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int | tuple[int, int] = (64, 64),
        num_classes: int = 1,
        in_channels: int = 3,
        seed: int = 0,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.image_size = as_size(image_size)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.seed = seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.num_samples

    def _arrays(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"index {idx} out of range for {self.num_samples} samples")
        if idx not in self._cache:
            self._cache[idx] = make_synthetic_pair(
                sample_rng(self.seed, idx), self.image_size, self.num_classes, self.in_channels
            )
        return self._cache[idx]

    def __getitem__(self, idx: int | SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._arrays(split_key(idx)[0])  # nothing random to seed
        return torch.from_numpy(image.copy()), torch.from_numpy(mask.copy())

    def load_original_mask(self, idx: int) -> np.ndarray:
        """(H, W) mask as class ids (uint8 0/1 when binary), like ``SegmentationDataset``."""
        mask = self._arrays(idx)[1]
        return mask[0].astype(np.uint8) if self.num_classes == 1 else mask.copy()


def write_synthetic_dataset(
    output_dir: str | Path,
    num_samples: int,
    image_size: int | tuple[int, int] = (64, 64),
    num_classes: int = 1,
    seed: int = 0,
    in_channels: int = 3,
) -> list[tuple[Path, Path]]:
    """Write ``images/sample_XXXX.png`` and ``masks/sample_XXXX.png`` under ``output_dir``.

    Masks are 8-bit grayscale: 0/255 for binary data, class ids for multi-class data
    (so ``SegmentationDataset`` reads them back with the same num_classes).
    Returns the (image_path, mask_path) pairs written.
    """
    if num_classes > 256:
        raise ValueError("8-bit PNG masks hold at most 256 classes")
    if in_channels not in (1, 3):
        raise ValueError(f"can write grayscale or RGB PNGs only, got in_channels={in_channels}")
    output_dir = Path(output_dir)
    image_dir, mask_dir = output_dir / "images", output_dir / "masks"
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    dataset = SyntheticSegmentationDataset(num_samples, image_size, num_classes, in_channels, seed)
    width = max(4, len(str(num_samples - 1)))
    pairs = []
    for idx in tqdm(range(num_samples), desc="Writing samples", disable=None):
        image, _ = dataset._arrays(idx)
        labels = dataset.load_original_mask(idx)
        name = f"sample_{idx:0{width}d}.png"
        pixels = np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8)
        Image.fromarray(pixels[..., 0] if in_channels == 1 else pixels).save(image_dir / name)
        mask_pixels = labels * 255 if num_classes == 1 else labels
        Image.fromarray(mask_pixels.astype(np.uint8)).save(mask_dir / name)
        pairs.append((image_dir / name, mask_dir / name))
    return pairs


def synthetic_split(num_train: int, num_val: int, seed: int, **options) -> tuple:
    """(train, val) SyntheticSegmentationDatasets from the run's seed streams (val None when
    num_val is 0); `options` are the dataset's image_size, num_classes and in_channels."""
    train = SyntheticSegmentationDataset(num_train, seed=seed, **options)
    val = SyntheticSegmentationDataset(num_val, seed=seed + VAL_SEED_OFFSET, **options) if num_val else None
    return train, val
