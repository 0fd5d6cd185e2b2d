"""Validation: segment a dataset batch by batch and score every image at its mask's own resolution.

`scored_batches` is the one scoring loop: the trainer's `evaluate` and the benchmarks build on it,
so a Dice in a training log and one in BENCHMARKS.md are computed the same way.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from src.device import Runtime
from src.masks import crop_box, probabilities_to_mask, resize_maps
from src.metrics import ClassOverlap, segmentation_scores
from src.models import DiffusionSegmentation, SegmentationOutput
from utils.resize import letterbox_box


@dataclass
class ScoredBatch:
    """One batch: dataset `indices`, the model inputs `images` (B, C, h, w), the segmentation at
    model resolution (`output`, on the CPU in float32), the ground truths and predicted masks at
    each file's resolution, their scores ({"dice", "iou", ...} per image) and the seconds
    `segment` took."""

    indices: list
    images: torch.Tensor
    output: SegmentationOutput
    truths: list
    preds: list
    scores: list
    seconds: float


def original_mask(dataset, index: int) -> np.ndarray:
    """The ground-truth mask of sample `index` at its file's resolution (H0, W0) as 0/1 or class ids."""
    return np.asarray(dataset.load_original_mask(index))


def scored_batches(
    segment: Callable[[torch.Tensor, int], SegmentationOutput],
    dataset,
    runtime: Runtime,
    num_classes: int = 1,
    batch_size: int = 8,
    max_images: int | None = None,
    threshold: float = 0.5,
) -> Iterator[ScoredBatch]:
    """Run `segment(images, first_index)` over the first `max_images` samples of `dataset` (never
    augmented) and score each prediction against the mask file: letterboxed probabilities are
    cropped to the content, resized to the mask, thresholded (binary) or argmaxed; pixels the
    dataset marks void (its ignore label) are left out."""
    void = dataset.void if getattr(dataset, "has_void", False) else None
    padded = getattr(dataset, "resize", "stretch") == "pad"
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    for start in range(0, count, batch_size):
        indices = list(range(start, min(start + batch_size, count)))
        images = torch.stack([dataset[i][0] for i in indices])
        began = time.perf_counter()
        with torch.no_grad(), runtime.autocast():
            output = segment(runtime.to_device(images), start)
        output = SegmentationOutput(**{name: _on_cpu(value) for name, value in vars(output).items()})
        seconds = time.perf_counter() - began
        truths, preds, scores = [], [], []
        for offset, index in enumerate(indices):
            truth = original_mask(dataset, index)
            maps = output.probabilities[offset]
            if padded:
                maps = crop_box(maps, letterbox_box(truth.shape[-2:], maps.shape[-2:]))
            pred = probabilities_to_mask(resize_maps(maps, truth.shape[-2:]), num_classes, threshold).numpy()
            truths.append(truth)
            preds.append(pred)
            scores.append(segmentation_scores(pred, truth, num_classes, void))
        yield ScoredBatch(indices, images, output, truths, preds, scores, seconds)


def _on_cpu(value: torch.Tensor | None) -> torch.Tensor | None:
    """A tensor on the CPU, floating point as float32 (None stays None)."""
    if value is None:
        return None
    return value.float().cpu() if value.is_floating_point() else value.cpu()


@torch.no_grad()
def evaluate(
    model: DiffusionSegmentation,
    dataset,
    runtime: Runtime,
    steps: int = 10,
    batch_size: int = 8,
    seed: int = 0,
    max_images: int | None = None,
    keep_examples: int = 8,
) -> dict:
    """Mean Dice and IoU of DDIM samples over `dataset` (see scored_batches).

    Returns {"dice", "iou", "dice_std", "per_image": [...], "examples": (images, truths, preds,
    uncertainty) at model resolution for the first `keep_examples` images}, and for multi-class
    models "per_class_iou", "per_class_dice", "miou", "mdice" (see ClassOverlap).
    """
    model.eval()
    num_classes = model.config.num_classes
    void = dataset.void if getattr(dataset, "has_void", False) else None
    overlap = ClassOverlap(num_classes) if num_classes > 1 else None
    per_image, examples = [], {"images": [], "truths": [], "preds": [], "uncertainty": []}
    batches = scored_batches(
        lambda images, first: model.segment(images, steps=steps, seed=seed + first),
        dataset,
        runtime,
        num_classes,
        batch_size,
        max_images,
    )
    for batch in batches:
        per_image.extend(batch.scores)
        for offset, index in enumerate(batch.indices):
            if overlap is not None:
                overlap.update(batch.preds[offset], batch.truths[offset], void)
            if len(examples["images"]) < keep_examples:
                mask = dataset[index][1].clamp(min=0)  # void pixels shown as background
                examples["images"].append(batch.images[offset])
                examples["truths"].append(mask[0] if mask.ndim == 3 else mask)
                examples["preds"].append(batch.output.mask[offset])
                examples["uncertainty"].append(batch.output.uncertainty[offset])
    dices = [s["dice"] for s in per_image]
    class_scores = overlap.scores() if overlap is not None else {}
    return {
        **class_scores,
        "dice": float(np.mean(dices)) if dices else float("nan"),
        "dice_std": float(np.std(dices)) if dices else float("nan"),
        "iou": float(np.mean([s["iou"] for s in per_image])) if per_image else float("nan"),
        "per_image": per_image,
        "examples": {k: torch.stack(v) for k, v in examples.items() if v},
    }
