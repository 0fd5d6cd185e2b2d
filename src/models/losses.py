"""Segmentation losses on the predicted mask, with the pixels a label ignores left out.

Shapes: per-pixel tensors (B, K, H, W); valid: (B, 1, H, W) bool, False where a pixel belongs to
no class (an ignore label, letterbox padding), or None when every pixel counts.
"""

import torch
import torch.nn.functional as F


def masked_mean(per_pixel: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, K, H, W) per-pixel losses over the pixels where valid is True (all when None)."""
    if valid is None:
        return per_pixel.mean()
    weight = valid.to(per_pixel.dtype).expand_as(per_pixel)
    return (per_pixel * weight).sum() / weight.sum().clamp(min=1)


def soft_dice_loss(
    probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1.0
) -> torch.Tensor:
    """1 - soft Dice, averaged over images and channels. probs, truth: (B, K, H, W) in [0, 1]."""
    if valid is not None:
        probs, truth = probs * valid, truth * valid
    dims = (2, 3)
    intersection = (probs * truth).sum(dims)
    total = probs.sum(dims) + truth.sum(dims)
    return 1 - ((2 * intersection + eps) / (total + eps)).mean()


def fair_crps(
    first: torch.Tensor, second: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None
) -> torch.Tensor:
    """The fair CRPS of two samples of each pixel (Ferro 2014, ensemble size 2), against the truth:
    (|X1 - y| + |X2 - y|) / 2 - |X1 - X2| / 2. Its expectation is the CRPS of the distribution the
    samples come from, a strictly proper score: least when the samples are distributed as the truth
    is (a pixel that is +1 in 30 % of cases alike is best served by samples that are +1 30 % of the
    time, not by a constant -0.4, as MSE would have it)."""
    score = ((first - truth).abs() + (second - truth).abs() - (first - second).abs()) / 2
    return masked_mean(score, valid)


def bce_on_logits(logits: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Binary cross-entropy of sigmoid(logits) against truth in [0, 1]."""
    return masked_mean(F.binary_cross_entropy_with_logits(logits, truth, reduction="none"), valid)


def bce_on_probabilities(probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Binary cross-entropy of probabilities (kept inside [1e-4, 1 - 1e-4]) against truth.

    In fp32 with autocast off: CUDA autocast refuses binary_cross_entropy (its log is unsafe in
    fp16), and clamped probabilities are not logits, so the _with_logits form is no substitute."""
    probs = probs.clamp(1e-4, 1 - 1e-4)
    with torch.autocast(probs.device.type, enabled=False):
        return masked_mean(F.binary_cross_entropy(probs.float(), truth.float(), reduction="none"), valid)
