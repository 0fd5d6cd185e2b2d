"""SegmentationDataset: image/mask pairs from disk, resized, cached in memory, optionally augmented.

Data contract (what the model and trainer rely on): ``dataset[i]`` returns ``(image, mask)``
    image: (C, H, W) float32 in [0, 1], C = in_channels (3 RGB, 1 grayscale). Not
           normalised further: the model maps [0, 1] to [-1, 1] itself.
    mask:  num_classes == 1: (1, H, W) float32 with values exactly {0., 1.};
           num_classes == K > 1: (H, W) int64 class ids in 0..K-1;
           with ``ignore_index`` or ``resize="pad"`` also -1 (VOID) where a pixel belongs to no
           class (the ignore value, letterbox padding, areas rotated in): out of every loss and metric.

Decoded, resized images and masks are cached in memory as uint8, so after the first epoch a
sample costs only its augmentation; ``preload`` decodes every file up front, so bad data stops
a run before training starts, never mid-epoch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm import tqdm

from utils.augmentations import ColorJitter, build_augmentations
from utils.dataset_checks import check_pairs, resolve_issues
from utils.errors import DatasetError, DatasetWarning, Issue, display_path, format_issues
from utils.image_io import as_size, label_dtype, load_image, load_labels, void_label
from utils.pairing import Pair, find_pairs
from utils.resize import RESIZE_MODES, fit_image, letterbox, letterbox_box, resize_labels
from utils.sample_keys import SampleKey, seeded, split_key

VOID = -1  # the mask value of pixels that belong to no class, in the tensors a dataset returns
# Use at most this share of the currently available memory for the in-memory cache.
CACHE_MEMORY_SHARE = 0.5

Augmentations = str | Sequence[Callable] | Callable | None


def discover_pairs(
    image_dir: str | Path, mask_dir: str | Path, stems: list[str] | None = None, skip_invalid: bool = False
) -> list[Pair]:
    """Valid (image_path, mask_path) pairs of two folders, sorted by stem.

    Pairs by name (see ``utils.pairing``), then checks every file header. Problems raise
    one DatasetError naming every bad file, or with ``skip_invalid`` are skipped with a
    DatasetWarning. Raises DatasetError when no pair remains.
    """
    pairing = find_pairs(image_dir, mask_dir, stems)
    pairs = resolve_issues(pairing.pairs, pairing.issues + check_pairs(pairing.pairs), skip_invalid)
    if not pairs:
        raise DatasetError(f"no usable image/mask pairs in {image_dir} and {mask_dir}")
    return pairs


def _compose(
    augmentations: Augmentations, color_jitter: bool, image_size: tuple[int, int], mask_fill: int = 0
) -> v2.Compose | None:
    """One callable ``(image, mask) -> (image, mask)`` from a mode name, a list or a transform."""
    if isinstance(augmentations, str):
        transforms = build_augmentations(augmentations, image_size, mask_fill)
    elif augmentations is None:
        transforms = []
    elif callable(augmentations):
        transforms = [augmentations]
    else:
        transforms = list(augmentations)
    if color_jitter and not any(isinstance(t, v2.ColorJitter) for t in transforms):
        transforms.append(ColorJitter())
    return v2.Compose(transforms) if transforms else None


def _available_memory_bytes() -> int | None:
    """Memory the cache may take without swapping: MemAvailable on Linux, free pages elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no estimate on this platform
        return None


class SegmentationDataset(Dataset):
    """Image/mask pairs from disk, resized to ``image_size``, optionally augmented.

    Args:
        image_dir, mask_dir: folders of images and masks (may be the same folder when masks
            are named ``<stem>_mask`` / ``<stem>_gt``). Not needed when ``pairs`` is given.
        image_size: int or (H, W) every sample is resized to (images bilinear, masks nearest).
        augmentations: None, a mode name ("none", "light", "medium", "heavy"), a list of
            joint transforms (e.g. DualRandomHorizontalFlip(p=0.7)) or one transform.
        color_jitter: add ColorJitter (images only) if the augmentations lack one.
        mask_threshold: binary masks: foreground where value > mask_threshold * the file's
            maximum value (255 for 8-bit, 65535 for 16-bit). Ignored for multi-class masks,
            whose pixel values are the class ids.
        num_classes: 1 for binary masks, K > 1 for class-id masks.
        in_channels: 3 (RGB; grayscale is repeated, alpha dropped) or 1 (grayscale).
        ignore_index: mask value of pixels that belong to no class (often 255); they become
            VOID (-1) in the returned masks, as do areas rotated in by augmentation.
        resize: "stretch" to image_size (default), or "pad": keep the aspect ratio and letterbox,
            with black image padding and VOID mask padding.
        stems: keep only these image stems (e.g. the lines of splits/train.txt).
        pairs: explicit (image_path, mask_path) pairs instead of folders.
        skip_invalid: skip bad pairs with a warning instead of raising DatasetError.
        cache: keep decoded, resized uint8 samples in memory (skipped with a warning when
            they would not fit).

    Attributes: pairs (sorted by stem), num_classes, in_channels, image_size (H, W).
    Items: see the module docstring.
    """

    def __init__(
        self,
        image_dir: str | Path | None = None,
        mask_dir: str | Path | None = None,
        image_size: int | tuple[int, int] = (256, 256),
        augmentations: Augmentations = None,
        color_jitter: bool = False,
        mask_threshold: float = 0.5,
        num_classes: int = 1,
        in_channels: int = 3,
        *,
        stems: list[str] | None = None,
        pairs: list[Pair] | None = None,
        skip_invalid: bool = False,
        cache: bool = True,
        ignore_index: int | None = None,
        resize: str = "stretch",
    ):
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in [0, 1), got {mask_threshold}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.image_size = as_size(image_size)
        self.resize = resize
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.mask_threshold = mask_threshold
        self.skip_invalid = skip_invalid

        if pairs is None:
            if image_dir is None or mask_dir is None:
                raise ValueError("give image_dir and mask_dir, or pairs")
            self.pairs = discover_pairs(image_dir, mask_dir, stems, skip_invalid)
        else:
            pairs = [(Path(image), Path(mask)) for image, mask in pairs]
            if stems is not None:
                wanted = set(stems)
                pairs = [pair for pair in pairs if pair[0].stem in wanted]
            if not pairs:
                raise DatasetError("no image/mask pairs given")
            pairs = sorted(pairs, key=lambda pair: pair[0].stem)
            self.pairs = resolve_issues(pairs, check_pairs(pairs), skip_invalid)
            if not self.pairs:
                raise DatasetError("no usable image/mask pairs left after skipping invalid ones")

        # labels of the uint8/int64 cache, and whether masks may hold VOID pixels at all
        self.void = void_label(label_dtype(num_classes))
        self.has_void = ignore_index is not None or resize == "pad"
        self.transform = _compose(augmentations, color_jitter, self.image_size, self.void if self.has_void else 0)
        self.cache = cache and self._cache_fits()
        self._images: np.ndarray | None = None  # (N, C, H, W) uint8, filled on first use
        self._labels: np.ndarray | None = None  # (N, H, W) class ids
        self._is_cached = np.zeros(len(self.pairs), dtype=bool)
        self._empty_masks: set[Path] = set()
        self._unreported: list[Issue] = []  # warnings found while decoding, not yet shown

    @classmethod
    def from_pairs(cls, pairs: list[Pair], **kwargs) -> SegmentationDataset:
        """A dataset over explicit (image_path, mask_path) pairs, e.g. one side of ``split_pairs``."""
        return cls(pairs=pairs, **kwargs)

    @property
    def stems(self) -> list[str]:
        return [image_path.stem for image_path, _ in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({len(self)} pairs, image_size={self.image_size}, "
            f"num_classes={self.num_classes}, in_channels={self.in_channels}, cache={self.cache})"
        )

    # ---- decoding and caching -------------------------------------------------------------

    def _label_dtype(self) -> type:
        return label_dtype(self.num_classes)

    def _cache_fits(self) -> bool:
        height, width = self.image_size
        label_bytes = np.dtype(self._label_dtype()).itemsize
        needed = len(self.pairs) * height * width * (self.in_channels + label_bytes)
        available = _available_memory_bytes()
        if available is not None and needed > CACHE_MEMORY_SHARE * available:
            warnings.warn(
                f"sample cache would need {needed / 2**30:.1f} GiB of {available / 2**30:.1f} GiB available memory: "
                "decoding every epoch instead (reduce image_size to cache)",
                DatasetWarning,
                stacklevel=3,
            )
            return False
        return True

    def _decode(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``idx`` from disk: image (C, H, W) uint8 and mask (H, W) class ids, both at image_size."""
        image_path, mask_path = self.pairs[idx]
        labels = self.load_original_mask(idx)
        image = fit_image(load_image(image_path, self.in_channels), self.image_size, self.resize)
        if self.resize == "pad":
            box = letterbox_box(labels.shape, self.image_size)
            labels = letterbox(resize_labels(labels, box[2:]), box, self.image_size, self.void)
        # Channels first and contiguous, as the transforms and the model want them.
        image = np.ascontiguousarray(image.transpose(2, 0, 1))
        if not (labels[labels != self.void] if self.has_void else labels).any() and mask_path not in self._empty_masks:
            # Legal data, but often a mistake: reported once per file, in one warning per preload.
            self._empty_masks.add(mask_path)
            self._unreported.append(
                Issue("empty_mask", f"{display_path(mask_path)}: mask is all background", (mask_path,), fatal=False)
            )
        return image, resize_labels(labels, self.image_size)

    def _sample(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded pair ``idx``, from the cache when it is there."""
        if not self.cache:
            return self._decode(idx)
        if self._images is None:
            height, width = self.image_size
            self._images = np.zeros((len(self), self.in_channels, height, width), dtype=np.uint8)
            self._labels = np.zeros((len(self), height, width), dtype=self._label_dtype())
        if not self._is_cached[idx]:
            self._images[idx], self._labels[idx] = self._decode(idx)
            self._is_cached[idx] = True
        return self._images[idx], self._labels[idx]

    def preload(self, progress: bool = True) -> SegmentationDataset:
        """Decode every pair now, in this process, and cache it (when ``cache`` is on).

        Finds truncated files and bad mask values before training starts: raises one
        DatasetError naming them all, or with ``skip_invalid`` drops them with a warning.
        DataLoader workers forked afterwards share the filled cache. Returns self.
        """
        issues: list[Issue] = []
        for idx in tqdm(range(len(self)), desc="Loading dataset", disable=None if progress else True):
            try:
                self._sample(idx)
            except DatasetError as error:
                issues += error.issues
        issues, self._unreported = self._unreported + issues, []
        if issues:
            keep = resolve_issues(self.pairs, issues, self.skip_invalid)
            self._drop_all_but(keep)
        return self

    def _drop_all_but(self, keep: list[Pair]) -> None:
        if not keep:
            raise DatasetError("no usable image/mask pairs left after skipping invalid ones")
        kept = set(keep)
        mask = np.array([pair in kept for pair in self.pairs])
        self.pairs = [pair for pair in self.pairs if pair in kept]
        self._is_cached = self._is_cached[mask]
        if self._images is not None:
            self._images, self._labels = self._images[mask], self._labels[mask]

    # ---- items ----------------------------------------------------------------------------

    def __getitem__(self, idx: int | SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample idx, augmented; a SampleKey (a loader with workers) augments under its own seed."""
        idx, augmentation_seed = split_key(idx)
        image_array, label_array = self._sample(idx)
        if self._unreported:
            warnings.warn(format_issues(self._unreported), DatasetWarning, stacklevel=2)
            self._unreported = []
        image = tv_tensors.Image(torch.from_numpy(image_array))  # (C, H, W) uint8
        mask = tv_tensors.Mask(torch.from_numpy(label_array))  # (H, W)
        if self.transform is not None:
            with seeded(augmentation_seed):
                image, mask = self.transform(image, mask)
        # Both conversions copy, so the cache is never modified.
        image = image.as_subclass(torch.Tensor).float().div_(255.0)
        mask = mask.as_subclass(torch.Tensor)
        if self.has_void:
            void = mask == self.void
            mask = mask.long().masked_fill_(void, VOID)
        if self.num_classes == 1:
            return image, mask.float().unsqueeze(0)
        return image, mask.long()

    def load_original_mask(self, idx: int) -> np.ndarray:
        """Mask ``idx`` at the file's resolution: (H0, W0) uint8 class ids (int64 when
        num_classes > 255), thresholded exactly like the training masks; ignored pixels hold
        ``self.void`` (255 in uint8, -1 in int64)."""
        return load_labels(self.pairs[idx][1], self.num_classes, self.mask_threshold, ignore_index=self.ignore_index)

    def load_original_image(self, idx: int) -> np.ndarray:
        """Image ``idx`` at the file's resolution: (H0, W0, C) uint8."""
        return load_image(self.pairs[idx][0], self.in_channels)


# ---- loaders ------------------------------------------------------------------------------
