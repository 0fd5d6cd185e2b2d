"""Metrics (src/metrics.py): ignored pixels, and per-class scores over a whole set of images."""

import numpy as np
import pytest

from src.metrics import ClassOverlap, segmentation_scores


def test_void_pixels_change_no_score():
    truth = np.array([[0, 1, 2, 255], [1, 1, 255, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 2, 0], [1, 1, 2, 1]])
    other = pred.copy()
    other[truth == 255] = [2, 0, 0]  # different guesses under the void pixels only
    for num_classes in (1, 3):
        assert segmentation_scores(pred, truth, num_classes, void=255) == segmentation_scores(
            other, truth, num_classes, void=255
        )
    assert segmentation_scores(pred, truth, 3, void=255) == {"dice": 1.0, "iou": 1.0}
    assert segmentation_scores(pred, truth, 3)["iou"] < 1.0  # counted, void pixels would be errors


def test_class_overlap_sums_pixels_over_images_before_dividing():
    overlap = ClassOverlap(3)
    overlap.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [1, 0]]))  # class 1: I 2, P 3, T 2
    overlap.update(np.array([[0, 0], [0, 9]]), np.array([[0, 0], [0, 9]]), void=9)  # only class 0, void skipped
    scores = overlap.scores()
    # class 0: I = 1 + 3, P = 1 + 3, T = 2 + 3; class 1: I 2, P 3, T 2; class 2 absent from all
    assert scores["per_class_iou"] == pytest.approx([4 / 5, 2 / 3, None])
    assert scores["per_class_dice"] == pytest.approx([8 / 9, 4 / 5, None])
    assert scores["miou"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert scores["mdice"] == pytest.approx((8 / 9 + 4 / 5) / 2)
