"""The actions of ``prepare_data.py``: analyze, validate (+ --fix-issues), organize, create-sample.

Each action is a plain function that prints what it did and returns its result;
``run_action`` dispatches to them and turns the result into an exit status.
Originals are never changed without a byte-identical backup, and ``organize`` copies.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.dataset_analysis import (
    PairReport,
    analyze_dataset,
    class_id_masks,
    drop_binary_mask_issues,
    format_summary,
    inspect_pair,
)
from utils.errors import ISSUE_KINDS, DatasetError, Issue, display_path
from utils.image_io import as_size, class_id_hint, load_labels, void_label
from utils.pairing import find_pairs, split_pairs
from utils.resize import resize_labels
from utils.synthetic import write_synthetic_dataset

FIXABLE_KINDS = ("size_mismatch", "grey_mask", "lossy_mask")
MAX_LISTED_PER_KIND = 10

# ---- validate -----------------------------------------------------------------------------


@dataclass
class ValidationResult:
    num_pairs: int
    issues: list[Issue]  # what is still wrong (after fixes)
    fixed: list[tuple[Path, Path]] = field(default_factory=list)  # (original, backup)
    backup_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not any(issue.fatal for issue in self.issues)


def find_duplicate_images(paths: list[Path]) -> list[Issue]:
    """One warning per group of byte-identical files (they could leak from train into val)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        try:
            groups[hashlib.sha1(path.read_bytes()).hexdigest()].append(path)
        except OSError:  # a broken link or unreadable file: already reported as unreadable
            continue
    return [
        Issue(
            "duplicate_image",
            f"{', '.join(display_path(p) for p in group)}: identical files (may leak between train and val)",
            tuple(group),
            fatal=False,
        )
        for group in groups.values()
        if len(group) > 1
    ]


def backup_file(path: Path, backup_dir: Path) -> Path:
    """Copy ``path`` into ``backup_dir`` (never over an earlier backup) and check the copy."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    target, n = backup_dir / path.name, 1
    while target.exists():
        target, n = backup_dir / f"{path.stem}.{n}{path.suffix}", n + 1
    shutil.copy2(path, target)
    if not filecmp.cmp(path, target, shallow=False):
        raise OSError(f"backup {target} differs from {path}: nothing changed")
    return target


def fix_mask(
    report: PairReport,
    backup_dir: Path,
    num_classes: int = 1,
    mask_threshold: float = 0.5,
    ignore_index: int | None = None,
) -> tuple[Path, Path]:
    """Rewrite a mask as a lossless 8-bit PNG at its image's size, after backing it up.

    Binary masks become 0/255 (thresholded like the loader does), class-id masks keep their
    ids; both are resized to the image by nearest neighbour. A mask that was not a PNG is
    replaced by ``<stem>.png`` (the original lives on in the backup). Ignored pixels keep the
    value ``ignore_index``. Returns (new, backup).
    """
    mask_path = report.mask_path
    labels = load_labels(mask_path, num_classes, mask_threshold, ignore_index=ignore_index)
    width, height = report.image_size
    labels = resize_labels(labels, (height, width))
    target = mask_path.with_suffix(".png")
    if target != mask_path and target.exists():
        raise DatasetError(f"{display_path(target)} exists: cannot convert {display_path(mask_path)} to PNG")
    backup = backup_file(mask_path, backup_dir)
    void = labels == void_label(labels.dtype) if ignore_index is not None else None
    pixels = labels * 255 if num_classes == 1 else labels.copy()
    if void is not None:
        pixels[void] = ignore_index
    write_png_atomically(Image.fromarray(pixels.astype(np.uint8)), target)
    if target != mask_path:
        mask_path.unlink()
    return target, backup


def write_png_atomically(image: Image.Image, target: Path) -> None:
    """Save to a temp file beside ``target``, then rename over it.

    A crash or a full disk leaves the old file whole. A symbolic link at ``target`` is replaced
    by the new file, so the file it points to (perhaps another copy of the dataset) is never changed.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _fixable(report: PairReport, num_classes: int) -> bool:
    """Something to fix, and nothing else wrong: both files decode, the mask holds valid class ids."""
    kinds = {issue.kind for issue in report.issues}
    other_errors = any(issue.fatal and issue.kind not in FIXABLE_KINDS for issue in report.issues)
    decoded = report.foreground_fraction is not None
    return bool(kinds & set(FIXABLE_KINDS)) and decoded and not other_errors and num_classes <= 256


def validate_dataset(
    image_dir: str | Path,
    mask_dir: str | Path,
    fix_issues: bool = False,
    output_dir: str | Path | None = None,
    num_classes: int = 1,
    mask_threshold: float = 0.5,
    ignore_index: int | None = None,
) -> ValidationResult:
    """Decode every pair and list every problem; with ``fix_issues`` repair masks that can be
    repaired safely (size mismatch, grey or colour values, JPEG format), backing each
    original up first to ``<output_dir>/backup`` or ``<mask_dir>_backup`` next to mask_dir.
    Masks that look like class ids (while num_classes is 1) are said to, and never binarised:
    they are repaired as class ids. Writes ``validation.json`` under ``output_dir`` when given.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    pairing = find_pairs(image_dir, mask_dir)
    reports = [
        inspect_pair(image, mask, num_classes, mask_threshold, ignore_index=ignore_index)
        for image, mask in tqdm(pairing.pairs, desc="Validating", disable=None)
    ]
    result = ValidationResult(len(pairing.pairs), [])
    class_ids = class_id_masks(reports, ignore_index) if num_classes == 1 else None
    if class_ids:
        print(f"note: {class_id_hint(class_ids)}")
        drop_binary_mask_issues(reports)
        num_classes = class_ids.count  # --fix-issues keeps the ids (resize, PNG) instead of binarising them
        ignore_index = class_ids.unlabelled if ignore_index is None else ignore_index  # and the 255s as they are

    if fix_issues:
        result.backup_dir = Path(output_dir) / "backup" if output_dir else mask_dir.parent / f"{mask_dir.name}_backup"
        _fix_masks(reports, result, num_classes, mask_threshold, ignore_index)

    result.issues = (
        pairing.issues
        + [issue for report in reports for issue in report.issues]
        + find_duplicate_images([image for image, _ in pairing.pairs])
    )
    print(format_validation(result, image_dir, mask_dir))
    if output_dir is not None:
        _write_validation_json(result, Path(output_dir))
    return result


def _fix_masks(reports, result: ValidationResult, num_classes: int, mask_threshold: float, ignore_index) -> None:
    """Repair every fixable mask (original backed up to result.backup_dir first); a mask that
    cannot be fixed keeps its issues, plus one saying why."""
    for report in reports:
        if not _fixable(report, num_classes):
            continue
        try:
            result.fixed.append(fix_mask(report, result.backup_dir, num_classes, mask_threshold, ignore_index))
        except DatasetError as error:  # e.g. the PNG name is taken: report it, fix the rest
            report.issues += error.issues
            continue
        except OSError as error:  # backup or write failed (disk full, read-only): the mask is unchanged
            report.issues.append(
                Issue(
                    "fix_failed",
                    f"{display_path(report.mask_path)}: not fixed, left unchanged: "
                    f"{error.strerror or error}{f' ({error.filename})' if error.filename else ''}",
                    (report.mask_path,),
                )
            )
            continue
        report.issues = [issue for issue in report.issues if issue.kind not in FIXABLE_KINDS]


def _write_validation_json(result: ValidationResult, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    issues = [
        {"kind": i.kind, "fatal": i.fatal, "message": i.message, "paths": [str(p) for p in i.paths]}
        for i in result.issues
    ]
    fixed = [{"file": str(new), "backup": str(backup)} for new, backup in result.fixed]
    summary = {"pairs": result.num_pairs, "ok": result.ok, "issues": issues, "fixed": fixed}
    (output_dir / "validation.json").write_text(json.dumps(summary, indent=2))


def format_validation(result: ValidationResult, image_dir: Path, mask_dir: Path) -> str:
    """Issues grouped by kind, errors first, at most 10 listed per kind."""
    errors = sum(issue.fatal for issue in result.issues)
    lines = [
        f"Validated {result.num_pairs} pairs in {image_dir} and {mask_dir}: "
        f"{errors} error(s), {len(result.issues) - errors} warning(s)"
    ]
    by_kind: dict[str, list[Issue]] = defaultdict(list)
    for issue in sorted(result.issues, key=lambda issue: not issue.fatal):
        by_kind[issue.kind].append(issue)
    for kind, issues in by_kind.items():
        label = "ERROR" if issues[0].fatal else "warning"
        lines.append(f"{label} {kind} ({len(issues)}): {ISSUE_KINDS.get(kind, '')}")
        lines += [f"    {issue.message}" for issue in issues[:MAX_LISTED_PER_KIND]]
        if len(issues) > MAX_LISTED_PER_KIND:
            more = len(issues) - MAX_LISTED_PER_KIND
            lines.append(f"    ... and {more} more (all in validation.json with --output-dir)")
    if result.fixed:
        lines.append(f"Fixed {len(result.fixed)} mask(s); originals backed up in {result.backup_dir}")
        lines += [
            f"    {display_path(new)} (backup {display_path(backup)})"
            for new, backup in result.fixed[:MAX_LISTED_PER_KIND]
        ]
    elif any(issue.kind in FIXABLE_KINDS for issue in result.issues):
        lines.append(
            "Run again with --fix-issues to repair the masks listed as "
            + ", ".join(k for k in FIXABLE_KINDS if k in by_kind)
            + " (originals are backed up)"
        )
    if not result.issues:
        lines.append("OK: no problems found")
    return "\n".join(lines)


# ---- organize -----------------------------------------------------------------------------


def organize_dataset(source_dir: str | Path, output_dir: str | Path, train_split: float = 0.8, seed: int = 42) -> dict:
    """Copy paired files into ``output_dir/{train,val}/{images,masks}`` with a seeded split.

    source_dir holds ``images/`` + ``masks/``, or images and ``<stem>_mask``/``<stem>_gt``
    masks side by side. Masks are renamed to their image's stem (``photo_mask.png`` ->
    ``photo.png``); unpaired files are reported and left out. Nothing in source_dir changes.
    """
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    if not 0.0 < train_split < 1.0:
        raise ValueError(f"--train-split must be in (0, 1), got {train_split}")
    layout = (source_dir / "images", source_dir / "masks")
    image_dir, mask_dir = layout if all(folder.is_dir() for folder in layout) else (source_dir, source_dir)
    pairing = find_pairs(image_dir, mask_dir)
    copyable = []
    for image, mask in pairing.pairs:
        missing = next((path for path in (image, mask) if not path.is_file()), None)
        if missing is None:
            copyable.append((image, mask))
        else:  # a broken symbolic link: nothing to copy
            pairing.issues.append(Issue("unreadable", f"{display_path(missing)}: broken symbolic link", (missing,)))
    pairing.pairs = copyable
    for issue in pairing.issues:
        print(f"skipped: {issue.message}")
    if not pairing.pairs:
        raise DatasetError(f"{source_dir}: no image/mask pairs to organize")
    for split in ("train", "val"):
        if (output_dir / split).exists() and any((output_dir / split).iterdir()):
            raise DatasetError(f"{output_dir / split}: already exists and is not empty; choose a new --output-dir")

    train, val = split_pairs(pairing.pairs, 1.0 - train_split, seed)
    for split, pairs in (("train", train), ("val", val)):
        (output_dir / split / "images").mkdir(parents=True, exist_ok=True)
        (output_dir / split / "masks").mkdir(parents=True, exist_ok=True)
        for image, mask in tqdm(pairs, desc=f"Copying {split}", disable=None):
            shutil.copy2(image, output_dir / split / "images" / image.name)
            shutil.copy2(mask, output_dir / split / "masks" / f"{image.stem}{mask.suffix}")
    print(
        f"Organized {len(train)} train and {len(val)} val pairs into {output_dir} "
        f"(seed {seed}, {len(pairing.issues)} file(s) skipped)"
    )
    return {
        "train": [image.stem for image, _ in train],
        "val": [image.stem for image, _ in val],
        "skipped": [issue.message for issue in pairing.issues],
    }


# ---- create-sample ------------------------------------------------------------------------


def create_sample_dataset(
    output_dir: str | Path, num_samples: int = 50, image_size: int = 256, num_classes: int = 1, seed: int = 42
) -> list[tuple[Path, Path]]:
    """Synthetic shapes dataset: ``output_dir/images`` and ``output_dir/masks`` (PNG)."""
    pairs = write_synthetic_dataset(output_dir, num_samples, as_size(image_size), num_classes, seed)
    print(
        f"Wrote {len(pairs)} synthetic pairs to {Path(output_dir) / 'images'} and {Path(output_dir) / 'masks'}\n"
        f"Try: python train.py --image-dir {Path(output_dir) / 'images'} --mask-dir {Path(output_dir) / 'masks'}"
    )
    return pairs


# ---- dispatch -----------------------------------------------------------------------------


def run_action(
    action: str,
    *,
    image_dir=None,
    mask_dir=None,
    output_dir=None,
    source_dir=None,
    fix_issues=False,
    train_split=0.8,
    num_samples=50,
    image_size=256,
    num_classes=1,
    mask_threshold=0.5,
    seed=42,
    ignore_index=None,
) -> int:
    """Run one prepare_data action; returns the exit status (1 when the data has errors)."""
    try:
        if action == "analyze":
            summary = analyze_dataset(image_dir, mask_dir, output_dir, num_classes, mask_threshold, ignore_index)
            print(format_summary(summary))
            if output_dir is not None:
                print(f"Report written to {Path(output_dir) / 'analysis.md'} (also .json, .png)")
            return 0 if summary["counts"]["pairs"] else 1  # nothing to analyze: an empty or unpaired folder
        if action == "validate":
            result = validate_dataset(
                image_dir, mask_dir, fix_issues, output_dir, num_classes, mask_threshold, ignore_index
            )
            return 0 if result.ok else 1
        if action == "organize":
            organize_dataset(source_dir, output_dir, train_split, seed)
            return 0
        if action == "create-sample":
            create_sample_dataset(output_dir, num_samples, image_size, num_classes, seed)
            return 0
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # e.g. --output-dir on a full or read-only disk
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    raise ValueError(f"unknown action {action!r}")
