"""Sliding-window inference for images far larger than the model's input size.

The model runs on overlapping windows at its own resolution, and each window's probabilities are
blended into full-size maps with a Gaussian weight that is highest at the window's centre and
small near its edges, where the network sees the least context (as in nnU-Net and MONAI's
`sliding_window_inference`, sigma = 1/8 of the window). Memory stays bounded: the full-size maps
are three float32 accumulators, (K, H, W) probabilities and (H, W) uncertainty and weight
(64 MB each per channel for 4096 x 4096), and only `batch_size` windows are ever on the model at
once; the image itself stays uint8.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

SIGMA_SCALE = 1 / 8  # nnU-Net's choice: the weight falls to ~0 within the outer eighth of the window


def tile_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows covering [0, length): a stride of window x (1 - overlap), the last
    window flush with the end. length <= window gives one window at 0."""
    if length <= window:
        return [0]
    stride = max(1, int(window * (1 - overlap)))
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def gaussian_weight(height: int, width: int) -> np.ndarray:
    """(height, width) float32 Gaussian centred on the window, max 1, never 0 (every pixel counts a little)."""
    axes = []
    for size in (height, width):
        centre, sigma = (size - 1) / 2, size * SIGMA_SCALE
        axes.append(np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2))
    weight = np.outer(axes[0], axes[1]).astype(np.float32)
    weight /= weight.max()
    return np.maximum(weight, 1e-3)


def windows(image_hw: tuple[int, int], window_hw: tuple[int, int], overlap: float) -> list[tuple[int, int]]:
    """(top, left) of every window, row by row."""
    tops = tile_starts(image_hw[0], window_hw[0], overlap)
    lefts = tile_starts(image_hw[1], window_hw[1], overlap)
    return [(top, left) for top in tops for left in lefts]


def sliding_window(
    image: np.ndarray,
    window_hw: tuple[int, int],
    run: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
    num_channels: int,
    overlap: float = 0.25,
    batch_size: int = 4,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend `run` over overlapping windows of `image`.

    image: (H, W, C) uint8. run(tiles, first_index): tiles (B, C, h, w) float in [0, 1] ->
    (probabilities (B, K, h, w), uncertainty (B, h, w)); first_index numbers the batch's first
    window (for seeds). Returns (probabilities (K, H, W), uncertainty (H, W)), float32.
    An image smaller than the window in a dimension is padded with black, and the padding cropped.
    """
    height, width = image.shape[:2]
    win_h, win_w = window_hw
    padded_hw = (max(height, win_h), max(width, win_w))
    if padded_hw != (height, width):
        canvas = np.zeros((*padded_hw, image.shape[2]), dtype=image.dtype)
        canvas[:height, :width] = image
        image = canvas
    probabilities = np.zeros((num_channels, *padded_hw), dtype=np.float32)
    uncertainty = np.zeros(padded_hw, dtype=np.float32)
    total_weight = np.zeros(padded_hw, dtype=np.float32)
    weight = gaussian_weight(win_h, win_w)
    places = windows(padded_hw, window_hw, overlap)

    bar = tqdm(total=len(places), desc="tiles", unit="tile", disable=not progress, dynamic_ncols=True, leave=False)
    for first in range(0, len(places), batch_size):
        batch = places[first : first + batch_size]
        tiles = np.stack([image[top : top + win_h, left : left + win_w] for top, left in batch])
        tiles = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div_(255)
        probs, unc = run(tiles, first)
        probs, unc = probs.float().cpu().numpy(), unc.float().cpu().numpy()
        for (top, left), p, u in zip(batch, probs, unc):
            rows, cols = slice(top, top + win_h), slice(left, left + win_w)
            probabilities[:, rows, cols] += p * weight
            uncertainty[rows, cols] += u * weight
            total_weight[rows, cols] += weight
        bar.update(len(batch))
    bar.close()
    probabilities /= total_weight
    uncertainty /= total_weight
    return probabilities[:, :height, :width], uncertainty[:height, :width]
