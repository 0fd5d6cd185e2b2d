"""Overlap metrics for hard masks.

Shapes: `pred`, `truth`: (H, W) (or any matching shape) of 0/1 or class ids, numpy or torch.
An empty prediction of an empty truth scores 1: nothing to find, nothing wrongly found.
"""

import numpy as np
import torch


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def dice_score(pred, truth) -> float:
    """2|P n T| / (|P| + |T|) for binary masks (nonzero = foreground)."""
    pred, truth = _as_numpy(pred) != 0, _as_numpy(truth) != 0
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, truth).sum() / total)


def iou_score(pred, truth) -> float:
    """|P n T| / |P u T| for binary masks (nonzero = foreground)."""
    pred, truth = _as_numpy(pred) != 0, _as_numpy(truth) != 0
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def segmentation_scores(pred, truth, num_classes: int = 1) -> dict:
    """{"dice", "iou"}: binary scores, or the mean over foreground classes 1..K-1 for class-id masks
    (classes absent from both prediction and truth are left out of the mean)."""
    if num_classes == 1:
        return {"dice": dice_score(pred, truth), "iou": iou_score(pred, truth)}
    pred, truth = _as_numpy(pred), _as_numpy(truth)
    dices, ious = [], []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        if p.any() or t.any():
            dices.append(dice_score(p, t))
            ious.append(iou_score(p, t))
    if not dices:
        return {"dice": 1.0, "iou": 1.0}
    return {"dice": float(np.mean(dices)), "iou": float(np.mean(ious))}
