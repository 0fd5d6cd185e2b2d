"""Matching image files to mask files, and splitting pairs into train/val.

A mask matches an image when its stem is the image's stem, optionally followed by
``_mask`` or ``_gt``; extensions may differ and are compared case-insensitively:

    photo_001.jpg <-> photo_001.png | photo_001_mask.png | photo_001_gt.tif | photo_001.jpg

Images and masks may live in separate folders or side by side in one folder.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.errors import DatasetError, Issue, display_path
from utils.image_io import IMAGE_EXTENSIONS, is_image_file

MASK_SUFFIXES = ("_mask", "_gt")

Pair = tuple[Path, Path]  # (image_path, mask_path)


@dataclass
class Pairing:
    """What ``find_pairs`` found: the usable pairs (sorted by image stem) and every problem."""

    pairs: list[Pair] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


def list_image_files(folder: Path) -> list[Path]:
    """Visible files with an image extension directly in ``folder``, sorted by name."""
    return sorted((p for p in Path(folder).iterdir() if is_image_file(p)), key=lambda p: p.name)


def strip_mask_suffix(stem: str) -> str:
    """``photo_mask`` / ``photo_gt`` -> ``photo``; other stems unchanged."""
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _split_folder(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """Images and masks that sit in one folder: a mask is ``<stem>_mask|_gt`` of another file."""
    stems = {p.stem for p in files}
    masks = [p for p in files if strip_mask_suffix(p.stem) != p.stem and strip_mask_suffix(p.stem) in stems]
    mask_set = set(masks)
    return [p for p in files if p not in mask_set], masks


def _group_by_stem(paths: list[Path]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        groups[path.stem].append(path)
    return groups


def find_pairs(image_dir: str | Path, mask_dir: str | Path, stems: list[str] | None = None) -> Pairing:
    """Pair every image in ``image_dir`` with its mask in ``mask_dir``.

    stems: when given, only these image stems are paired (e.g. the lines of splits/train.txt);
        a listed stem without an image is an issue, unlisted files are ignored.
    Raises DatasetError only when a folder does not exist; every other problem (no images,
    image without mask, mask without image, ambiguous or duplicate names) is an Issue.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DatasetError(Issue("empty_folder", f"{folder}: folder does not exist", (folder,)))

    if image_dir.resolve() == mask_dir.resolve():
        images, masks = _split_folder(list_image_files(image_dir))
    else:
        images, masks = list_image_files(image_dir), list_image_files(mask_dir)

    pairing = Pairing()
    extensions = ", ".join(IMAGE_EXTENSIONS)
    if not images:
        pairing.issues.append(Issue("empty_folder", f"{image_dir}: no images ({extensions})", (image_dir,)))
        return pairing
    if not masks:
        pairing.issues.append(Issue("empty_folder", f"{mask_dir}: no masks ({extensions})", (mask_dir,)))
        return pairing

    images_by_stem = _group_by_stem(images)
    masks_by_stem = _group_by_stem(masks)
    if stems is not None:
        wanted = list(dict.fromkeys(stems))  # keep order, drop repeats
        for stem in wanted:
            if stem not in images_by_stem:
                pairing.issues.append(Issue("missing_stem", f"{stem}: listed stem has no image in {image_dir}"))
        images_by_stem = {s: images_by_stem[s] for s in wanted if s in images_by_stem}

    claimed: set[Path] = set()
    for stem in sorted(images_by_stem):
        candidates = [m for key in (stem, *(stem + s for s in MASK_SUFFIXES)) for m in masks_by_stem.get(key, [])]
        claimed.update(candidates)
        _pair_stem(pairing, stem, images_by_stem[stem], candidates, mask_dir)

    if stems is None:  # with a stem list, other masks simply belong to other splits
        for mask in masks:
            if mask not in claimed:
                pairing.issues.append(
                    Issue(
                        "missing_image",
                        f"{display_path(mask)}: no image in {image_dir} for this mask "
                        f"(looked for {strip_mask_suffix(mask.stem)}.*)",
                        (mask,),
                    )
                )
    return pairing


def _pair_stem(pairing: Pairing, stem: str, same_stem: list[Path], candidates: list[Path], mask_dir: Path) -> None:
    """Add the pair of image stem `stem`, or the issue that prevents it: several images with
    that stem, no mask among the candidates, or more than one."""
    if len(same_stem) > 1:
        names = ", ".join(display_path(p) for p in same_stem)
        pairing.issues.append(Issue("duplicate_stem", f"{names}: images share the stem '{stem}'", tuple(same_stem)))
    elif not candidates:
        looked = ", ".join(f"{stem}{s}.*" for s in ("", *MASK_SUFFIXES))
        pairing.issues.append(
            Issue(
                "missing_mask",
                f"{display_path(same_stem[0])}: no mask in {mask_dir} (looked for {looked})",
                (same_stem[0],),
            )
        )
    elif len(candidates) > 1:
        names = ", ".join(display_path(m) for m in candidates)
        pairing.issues.append(
            Issue(
                "ambiguous_mask",
                f"{display_path(same_stem[0])}: several masks match ({names}); keep one",
                (same_stem[0], *candidates),
            )
        )
    else:
        pairing.pairs.append((same_stem[0], candidates[0]))


def split_pairs(pairs: list[Pair], val_split: float, seed: int = 42) -> tuple[list[Pair], list[Pair]]:
    """Seeded random train/val split; both parts sorted by image stem.

    val_split: fraction in (0, 1) of the pairs for validation (at least one pair each side).
    The result depends only on the set of pairs and the seed, not on their order.
    """
    if not 0.0 < val_split < 1.0:
        raise ValueError(f"val_split must be in (0, 1), got {val_split}")
    ordered = sorted(pairs, key=lambda pair: pair[0].stem)
    num_val = max(1, int(round(len(ordered) * val_split)))
    if num_val >= len(ordered):
        raise DatasetError(f"val_split={val_split} of {len(ordered)} pair(s) leaves no training data")
    val_indices = set(np.random.default_rng(seed).permutation(len(ordered))[:num_val].tolist())
    train = [pair for i, pair in enumerate(ordered) if i not in val_indices]
    val = [pair for i, pair in enumerate(ordered) if i in val_indices]
    return train, val


def read_split_file(path: str | Path) -> list[str]:
    """Stems listed one per line (blank lines and ``#`` comments skipped; an image extension is dropped)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: split file does not exist")
    stems = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        stems.append(Path(line).stem if Path(line).suffix.lower() in IMAGE_EXTENSIONS else line)
    return stems
