"""Overlap metrics for hard masks.

Shapes: `pred`, `truth`: (H, W) (or any matching shape) of 0/1 or class ids, numpy or torch.
An empty prediction of an empty truth scores 1: nothing to find, nothing wrongly found.
`void`: the truth label of pixels that belong to no class (an ignore label, padding); those
pixels are left out of every score, whatever was predicted there.
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


def _drop_void(pred, truth, void):
    pred, truth = _as_numpy(pred), _as_numpy(truth)
    if void is None:
        return pred, truth
    keep = truth != void
    return pred[keep], truth[keep]


def segmentation_scores(pred, truth, num_classes: int = 1, void=None) -> dict:
    """{"dice", "iou"}: binary scores, or the mean over foreground classes 1..K-1 for class-id masks
    (classes absent from both prediction and truth are left out of the mean); `void` pixels of
    the truth are left out."""
    pred, truth = _drop_void(pred, truth, void)
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


class ClassOverlap:
    """Per-class IoU and Dice over a whole set of images, and their means (mIoU, mDice).

    Intersections and pixel counts are summed over every image before dividing, as semantic
    segmentation benchmarks compute mIoU; a class absent from every prediction and truth has no
    score (None) and is left out of the means. Background (class 0) counts like any class.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.intersection = np.zeros(num_classes, dtype=np.int64)
        self.predicted = np.zeros(num_classes, dtype=np.int64)
        self.actual = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred, truth, void=None) -> None:
        pred, truth = _drop_void(pred, truth, void)
        pred, truth = pred.ravel().astype(np.int64), truth.ravel().astype(np.int64)
        k = self.num_classes
        self.intersection += np.bincount(truth[pred == truth], minlength=k)[:k]
        self.predicted += np.bincount(pred, minlength=k)[:k]
        self.actual += np.bincount(truth, minlength=k)[:k]

    def scores(self) -> dict:
        """{"per_class_iou": [K], "per_class_dice": [K] (None for absent classes), "miou", "mdice"}."""
        total = self.predicted + self.actual
        present = total > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = self.intersection / (total - self.intersection)
            dice = 2 * self.intersection / total
        as_list = lambda values: [float(v) if ok else None for v, ok in zip(values, present)]  # noqa: E731
        return {
            "per_class_iou": as_list(iou),
            "per_class_dice": as_list(dice),
            "miou": float(iou[present].mean()) if present.any() else None,
            "mdice": float(dice[present].mean()) if present.any() else None,
        }
