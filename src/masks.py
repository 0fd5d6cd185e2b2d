"""From the model's probability maps to masks at an image's original size.

Validation, inference and the benchmarks all score or save predictions at the resolution of the
original file, so they share these two steps: resize the (K, h, w) maps bilinearly, THEN threshold
(thresholding after resizing keeps edges smooth).
"""

import torch
import torch.nn.functional as F


def resize_maps(maps: torch.Tensor, size) -> torch.Tensor:
    """(K, h, w) float maps -> (K, H, W), bilinear; a no-op at the same size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def probabilities_to_mask(probabilities: torch.Tensor, num_classes: int, threshold: float = 0.5) -> torch.Tensor:
    """(K, H, W) -> (H, W) int64: foreground where p > threshold (binary), else the argmax class."""
    if num_classes == 1:
        return (probabilities[0] > threshold).long()
    return probabilities.argmax(0)


def crop_box(maps: torch.Tensor, box) -> torch.Tensor:
    """(..., H, W) -> (..., h, w): the content of a letterboxed input, box = (top, left, h, w)."""
    top, left, height, width = box
    return maps[..., top : top + height, left : left + width]
