"""Shared helpers of the benchmark scripts: the machine, Kvasir-SEG splits, scoring, results files.

Importable from the project venv and from benchmarks/.peer-venv (it needs only torch, numpy and
the project's own utils/ and src/ packages, found through the repository root on sys.path).
"""

import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from src.masks import probabilities_to_mask, resize_maps  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINTS = RESULTS / "checkpoints"
PEER_VENV = ROOT / "benchmarks" / ".peer-venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kvasir-seg"


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    VmHWM from /proc, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a probe
    subprocess of a big parent would report the parent's peak (speed.py did: 9 GB for every row)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json(path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_jsonable))
    print(f"wrote {path}")
    return path


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


class Stopwatch:
    def __init__(self):
        self.start = time.monotonic()

    def minutes(self) -> float:
        return (time.monotonic() - self.start) / 60


# ---------------------------------------------------------------------------------------------
# Kvasir-SEG
# ---------------------------------------------------------------------------------------------


def read_stems(data_dir, split: str) -> list:
    path = Path(data_dir) / "splits" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found (is --data a Kvasir-SEG folder with splits/?)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def holdout_split(stems: list, holdout: int, seed: int = 0) -> tuple:
    """(fit, holdout) stems: a seeded random `holdout` of the TRAIN split, for ablations (never val)."""
    order = np.random.default_rng(seed).permutation(len(stems))
    held = sorted(stems[i] for i in order[:holdout])
    kept = sorted(stems[i] for i in order[holdout:])
    return kept, held


def linked_subset(data_dir, stems: list, dest) -> tuple:
    """A folder pair of symlinks to `stems` only, so train() (which takes folders) sees just them.

    Returns (image_dir, mask_dir)."""
    data_dir, dest = Path(data_dir).resolve(), Path(dest)
    image_dir, mask_dir = dest / "images", dest / "masks"
    for folder in (image_dir, mask_dir):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
    images = {p.stem: p for p in (data_dir / "images").iterdir()}
    masks = {p.stem: p for p in (data_dir / "masks").iterdir()}
    for stem in stems:
        (image_dir / images[stem].name).symlink_to(images[stem])
        (mask_dir / masks[stem].name).symlink_to(masks[stem])
    return image_dir, mask_dir


def kvasir_dataset(data_dir, stems: list, image_size: int, augmentations=None):
    from utils.data_utils import SegmentationDataset

    data_dir = Path(data_dir)
    dataset = SegmentationDataset(data_dir / "images", data_dir / "masks", image_size=image_size,
                                  augmentations=augmentations, stems=stems)
    return dataset.preload(progress=False)


# ---------------------------------------------------------------------------------------------
# Scoring at the original mask resolution
# ---------------------------------------------------------------------------------------------


def score_probabilities(probabilities: torch.Tensor, truth: np.ndarray, threshold: float = 0.5) -> dict:
    """probabilities: (1, h, w) foreground probability at model resolution; truth: (H0, W0) 0/1.
    Upsampled bilinearly to (H0, W0), thresholded, scored with src.metrics."""
    from src.metrics import dice_score, iou_score

    pred = probabilities_to_mask(resize_maps(probabilities.float(), truth.shape[-2:]), 1, threshold).numpy()
    return {"dice": dice_score(pred, truth), "iou": iou_score(pred, truth)}


def summarize(per_image: list) -> dict:
    dice = np.array([s["dice"] for s in per_image])
    iou = np.array([s["iou"] for s in per_image])
    return {"dice": float(dice.mean()), "dice_std": float(dice.std()), "iou": float(iou.mean()),
            "iou_std": float(iou.std()), "images": len(per_image)}


class UncertaintyErrorStats:
    """Pooled over pixels at the original resolution: Pearson r between the ensemble std and the
    error indicator (prediction != truth), and the AUROC of the std as a detector of error pixels
    (from 2,000-bin histograms of the std, which lies in [0, 0.5])."""

    BINS = 2000

    def __init__(self):
        self.n = 0
        self.sums = np.zeros(5)  # u, e, u*u, e*e (= e), u*e
        self.hist_error = np.zeros(self.BINS)
        self.hist_correct = np.zeros(self.BINS)

    def add(self, uncertainty: torch.Tensor, probabilities: torch.Tensor, truth: np.ndarray, threshold: float = 0.5) -> None:
        """uncertainty (h, w), probabilities (1, h, w) at model resolution; truth (H0, W0)."""
        size = truth.shape[-2:]
        u = resize_maps(uncertainty[None].float(), size)[0].numpy().ravel()
        p = resize_maps(probabilities.float(), size)[0].numpy().ravel()
        e = ((p > threshold) != (truth.ravel() != 0)).astype(np.float64)
        u = u.astype(np.float64)
        self.n += u.size
        self.sums += [u.sum(), e.sum(), (u * u).sum(), e.sum(), (u * e).sum()]
        bins = np.clip((u / 0.5 * self.BINS).astype(np.int64), 0, self.BINS - 1)
        self.hist_error += np.bincount(bins[e > 0], minlength=self.BINS)
        self.hist_correct += np.bincount(bins[e == 0], minlength=self.BINS)

    def result(self) -> dict:
        n, (su, se, suu, see, sue) = self.n, self.sums
        cov = sue / n - (su / n) * (se / n)
        var_u, var_e = suu / n - (su / n) ** 2, see / n - (se / n) ** 2
        pearson = cov / math.sqrt(var_u * var_e) if var_u > 0 and var_e > 0 else float("nan")
        # AUROC = P(u_error > u_correct) + 0.5 P(equal), from the two histograms
        errors, corrects = self.hist_error.sum(), self.hist_correct.sum()
        below = np.cumsum(self.hist_correct) - self.hist_correct  # correct pixels in lower bins
        auroc = float((self.hist_error * (below + 0.5 * self.hist_correct)).sum() / (errors * corrects)) if errors and corrects else float("nan")
        mean_u_error = float((self.hist_error * (np.arange(self.BINS) + 0.5)).sum() / max(errors, 1) * 0.5 / self.BINS)
        mean_u_correct = float((self.hist_correct * (np.arange(self.BINS) + 0.5)).sum() / max(corrects, 1) * 0.5 / self.BINS)
        return {"pearson_r": float(pearson), "auroc": auroc, "error_pixel_share": float(se / n),
                "mean_std_on_errors": mean_u_error, "mean_std_on_correct": mean_u_correct, "pixels": int(n)}
