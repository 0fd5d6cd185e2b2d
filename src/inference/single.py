"""One image file in, its output files out: what single-image and interactive mode share."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from src.inference.outputs import OutputOptions, save_prediction
from src.inference.predictor import InferenceError, Predictor


@dataclass
class FileResult:
    """Where one input's outputs went, its original size (H, W) and the wall time it took."""

    source: Path
    written: dict
    size: tuple
    seconds: float
    foreground: float  # share of pixels not labelled background


def segment_file(predictor: Predictor, path, output_dir, options: OutputOptions) -> FileResult:
    """Read `path`, segment it, write `<stem>*.png` into `output_dir`.

    Raises InferenceError when `path` is not a file and DatasetError (utils.errors) when it is not
    a readable image; both name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"{path}: {'is a folder (use --batch for folders)' if path.is_dir() else 'no such file'}")
    start = time.perf_counter()
    image = predictor.load(path)
    prediction = predictor.predict([image], record_process=options.process)[0]
    written = save_prediction(prediction, image, output_dir, path.stem, predictor.num_classes, options, source=path)
    return FileResult(
        path, written, tuple(image.shape[:2]), time.perf_counter() - start, float((prediction.mask > 0).mean())
    )
