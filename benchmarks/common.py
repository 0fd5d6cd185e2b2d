"""Shared helpers of the benchmark scripts: the machine, Kvasir-SEG splits, scoring, results files.

Importable from the project venv and from benchmarks/.peer-venv (it needs only torch, numpy and
the project's own src/ package). The scripts run as modules from the repository root
(`python -m benchmarks.kvasir`); a script that starts another one passes module_env(), which
puts the root on PYTHONPATH, so that works from any folder.
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

import numpy as np
import torch

from src.masks import probabilities_to_mask, resize_maps

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINTS = RESULTS / "checkpoints"
PEER_VENV = ROOT / "benchmarks" / ".peer-venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kvasir-seg"
# suffix of a results row (kvasir.evaluate_ours writes it, report.py reads it) whose ensemble
# samples each encode the image with their own dropout draw
MC_DROPOUT = "_mcdropout"


def seed_suffix(seed: int) -> str:
    """The results and checkpoint names' suffix of a seed: none for 42 (the first run of each kind),
    "_seed<N>" else, so seeds of one run can go side by side."""
    return "" if seed == 42 else f"_seed{seed}"


def module_command(python, module: str, *args) -> list:
    """The command line that runs benchmarks.<module> under `python` (with module_env())."""
    return [str(python), "-m", f"benchmarks.{module}", *map(str, args)]


def module_env() -> dict:
    """The environment for module_command: the repository root on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


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
    dataset = SegmentationDataset(
        data_dir / "images", data_dir / "masks", image_size=image_size, augmentations=augmentations, stems=stems
    )
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
    return {
        "dice": float(dice.mean()),
        "dice_std": float(dice.std()),
        "iou": float(iou.mean()),
        "iou_std": float(iou.std()),
        "images": len(per_image),
    }


def paired_bootstrap(a, b, n: int = 10000, seed: int = 0) -> tuple:
    """(mean of a - b, 2.5 % percentile, 97.5 % percentile) of the paired difference over the same
    images: `n` resamples of the images with replacement (seeded), the mean difference of each."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not a.size:
        raise ValueError(f"paired_bootstrap needs two equal-length 1-D sequences, got {a.shape} and {b.shape}")
    diff = a - b
    means = np.empty(n)
    rng = np.random.default_rng(seed)
    for start in range(0, n, 1000):  # in chunks: 1000 x images indices at a time
        size = min(1000, n - start)
        means[start : start + size] = diff[rng.integers(0, diff.size, size=(size, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


class UncertaintyErrorStats:
    """Pooled over pixels at the original resolution: Pearson r between an uncertainty map and the
    error indicator (prediction != truth), and the AUROC of the uncertainty as a detector of error
    pixels (from 2,000-bin histograms of the uncertainty over [0, upper]).

    `upper` is the largest value the uncertainty can take: 0.5 for the ensemble std of
    probabilities (the default), 0.25 for p(1-p) (`PQ_UPPER`, see add_pq)."""

    BINS = 2000
    PQ_UPPER = 0.25

    def __init__(self, upper: float = 0.5):
        self.upper = float(upper)
        self.n = 0
        self.sums = np.zeros(5)  # u, e, u*u, e*e (= e), u*e
        self.hist_error = np.zeros(self.BINS)
        self.hist_correct = np.zeros(self.BINS)

    def add(
        self, uncertainty: torch.Tensor, probabilities: torch.Tensor, truth: np.ndarray, threshold: float = 0.5
    ) -> None:
        """uncertainty (h, w), probabilities (1, h, w) at model resolution; truth (H0, W0).
        Both maps are upsampled bilinearly to (H0, W0), as score_probabilities does."""
        size = truth.shape[-2:]
        u = resize_maps(uncertainty[None].float(), size)[0].numpy().ravel()
        p = resize_maps(probabilities.float(), size)[0].numpy().ravel()
        self._accumulate(u, p, truth, threshold)

    def add_pq(self, probabilities: torch.Tensor, truth: np.ndarray, threshold: float = 0.5) -> None:
        """The uncertainty p(1-p) of the foreground probability itself: probabilities (1, h, w) at
        model resolution are upsampled to truth's (H0, W0) first, and p(1-p) taken per original
        pixel, so the uncertainty peaks exactly on the threshold that decides the error pixels.
        Make the stats with upper=UncertaintyErrorStats.PQ_UPPER."""
        p = resize_maps(probabilities.float(), truth.shape[-2:])[0].numpy().ravel().astype(np.float64)
        self._accumulate(p * (1 - p), p, truth, threshold)

    def _accumulate(self, u: np.ndarray, p: np.ndarray, truth: np.ndarray, threshold: float) -> None:
        e = ((p > threshold) != (truth.ravel() != 0)).astype(np.float64)
        u = u.astype(np.float64)
        self.n += u.size
        self.sums += [u.sum(), e.sum(), (u * u).sum(), e.sum(), (u * e).sum()]
        bins = np.clip((u / self.upper * self.BINS).astype(np.int64), 0, self.BINS - 1)
        self.hist_error += np.bincount(bins[e > 0], minlength=self.BINS)
        self.hist_correct += np.bincount(bins[e == 0], minlength=self.BINS)

    def result(self) -> dict:
        """The mean uncertainty keys keep the name "..._std_..." whatever the uncertainty is."""
        n, (su, se, suu, see, sue) = self.n, self.sums
        cov = sue / n - (su / n) * (se / n)
        var_u, var_e = suu / n - (su / n) ** 2, see / n - (se / n) ** 2
        pearson = cov / math.sqrt(var_u * var_e) if var_u > 0 and var_e > 0 else float("nan")
        # AUROC = P(u_error > u_correct) + 0.5 P(equal), from the two histograms
        errors, corrects = self.hist_error.sum(), self.hist_correct.sum()
        below = np.cumsum(self.hist_correct) - self.hist_correct  # correct pixels in lower bins
        auroc = (
            float((self.hist_error * (below + 0.5 * self.hist_correct)).sum() / (errors * corrects))
            if errors and corrects
            else float("nan")
        )
        mean_u_error = float(
            (self.hist_error * (np.arange(self.BINS) + 0.5)).sum() / max(errors, 1) * self.upper / self.BINS
        )
        mean_u_correct = float(
            (self.hist_correct * (np.arange(self.BINS) + 0.5)).sum() / max(corrects, 1) * self.upper / self.BINS
        )
        return {
            "pearson_r": float(pearson),
            "auroc": auroc,
            "error_pixel_share": float(se / n),
            "mean_std_on_errors": mean_u_error,
            "mean_std_on_correct": mean_u_correct,
            "pixels": int(n),
            "upper": self.upper,
        }


class CalibrationStats:
    """Calibration of a foreground probability, pooled over pixels at the original resolution
    (probabilities upsampled bilinearly as score_probabilities does): BINS equal-width bins of p
    over [0, 1] (p = 1 falls in the last); per bin the pixel count, the mean confidence (mean p)
    and the observed foreground frequency. result() gives the expected calibration error
    ECE = sum_b n_b / N |freq_b - conf_b|, the Brier score, and the per-bin arrays (a reliability
    diagram; empty bins hold None)."""

    BINS = 15

    def __init__(self, bins: int = BINS):
        self.bins = int(bins)
        self.count = np.zeros(self.bins)
        self.sum_p = np.zeros(self.bins)
        self.sum_y = np.zeros(self.bins)
        self.sum_sq = 0.0  # sum (p - y)^2, for the Brier score

    def add(self, probabilities: torch.Tensor, truth: np.ndarray) -> None:
        """probabilities (1, h, w) at model resolution; truth (H0, W0) 0/1."""
        p = resize_maps(probabilities.float(), truth.shape[-2:])[0].numpy().ravel().astype(np.float64)
        y = (truth.ravel() != 0).astype(np.float64)
        self.add_pixels(p, y)

    def add_pixels(self, p: np.ndarray, y: np.ndarray) -> None:
        """Flat arrays of probabilities and 0/1 truths, already at the scoring resolution."""
        p = np.clip(np.asarray(p, dtype=np.float64).ravel(), 0.0, 1.0)
        y = np.asarray(y, dtype=np.float64).ravel()
        index = np.minimum((p * self.bins).astype(np.int64), self.bins - 1)
        self.count += np.bincount(index, minlength=self.bins)
        self.sum_p += np.bincount(index, weights=p, minlength=self.bins)
        self.sum_y += np.bincount(index, weights=y, minlength=self.bins)
        self.sum_sq += float(((p - y) ** 2).sum())

    def result(self) -> dict:
        n = self.count.sum()
        filled = self.count > 0
        conf = np.divide(self.sum_p, self.count, out=np.zeros(self.bins), where=filled)
        freq = np.divide(self.sum_y, self.count, out=np.zeros(self.bins), where=filled)
        ece = float((self.count * np.abs(freq - conf)).sum() / n) if n else float("nan")
        return {
            "ece": ece,
            "brier": self.sum_sq / n if n else float("nan"),
            "bins": self.bins,
            "pixels": int(n),
            "bin_edges": np.linspace(0, 1, self.bins + 1).tolist(),
            "count": self.count.astype(np.int64).tolist(),
            "confidence": [float(c) if f else None for c, f in zip(conf, filled)],
            "frequency": [float(v) if f else None for v, f in zip(freq, filled)],
        }


# ---------------------------------------------------------------------------------------------
# Pooled statistics from per-image counts, and their image bootstrap (uncertainty_ablation.py)
# ---------------------------------------------------------------------------------------------


def auroc_from_histograms(hist_error, hist_correct) -> np.ndarray:
    """AUROC = P(u_error > u_correct) + 0.5 P(same bin) from histograms of an uncertainty over the
    SAME increasing bins (last axis); any leading axes are kept (e.g. bootstrap resamples). The
    formula of UncertaintyErrorStats.result, vectorised. NaN where either class is empty."""
    hist_error, hist_correct = np.asarray(hist_error, dtype=np.float64), np.asarray(hist_correct, dtype=np.float64)
    below = np.cumsum(hist_correct, axis=-1) - hist_correct  # correct pixels in strictly lower bins
    pairs = hist_error.sum(axis=-1) * hist_correct.sum(axis=-1)
    above = (hist_error * (below + 0.5 * hist_correct)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, above / np.where(pairs > 0, pairs, 1), np.nan)


def ece_from_bins(count, sum_p, sum_y) -> np.ndarray:
    """ECE = sum_b n_b / N |freq_b - conf_b| = sum_b |sum_y_b - sum_p_b| / N, from CalibrationStats'
    per-bin arrays (last axis; leading axes kept)."""
    count, sum_p, sum_y = (np.asarray(a, dtype=np.float64) for a in (count, sum_p, sum_y))
    n = count.sum(axis=-1)
    return np.abs(sum_y - sum_p).sum(axis=-1) / np.where(n > 0, n, np.nan)


def pooled_ece(per_image_bins) -> float:
    """ECE of the pixels of all images together, from per-image (count, sum_p, sum_y) bins
    (shape (images, 3, bins): one CalibrationStats per image)."""
    count, sum_p, sum_y = np.asarray(per_image_bins, dtype=np.float64).sum(axis=0)
    return float(ece_from_bins(count, sum_p, sum_y))


class QuantileErrorStats:
    """AUROC of an uncertainty score as a detector of error pixels, from per-image histograms over
    bins whose edges are quantiles of the score (`edges`, e.g. from a sample of it at model
    resolution). UncertaintyErrorStats bins [0, upper] evenly, which puts nearly all pixels of a
    score concentrated near 0 (an ensemble std of samples that barely differ, a variance) into a
    few bins, where error and correct pixels tie; quantile bins hold about equally many pixels each,
    so the AUROC is that of the ranking itself (ties only inside a bin of ~1/bins of the pixels).
    Per-image histograms are kept for the image bootstrap (pooled_bootstrap)."""

    def __init__(self, edges):
        edges = np.unique(np.asarray(edges, dtype=np.float64))
        self.edges = edges[1:-1]  # inner edges: searchsorted puts values below/above them in the end bins
        self.bins = self.edges.size + 1
        self.hist_error, self.hist_correct = [], []

    @classmethod
    def from_sample(cls, sample, bins: int = 4096) -> "QuantileErrorStats":
        return cls(np.quantile(np.asarray(sample, dtype=np.float64).ravel(), np.linspace(0, 1, bins + 1)))

    def bin_of(self, u) -> np.ndarray:
        return np.searchsorted(self.edges, np.asarray(u, dtype=np.float64).ravel(), side="right")

    def add(self, u, error) -> None:
        """One image: flat scores and 0/1 (bool) error indicators of the same pixels."""
        index, error = self.bin_of(u), np.asarray(error).ravel().astype(bool)
        self.hist_error.append(np.bincount(index[error], minlength=self.bins))
        self.hist_correct.append(np.bincount(index[~error], minlength=self.bins))

    def per_image(self) -> tuple:
        """(images, bins) arrays of error and correct pixel counts."""
        return np.array(self.hist_error, dtype=np.float64), np.array(self.hist_correct, dtype=np.float64)

    def auroc(self) -> float:
        errors, corrects = self.per_image()
        return float(auroc_from_histograms(errors.sum(axis=0), corrects.sum(axis=0)))


def pooled_bootstrap(statistic, per_image: list, n: int = 2000, seed: int = 0, chunk: int = 200) -> tuple:
    """(statistic on all images, 2.5 %, 97.5 % percentile) of a statistic of POOLED per-image
    counts (a pooled AUROC or ECE, or a difference of two models' on the same images, which makes
    it paired), over `n` seeded resamples of the images with replacement.

    per_image: arrays whose first axis is the image; statistic(*sums) gets each array summed over
    the (resampled) images, with one leading resample axis, and returns one value per resample."""
    arrays = [np.asarray(a, dtype=np.float64) for a in per_image]
    images = arrays[0].shape[0]
    if not images or any(a.shape[0] != images for a in arrays):
        raise ValueError("pooled_bootstrap needs arrays with the same number of images (first axis)")
    flat = [a.reshape(images, -1) for a in arrays]
    point = float(np.asarray(statistic(*[a.sum(axis=0)[None].reshape(1, *a.shape[1:]) for a in arrays]))[0])
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        weights = rng.multinomial(images, np.full(images, 1 / images), size=size).astype(np.float64)  # (size, images)
        sums = [(weights @ f).reshape(size, *a.shape[1:]) for f, a in zip(flat, arrays)]
        values.append(np.asarray(statistic(*sums), dtype=np.float64))
    low, high = np.nanpercentile(np.concatenate(values), [2.5, 97.5])
    return point, float(low), float(high)
