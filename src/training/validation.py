"""Validation: sample masks with DDIM and score them at the original mask resolution."""

from typing import Optional

import numpy as np
import torch

from src.device import Runtime
from src.masks import probabilities_to_mask, resize_maps
from src.metrics import segmentation_scores
from src.models import DiffusionSegmentation


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
    uncertainty) at model resolution for the first `keep_examples` images}.
    """
    model.eval()
    num_classes = model.config.num_classes
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
            full = resize_maps(probabilities[offset], truth.shape[-2:])
            per_image.append(segmentation_scores(probabilities_to_mask(full, num_classes).numpy(), truth, num_classes))
            if len(examples["images"]) < keep_examples:
                mask = samples[offset][1]
                examples["images"].append(samples[offset][0])
                examples["truths"].append(mask[0] if mask.ndim == 3 else mask)
                examples["preds"].append(output.mask[offset].cpu())
                examples["uncertainty"].append(output.uncertainty[offset].float().cpu())
    dices = [s["dice"] for s in per_image]
    return {
        "dice": float(np.mean(dices)) if dices else float("nan"),
        "dice_std": float(np.std(dices)) if dices else float("nan"),
        "iou": float(np.mean([s["iou"] for s in per_image])) if per_image else float("nan"),
        "per_image": per_image,
        "examples": {k: torch.stack(v) for k, v in examples.items() if v},
    }
