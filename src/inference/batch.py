"""Batch mode: every image of a folder, several per forward pass, bad files skipped and reported.

Writes the usual per-image files (see `src.inference.outputs`) plus
    summary.json   count, failures (file and reason), seconds per image, options, mean scores
    metrics.csv    with a mask folder: Dice and IoU per image and their mean (last row); for
                   multi-class models summary.json adds per-class IoU/Dice and mIoU over all images
Mask pixels equal to `ignore_index` are left out of every score.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.inference.outputs import OutputOptions, prepare_output_dir, save_prediction
from src.inference.predictor import InferenceError, Predictor
from src.metrics import ClassOverlap, segmentation_scores
from utils.errors import DatasetError
from utils.image_io import IMAGE_EXTENSIONS, label_dtype, load_labels, void_label
from utils.pairing import find_pairs, list_image_files


@dataclass
class BatchSummary:
    """What a batch run did; also written to `summary.json` (paths as strings)."""

    input_dir: str
    output_dir: str
    count: int = 0  # images segmented
    failures: list = field(default_factory=list)  # [{"file": ..., "reason": ...}]
    total_seconds: float = 0.0
    seconds_per_image: float | None = None
    mean_dice: float | None = None
    mean_iou: float | None = None
    scored: int = 0  # images with a ground-truth mask that were scored
    ignore_index: int | None = None
    miou: float | None = None  # multi-class: over all scored pixels (see src.metrics.ClassOverlap)
    mdice: float | None = None
    per_class_iou: list | None = None
    per_class_dice: list | None = None
    options: dict = field(default_factory=dict)
    summary_path: str | None = None
    metrics_path: str | None = None


def run_batch(
    predictor: Predictor,
    input_dir,
    output_dir,
    options: OutputOptions,
    batch_size: int = 8,
    mask_dir=None,
    progress: bool = True,
    ignore_index: int | None = None,
) -> BatchSummary:
    """Segment every image in `input_dir` (not recursive), `batch_size` images per forward pass.

    Unreadable images are skipped and listed in the summary, never fatal. With `mask_dir`,
    masks are paired to images by stem (`utils.pairing`: `a.jpg` <-> `a.png`, `a_mask.png`,
    `a_gt.png`) and each prediction is scored at the original size.
    Raises InferenceError when a folder does not exist or holds no images.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if batch_size < 1:
        raise InferenceError(f"--batch-size must be >= 1, got {batch_size}")
    images, masks = _list_inputs(input_dir, mask_dir)
    _refuse_overwriting_inputs(output_dir, input_dir, mask_dir)
    stems = unique_stems(images)
    prepare_output_dir(output_dir)
    summary = BatchSummary(
        str(input_dir),
        str(output_dir),
        options={**asdict(predictor.options), "batch_size": batch_size},
        ignore_index=ignore_index,
    )
    scores = []
    overlap = ClassOverlap(predictor.num_classes) if predictor.num_classes > 1 else None

    start = time.perf_counter()
    bar = tqdm(total=len(images), desc="Segmenting", unit="img", disable=not progress, dynamic_ncols=True)
    for first in range(0, len(images), batch_size):
        chunk = images[first : first + batch_size]
        loaded = []
        for path in chunk:
            try:
                loaded.append((path, predictor.load(path)))
            except DatasetError as error:
                summary.failures.append({"file": str(path), "reason": str(error)})
        predictions = predictor.predict([image for _, image in loaded], record_process=options.process)
        for (path, image), prediction in zip(loaded, predictions):
            save_prediction(prediction, image, output_dir, stems[path], predictor.num_classes, options, source=path)
            summary.count += 1
            if path in masks:
                score = _score(prediction.mask, masks[path], predictor.num_classes, summary, ignore_index, overlap)
                if score is not None:
                    scores.append({"image": path.name, "mask": masks[path].name, **score})
        bar.update(len(chunk))
    bar.close()

    summary.total_seconds = time.perf_counter() - start
    summary.seconds_per_image = summary.total_seconds / summary.count if summary.count else None
    _write_summary(summary, scores, overlap, output_dir, mask_dir is not None)
    return summary


def _write_summary(summary: BatchSummary, scores: list, overlap, output_dir: Path, scored: bool) -> None:
    """metrics.csv (when scored against masks) and summary.json, with the mean scores filled in."""
    try:
        if scored:
            summary.metrics_path = str(write_metrics_csv(scores, output_dir / "metrics.csv"))
            summary.scored = len(scores)
            if scores:
                summary.mean_dice = float(np.mean([s["dice"] for s in scores]))
                summary.mean_iou = float(np.mean([s["iou"] for s in scores]))
            if overlap is not None and scores:
                class_scores = overlap.scores()
                summary.miou, summary.mdice = class_scores["miou"], class_scores["mdice"]
                summary.per_class_iou, summary.per_class_dice = (
                    class_scores["per_class_iou"],
                    class_scores["per_class_dice"],
                )
        summary.summary_path = str(output_dir / "summary.json")
        Path(summary.summary_path).write_text(json.dumps(asdict(summary), indent=2))
    except OSError as error:
        raise InferenceError(f"{error.filename or output_dir}: cannot write: {error.strerror or error}") from None


def _refuse_overwriting_inputs(output_dir: Path, input_dir: Path, mask_dir) -> None:
    for folder, flag in ((input_dir, "--input"), (mask_dir, "--mask-dir")):
        if folder is not None and output_dir.resolve() == Path(folder).resolve():
            raise InferenceError(
                f"--output {output_dir} is the {flag} folder: masks named <stem>.png would overwrite its files"
            )


def _list_inputs(input_dir: Path, mask_dir) -> tuple[list[Path], dict[Path, Path]]:
    """The images to segment and, with a mask folder, {image: mask} for those that have one."""
    if not input_dir.is_dir():
        raise InferenceError(f"{input_dir}: {'not a folder' if input_dir.exists() else 'no such folder'}")
    images = list_image_files(input_dir)
    masks: dict[Path, Path] = {}
    if mask_dir is not None:
        if not Path(mask_dir).is_dir():
            raise InferenceError(f"--mask-dir {mask_dir}: no such folder")
        masks = dict(find_pairs(input_dir, mask_dir).pairs)
        if Path(mask_dir).resolve() == input_dir.resolve():  # masks beside the images: not inputs
            mask_files = set(masks.values())
            images = [p for p in images if p not in mask_files]
    if not images:
        raise InferenceError(f"{input_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return images, masks


def unique_stems(paths: list[Path]) -> dict[Path, str]:
    """Output stem per input: the file's stem, or `stem_ext` when two inputs share a stem
    (`a.jpg` and `a.png` must not write the same `a.png`)."""
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    return {p: p.stem if counts[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}" for p in paths}


def _score(
    mask: np.ndarray,
    mask_path: Path,
    num_classes: int,
    summary: BatchSummary,
    ignore_index=None,
    overlap: ClassOverlap | None = None,
) -> dict | None:
    """Dice/IoU of one prediction against its ground truth (ignored pixels left out); a bad mask is
    a failure, not a stop. Adds the pixels to `overlap` for per-class scores."""
    try:
        truth = load_labels(mask_path, num_classes=num_classes, ignore_index=ignore_index)
    except DatasetError as error:
        summary.failures.append({"file": str(mask_path), "reason": f"mask not scored: {error}"})
        return None
    if truth.shape != mask.shape:
        summary.failures.append(
            {
                "file": str(mask_path),
                "reason": f"mask not scored: its size {truth.shape[1]}x{truth.shape[0]} "
                f"differs from the image's {mask.shape[1]}x{mask.shape[0]}",
            }
        )
        return None
    void = void_label(label_dtype(num_classes)) if ignore_index is not None else None
    if overlap is not None:
        overlap.update(mask, truth, void)
    return segmentation_scores(mask, truth, num_classes, void)


def write_metrics_csv(scores: list[dict], path: Path) -> Path:
    """image, mask, dice, iou per row; a final `mean` row (empty scores when nothing was scored)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "mask", "dice", "iou"])
        for s in scores:
            writer.writerow([s["image"], s["mask"], f"{s['dice']:.6f}", f"{s['iou']:.6f}"])
        if scores:
            writer.writerow(
                [
                    "mean",
                    "",
                    f"{np.mean([s['dice'] for s in scores]):.6f}",
                    f"{np.mean([s['iou'] for s in scores]):.6f}",
                ]
            )
        else:
            writer.writerow(["mean", "", "", ""])
    return path
