"""Writing one image's prediction to PNG files named after the input's stem.

    <stem>.png              mask: 0/255 for binary models, class ids (8-bit; 16-bit past 256
                            classes) for multi-class
    <stem>_color.png        multi-class only: the class ids in palette colours
    <stem>_overlay.png      the mask tinted over the original image (on unless --no-overlay)
    <stem>_prob.png / .npy  with --save-probs: foreground (binary) or winning-class (multi-class)
                            probability as grey levels; the .npy holds all (K, H, W) float32 maps
    <stem>_uncertainty.png  with --ensemble N > 1: predictive entropy of the averaged probability (magma colours,
                            black 0 to bright at the map's maximum, at least 0.01); with
                            --save-probs also <stem>_uncertainty.npy, the raw (H, W) float32 values
    <stem>_process.png/.gif with --visualize-process: the reverse diffusion step by step

Every file has the input image's ORIGINAL size except the process figure and GIF, which show
what the model saw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from src.inference.predictor import InferenceError, Prediction
from utils.visualization import (
    colorize_mask,
    overlay_mask,
    probability_to_uint8,
    save_process_gif,
    save_reverse_process,
    uncertainty_to_rgb,
)


@dataclass
class OutputOptions:
    overlay: bool = True
    save_probs: bool = False
    uncertainty: bool = False  # inference.py writes it with an ensemble (--ensemble N > 1)
    process: bool = False


def check_output_dir(output_dir) -> None:
    """InferenceError when `output_dir` could not be created or written to; creates nothing."""
    path = Path(output_dir)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "exists and is not a folder" if existing == path else f"{existing} is not a folder"
        raise InferenceError(f"--output {path}: {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InferenceError(f"--output {path}: {existing} is not writable")


def prepare_output_dir(output_dir) -> Path:
    """Create `output_dir` (and its parents); InferenceError naming it when that is impossible."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = "exists and is not a folder" if output_dir.exists() else error.strerror or str(error)
        raise InferenceError(f"--output {output_dir}: cannot create the output folder: {reason}") from None
    return output_dir


def save_prediction(
    prediction: Prediction,
    image: np.ndarray,
    output_dir,
    stem: str,
    num_classes: int,
    options: OutputOptions,
    source: Path | None = None,
) -> dict[str, Path]:
    """Write the files of one prediction; returns {kind: path} in the order written.

    image: (H, W, C) uint8, the original input (for the overlay). source: the input file, which
    is never overwritten (InferenceError instead).
    """
    output_dir = prepare_output_dir(output_dir)
    if source is not None and (output_dir / f"{stem}.png").resolve() == Path(source).resolve():
        raise InferenceError(f"{source}: the mask would overwrite the input image; choose another --output folder")

    try:
        return _write_files(prediction, image, output_dir, stem, num_classes, options)
    except OSError as error:  # a full disk, a read-only file in the way: stop, naming the file
        where = error.filename or output_dir
        raise InferenceError(f"{where}: cannot write output: {error.strerror or error}") from None


def _write_files(
    prediction: Prediction, image: np.ndarray, output_dir: Path, stem: str, num_classes: int, options: OutputOptions
) -> dict[str, Path]:
    written = {}

    def write(kind: str, name: str, pixels: np.ndarray) -> None:
        path = output_dir / name
        Image.fromarray(pixels).save(path)
        written[kind] = path

    if num_classes == 1:
        write("mask", f"{stem}.png", (prediction.mask > 0).astype(np.uint8) * 255)
    else:
        write("mask", f"{stem}.png", prediction.mask)  # uint8 class ids (uint16: a 16-bit PNG)
        write("color", f"{stem}_color.png", colorize_mask(prediction.mask, num_classes))
    if options.overlay:
        write("overlay", f"{stem}_overlay.png", overlay_mask(image, prediction.mask, num_classes))
    if options.save_probs:
        # binary: P(foreground); multi-class: the confidence of the chosen class
        shown = prediction.probabilities[0] if num_classes == 1 else prediction.probabilities.max(axis=0)
        write("probability", f"{stem}_prob.png", probability_to_uint8(shown))
        np.save(output_dir / f"{stem}_prob.npy", prediction.probabilities.astype(np.float32))
        written["probability_npy"] = output_dir / f"{stem}_prob.npy"
    if options.uncertainty:
        write("uncertainty", f"{stem}_uncertainty.png", uncertainty_to_rgb(prediction.uncertainty))
        if options.save_probs:
            np.save(output_dir / f"{stem}_uncertainty.npy", prediction.uncertainty.astype(np.float32))
            written["uncertainty_npy"] = output_dir / f"{stem}_uncertainty.npy"
    if options.process and prediction.process is not None:
        written.update(save_process(prediction, output_dir, stem, num_classes))
    return written


def save_process(prediction: Prediction, output_dir, stem: str, num_classes: int) -> dict[str, Path]:
    """`<stem>_process.png` (x_t and predicted x0 at the recorded steps) and `<stem>_process.gif`."""
    trace = prediction.process
    # the sampler's result: the mean of the estimates with time-ensembling, else the last estimate
    result = (trace.mean if trace.mean is not None else trace.x0)[-1]  # (K, h, w) in [-1, 1]: 0 is probability 0.5
    final_mask = (result[0] > 0).long() if num_classes == 1 else result.argmax(0)
    figure = save_reverse_process(
        trace.image,
        trace.timesteps,
        trace.x_t,
        trace.x0,
        Path(output_dir) / f"{stem}_process.png",
        num_classes=num_classes,
        final_mask=final_mask,
        next_timesteps=trace.next_timesteps,
        mean_frames=trace.mean,
    )
    gif = save_process_gif(
        trace.image, trace.x_t, trace.x0, Path(output_dir) / f"{stem}_process.gif", num_classes=num_classes
    )
    return {"process": figure, "process_gif": gif}


def format_written(written: dict[str, Path]) -> str:
    """'mask: out/a.png, overlay: out/a_overlay.png' for a one-line report."""
    return ", ".join(f"{kind}: {path}" for kind, path in written.items())
