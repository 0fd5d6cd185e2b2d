"""The one resize path: how a decoded image or mask becomes a model-sized array.

Training, validation, inference and the benchmarks all make model inputs with ``fit_image`` (and
masks with ``resize_labels`` + ``letterbox``), so the model sees the same pixels for the same file
wherever it runs (tests/test_model_inputs.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_image(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H0, W0, C) uint8 -> (H, W, C) uint8, bilinear with antialiasing (PIL's filter covers the
    source area, so downscaling a large photo does not alias fine texture). No-op at that size."""
    if pixels.shape[:2] == tuple(size):
        return pixels
    img = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    resized = np.array(img.resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return resized[..., None] if resized.ndim == 2 else resized


RESIZE_MODES = ("stretch", "pad")


def fit_image(pixels: np.ndarray, image_size: tuple[int, int], resize: str = "stretch") -> np.ndarray:
    """The model input made from a decoded (H0, W0, C) uint8 image: (H, W, C) uint8 at
    ``image_size``, stretched, or with ``resize="pad"`` fitted keeping its aspect ratio and
    letterboxed with black borders. The one resize path of the project."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if resize == "pad":
        box = letterbox_box(pixels.shape[:2], image_size)
        return letterbox(resize_image(pixels, box[2:]), box, image_size, 0)
    return resize_image(pixels, image_size)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H0, W0) class ids -> (H, W) by nearest neighbour, same dtype (no-op at that size)."""
    if labels.shape == tuple(size):
        return labels
    pil_labels = Image.fromarray(labels.astype(np.int32) if labels.dtype == np.int64 else labels)
    resized = pil_labels.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(resized).astype(labels.dtype)


def letterbox_box(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where a (H0, W0) picture lands when fitted into (H, W) keeping its aspect, centred:
    (top, left, height, width) of the content; the rest is padding."""
    (h0, w0), (h, w) = source_hw, target_hw
    scale = min(h / h0, w / w0)
    height, width = max(1, min(h, round(h0 * scale))), max(1, min(w, round(w0 * scale)))
    return (h - height) // 2, (w - width) // 2, height, width


def letterbox(array: np.ndarray, box: tuple[int, int, int, int], target_hw: tuple[int, int], fill) -> np.ndarray:
    """Place ``array`` ((height, width) or (height, width, C), already at the box's size) at ``box``
    in a (H, W[, C]) array filled with ``fill``."""
    top, left, height, width = box
    out = np.full((*target_hw, *array.shape[2:]), fill, dtype=array.dtype)
    out[top : top + height, left : left + width] = array
    return out
