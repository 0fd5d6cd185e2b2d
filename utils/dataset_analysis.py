"""Per-pair inspection and dataset statistics for ``prepare_data.py --action analyze``.

``inspect_pair`` decodes one pair and reports its sizes, mask statistics and problems;
``analyze_dataset`` aggregates them into counts, size/aspect statistics, foreground
fractions, a class histogram, issues and recommendations, and writes
``analysis.json``, ``analysis.md`` and ``analysis.png``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.dataset_checks import check_pair_header
from utils.errors import ISSUE_KINDS, DatasetError, Issue, display_path
from utils.image_io import (
    JPEG_EXTENSIONS,
    ClassIds,
    class_id_hint,
    displayed_size,
    load_image,
    looks_like_class_ids,
    mask_to_labels,
    open_image,
    read_mask_values,
    values_are_binary,
    void_label,
)
from utils.pairing import find_pairs, list_image_files

IMAGE_SIZE_CHOICES = (64, 128, 256, 512)
MAX_LEVELS = 256  # more distinct values than this is a grey or photo-like mask, never class ids


@dataclass
class PairReport:
    """What one image/mask pair holds. Sizes are (width, height)."""

    image_path: Path
    mask_path: Path
    image_size: tuple[int, int] | None = None
    image_mode: str | None = None
    mask_size: tuple[int, int] | None = None
    mask_mode: str | None = None
    foreground_fraction: float | None = None
    class_counts: list[int] = field(default_factory=list)  # pixels per class id (ignored pixels not counted)
    ignored_fraction: float | None = None  # share of pixels equal to ignore_index
    levels: list | None = None  # distinct raw mask values, when there are at most MAX_LEVELS
    value_max: float | None = None  # the top of the mask file's value range (255, 65535, ...)
    is_colour: bool = False
    issues: list[Issue] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not any(issue.fatal for issue in self.issues)


def inspect_pair(
    image_path: Path,
    mask_path: Path,
    num_classes: int = 1,
    mask_threshold: float = 0.5,
    decode_image: bool = True,
    ignore_index: int | None = None,
) -> PairReport:
    """Read one pair (the image fully only when ``decode_image``) and collect its issues.
    Pixels equal to ``ignore_index`` are counted apart (``ignored_fraction``), not as a class."""
    report = PairReport(image_path, mask_path, issues=check_pair_header(image_path, mask_path))
    try:
        with open_image(image_path) as img:
            report.image_size, report.image_mode = displayed_size(img), img.mode
        with open_image(mask_path) as img:
            report.mask_size, report.mask_mode = displayed_size(img), img.mode
        if decode_image:
            load_image(image_path)
        values, value_max, is_colour = read_mask_values(mask_path)
        labels = mask_to_labels(values, value_max, mask_path, num_classes, mask_threshold, is_colour, ignore_index)
    except DatasetError as error:
        report.issues += [issue for issue in error.issues if issue not in report.issues]
        return report

    levels = np.unique(values)
    report.levels = levels.tolist() if levels.size <= MAX_LEVELS else None
    report.value_max, report.is_colour = value_max, is_colour
    counted = labels.ravel()
    if ignore_index is not None:
        counted = counted[counted != void_label(labels.dtype)]
        report.ignored_fraction = 1 - counted.size / labels.size
        values = values[values != ignore_index]
    report.class_counts = np.bincount(counted, minlength=max(num_classes, 2)).tolist()
    report.foreground_fraction = float((counted > 0).mean()) if counted.size else 0.0
    name = display_path(mask_path)
    if not counted.any():
        report.issues.append(Issue("empty_mask", f"{name}: mask is all background", (mask_path,), fatal=False))
    if num_classes == 1 and (is_colour or not values_are_binary(values, value_max)):
        levels = len(np.unique(values))
        report.issues.append(
            Issue(
                "grey_mask",
                f"{name}: {levels} grey levels{' (colour)' if is_colour else ''}; "
                f"thresholded at {mask_threshold:g} of {value_max:g}",
                (mask_path,),
                fatal=False,
            )
        )
    if mask_path.suffix.lower() in JPEG_EXTENSIONS:
        report.issues.append(
            Issue(
                "lossy_mask",
                f"{name}: JPEG mask; lossless PNG keeps edges and class ids exact",
                (mask_path,),
                fatal=False,
            )
        )
    return report


def class_id_masks(reports: list[PairReport], ignore_index: int | None = None) -> ClassIds | None:
    """ClassIds when the masks together look like class ids 0..K-1 rather than binary masks (see
    ``utils.image_io.looks_like_class_ids``, which train.py uses too), else None."""
    decoded = [r for r in reports if r.value_max is not None]
    if not decoded or any(r.levels is None or r.is_colour for r in decoded):
        return None
    levels = set().union(*(r.levels for r in decoded))
    return (
        looks_like_class_ids(levels, max(r.value_max for r in decoded), ignore_index)
        if len(levels) <= MAX_LEVELS
        else None
    )


def drop_binary_mask_issues(reports: list[PairReport]) -> None:
    """Class-id masks are neither grey nor empty binary masks: no such warnings, nothing for
    --fix-issues to binarise."""
    for report in reports:
        report.issues = [issue for issue in report.issues if issue.kind not in ("grey_mask", "empty_mask")]


def _stats(values: list[float]) -> dict:
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    return {
        "min": float(array.min()),
        "max": float(array.max()),
        "mean": float(array.mean()),
        "median": float(np.median(array)),
    }


def recommendations(summary: dict) -> list[str]:
    """Advice from the statistics, following the README's dataset recommendations."""
    advice = []
    if summary.get("class_id_masks"):
        advice.append(class_id_hint(ClassIds(**summary["class_id_masks"])))
    num_pairs = summary["counts"]["pairs"]
    if num_pairs == 0:
        advice.append("no image/mask pairs: check --image-dir and --mask-dir (see Issues)")
    elif num_pairs < 100:
        advice.append(
            f"{num_pairs} pairs is a small dataset: use augmentation_mode 'light', more epochs, "
            "and consider mixing in synthetic data"
        )
    elif num_pairs <= 1000:
        advice.append(f"{num_pairs} pairs: use augmentation_mode 'medium' and a validation split (val_split=0.2)")
    else:
        advice.append(f"{num_pairs} pairs: 'heavy' augmentation and larger image sizes are affordable")
    short_sides = summary.get("short_side", {})
    if short_sides:
        fitting = [size for size in IMAGE_SIZE_CHOICES if size <= short_sides["median"]] or [IMAGE_SIZE_CHOICES[0]]
        advice.append(
            f"median short side is {short_sides['median']:.0f} px: image_size {fitting[-1]} keeps "
            "detail without upsampling (smaller is faster)"
        )
    aspect = summary.get("aspect_ratio", {})
    if aspect and aspect["max"] / max(aspect["min"], 1e-9) > 1.5:
        advice.append(
            f"aspect ratios range {aspect['min']:.2f}-{aspect['max']:.2f}: images are stretched to "
            "image_size; train with --resize pad to keep their shape"
        )
    if summary["distinct_sizes"] > 1:
        advice.append(f"{summary['distinct_sizes']} distinct image sizes: all are resized to image_size")
    foreground = summary.get("foreground_fraction", {})
    if foreground and foreground["mean"] < 0.05:
        advice.append(f"objects are small (mean foreground {foreground['mean']:.1%}): prefer a larger image_size")
    kinds = summary["issue_counts"]
    if kinds.get("grey_mask"):
        advice.append(
            f"{kinds['grey_mask']} masks are not strictly binary (JPEG or anti-aliased): they are "
            "thresholded at mask_threshold; `--action validate --fix-issues` saves binary PNGs"
        )
    if any(kind not in ("grey_mask", "empty_mask") for kind in kinds):
        advice.append("run `--action validate` to list every problem (and `--fix-issues` for the safe ones)")
    return advice


def class_histogram(reports: list, num_classes: int) -> dict:
    """{class id: {"pixel_fraction", "images"}} over the masks of `reports` (background is class 0)."""
    class_pixels = np.zeros(max(num_classes, 2), dtype=np.int64)
    class_images = np.zeros_like(class_pixels)
    for report in reports:
        counts = np.asarray(report.class_counts[: len(class_pixels)])
        class_pixels[: len(counts)] += counts
        class_images[: len(counts)] += counts > 0
    return {
        str(c): {"pixel_fraction": float(class_pixels[c] / max(class_pixels.sum(), 1)), "images": int(class_images[c])}
        for c in range(len(class_pixels))
    }


def analyze_dataset(
    image_dir: str | Path,
    mask_dir: str | Path,
    output_dir: str | Path | None = None,
    num_classes: int = 1,
    mask_threshold: float = 0.5,
    ignore_index: int | None = None,
) -> dict:
    """Statistics of a dataset; writes analysis.{json,md,png} under ``output_dir`` when given.

    Images are read from their headers only (fast); masks are decoded for their statistics.
    With num_classes 1, masks that look like class ids are reported as such (``class_id_masks``).
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    pairing = find_pairs(image_dir, mask_dir)
    reports = [
        inspect_pair(image, mask, num_classes, mask_threshold, decode_image=False, ignore_index=ignore_index)
        for image, mask in tqdm(pairing.pairs, desc="Analyzing", disable=None)
    ]
    class_ids = class_id_masks(reports, ignore_index) if num_classes == 1 else None
    if class_ids:
        drop_binary_mask_issues(reports)
    issues = pairing.issues + [issue for report in reports for issue in report.issues]
    sized = [report for report in reports if report.image_size]
    masked = [report for report in reports if report.foreground_fraction is not None]
    summary = {
        "image_dir": str(image_dir),
        "mask_dir": str(mask_dir),
        "counts": {
            "images": len(list_image_files(image_dir)),
            "masks": len(list_image_files(mask_dir)),
            "pairs": len(pairing.pairs),
            "usable_pairs": sum(report.usable for report in reports),
        },
        "width": _stats([r.image_size[0] for r in sized]),
        "height": _stats([r.image_size[1] for r in sized]),
        "short_side": _stats([min(r.image_size) for r in sized]),
        "aspect_ratio": _stats([r.image_size[0] / r.image_size[1] for r in sized]),
        "distinct_sizes": len({r.image_size for r in sized}),
        "common_sizes": [[f"{w}x{h}", n] for (w, h), n in Counter(r.image_size for r in sized).most_common(5)],
        "formats": dict(Counter(r.image_path.suffix.lower() for r in reports)),
        "image_modes": dict(Counter(r.image_mode for r in sized)),
        "mask_modes": dict(Counter(r.mask_mode for r in sized)),
        "class_id_masks": class_ids._asdict() if class_ids else None,
        "ignore_index": ignore_index,
        "ignored_fraction": _stats([r.ignored_fraction for r in masked if r.ignored_fraction is not None]),
        "foreground_fraction": _stats([r.foreground_fraction for r in masked]),
        "class_histogram": class_histogram(masked, num_classes),
        "issue_counts": dict(Counter(issue.kind for issue in issues)),
        "issues": [issue.message for issue in issues],
    }
    summary["recommendations"] = recommendations(summary)
    if output_dir is not None:
        write_analysis(summary, reports, Path(output_dir))
    return summary


def format_summary(summary: dict) -> str:
    """The analysis as Markdown (also printed to the terminal)."""
    counts = summary["counts"]
    lines = [
        "# Dataset analysis",
        "",
        f"- images: {summary['image_dir']}",
        f"- masks: {summary['mask_dir']}",
        "",
        "## Counts",
        "",
        f"{counts['images']} images, {counts['masks']} masks, {counts['pairs']} pairs, {counts['usable_pairs']} usable",
        "",
    ]
    if summary.get("class_id_masks"):
        lines[2:2] = [f"**Note:** {class_id_hint(ClassIds(**summary['class_id_masks']))}", ""]
    if summary["width"]:
        lines += _size_section(summary)
    if summary["foreground_fraction"]:
        lines += _mask_section(summary)
    lines += ["## Issues", ""]
    lines += [f"- {kind}: {n} ({ISSUE_KINDS.get(kind, '')})" for kind, n in summary["issue_counts"].items()]
    lines += ["- none"] if not summary["issue_counts"] else []
    lines += ["", "## Recommendations", "", *(f"- {advice}" for advice in summary["recommendations"]), ""]
    return "\n".join(lines)


def _size_section(summary: dict) -> list:
    """Markdown lines: image width, height and aspect ratio, sizes, formats and modes."""
    width, height, aspect = summary["width"], summary["height"], summary["aspect_ratio"]
    common = ", ".join(f"{size} ({n})" for size, n in summary["common_sizes"])
    return [
        "## Image sizes",
        "",
        "| | min | median | mean | max |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {s['min']:.4g} | {s['median']:.4g} | {s['mean']:.4g} | {s['max']:.4g} |"
            for name, s in (("width", width), ("height", height), ("aspect (w/h)", aspect))
        ),
        "",
        f"{summary['distinct_sizes']} distinct sizes; most common: {common}",
        f"formats: {summary['formats']}; image modes: {summary['image_modes']}; mask modes: {summary['mask_modes']}",
        "",
    ]


def _mask_section(summary: dict) -> list:
    """Markdown lines: foreground and ignored fractions, class histogram."""
    fg = summary["foreground_fraction"]
    ignored = summary.get("ignored_fraction")
    return [
        "## Masks",
        "",
        f"foreground fraction: min {fg['min']:.3f}, median {fg['median']:.3f}, "
        f"mean {fg['mean']:.3f}, max {fg['max']:.3f}",
        "",
        *(
            [
                f"ignored fraction (value {summary['ignore_index']}): min {ignored['min']:.3f}, "
                f"mean {ignored['mean']:.3f}, max {ignored['max']:.3f}",
                "",
            ]
            if ignored
            else []
        ),
        "| class | pixel fraction | images |",
        "|---|---|---|",
        *(f"| {c} | {h['pixel_fraction']:.4f} | {h['images']} |" for c, h in summary["class_histogram"].items()),
        "",
    ]


def write_analysis(summary: dict, reports: list[PairReport], output_dir: Path) -> None:
    """analysis.json (everything), analysis.md (readable) and analysis.png (plots)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "analysis.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "analysis.md").write_text(format_summary(summary))
    plot_analysis(summary, reports, output_dir / "analysis.png")


def plot_analysis(summary: dict, reports: list[PairReport], path: Path) -> None:
    """Four panels: image sizes, aspect ratios, foreground fractions, class histogram."""
    from matplotlib.figure import Figure  # object API: the user's backend is left alone

    sizes = np.array([r.image_size for r in reports if r.image_size] or np.zeros((0, 2)))
    foreground = [r.foreground_fraction for r in reports if r.foreground_fraction is not None]
    fig = Figure(figsize=(10, 8))
    axes = fig.subplots(2, 2)
    axes[0, 0].scatter(sizes[:, 0], sizes[:, 1], s=8, alpha=0.5)
    axes[0, 0].set(title="Image sizes", xlabel="width (px)", ylabel="height (px)")
    axes[0, 1].hist(sizes[:, 0] / np.maximum(sizes[:, 1], 1), bins=30)
    axes[0, 1].set(title="Aspect ratio (w/h)", xlabel="aspect ratio", ylabel="images")
    axes[1, 0].hist(foreground, bins=30, range=(0, 1))
    axes[1, 0].set(title="Mask foreground fraction", xlabel="fraction of pixels", ylabel="masks")
    classes = list(summary["class_histogram"])
    axes[1, 1].bar(classes, [summary["class_histogram"][c]["pixel_fraction"] for c in classes])
    axes[1, 1].set(title="Class histogram", xlabel="class id", ylabel="fraction of pixels")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
