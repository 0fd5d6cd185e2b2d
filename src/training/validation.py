"""Validation: sample masks with DDIM and score them at the original mask resolution."""

from typing import Optional

import numpy as np
import torch

from src.device import Runtime
from src.masks import crop_box, probabilities_to_mask, resize_maps
from src.metrics import ClassOverlap, segmentation_scores
from src.models import DiffusionSegmentation
from utils.image_io import letterbox_box


def original_mask(dataset, index: int) -> np.ndarray:
    """The ground-truth mask of sample `index` at its file's resolution (H0, W0) as 0/1 or class ids."""
    return np.asarray(dataset.load_original_mask(index))


@torch.no_grad()
def evaluate(
    model: DiffusionSegmentation,
    dataset,
    runtime: Runtime,
    steps: int = 10,
    batch_size: int = 8,
    seed: int = 0,
    max_images: Optional[int] = None,
    keep_examples: int = 8,
) -> dict:
    """Mean Dice and IoU of DDIM samples over `dataset` (never augmented).

    Returns {"dice", "iou", "dice_std", "per_image": [...], "examples": (images, truths, preds,
    uncertainty) at model resolution for the first `keep_examples` images}, and for multi-class
    models "per_class_iou", "per_class_dice", "miou", "mdice" (see ClassOverlap). Pixels the
    dataset marks void (its ignore label) are left out; letterboxed predictions are cropped to the
    content before they are resized to the mask.
    """
    model.eval()
    num_classes = model.config.num_classes
    void = dataset.void if getattr(dataset, "has_void", False) else None
    padded = getattr(dataset, "resize", "stretch") == "pad"
    overlap = ClassOverlap(num_classes) if num_classes > 1 else None
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    per_image, examples = [], {"images": [], "truths": [], "preds": [], "uncertainty": []}
    for start in range(0, count, batch_size):
        indices = list(range(start, min(start + batch_size, count)))
        samples = [dataset[i] for i in indices]
        images = runtime.to_device(torch.stack([s[0] for s in samples]))
        with runtime.autocast():
            output = model.segment(images, steps=steps, seed=seed + start)
        probabilities = output.probabilities.float().cpu()
        for offset, index in enumerate(indices):
            truth = original_mask(dataset, index)
            maps = probabilities[offset]
            if padded:
                maps = crop_box(maps, letterbox_box(truth.shape[-2:], maps.shape[-2:]))
            pred = probabilities_to_mask(resize_maps(maps, truth.shape[-2:]), num_classes).numpy()
            per_image.append(segmentation_scores(pred, truth, num_classes, void))
            if overlap is not None:
                overlap.update(pred, truth, void)
            if len(examples["images"]) < keep_examples:
                mask = samples[offset][1].clamp(min=0)  # void pixels shown as background
                examples["images"].append(samples[offset][0])
                examples["truths"].append(mask[0] if mask.ndim == 3 else mask)
                examples["preds"].append(output.mask[offset].cpu())
                examples["uncertainty"].append(output.uncertainty[offset].float().cpu())
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
