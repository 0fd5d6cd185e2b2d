"""Up-front checks of image/mask pairs, and what to do with the problems found.

Cheap header checks (open the file, read its size) run when a dataset is built, so a
missing, unreadable or mis-sized file stops the run before training starts; the full
decode happens in ``SegmentationDataset.preload``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from utils.errors import DatasetError, DatasetWarning, Issue, display_path, format_issues
from utils.image_io import read_size

Pair = tuple[Path, Path]


def size_mismatch(
    image_path: Path, image_wh: tuple[int, int], mask_path: Path, mask_wh: tuple[int, int]
) -> Issue | None:
    """The issue for a mask whose (width, height) differs from its image's, else None."""
    if image_wh == mask_wh:
        return None
    return Issue(
        "size_mismatch",
        f"{display_path(mask_path)}: size {mask_wh[0]}x{mask_wh[1]} differs from its image "
        f"{display_path(image_path)} ({image_wh[0]}x{image_wh[1]})",
        (mask_path, image_path),
    )


def check_pair_header(image_path: Path, mask_path: Path) -> list[Issue]:
    """Problems visible from the headers: unreadable files, image/mask size mismatch."""
    issues, sizes = [], {}
    for path in (image_path, mask_path):
        try:
            sizes[path] = read_size(path)
        except DatasetError as error:
            issues += error.issues
    if len(sizes) == 2:
        mismatch = size_mismatch(image_path, sizes[image_path], mask_path, sizes[mask_path])
        issues += [mismatch] if mismatch else []
    return issues


def check_pairs(pairs: list[Pair]) -> list[Issue]:
    """Header problems of every pair."""
    return [issue for image_path, mask_path in pairs for issue in check_pair_header(image_path, mask_path)]


def resolve_issues(pairs: list[Pair], issues: list[Issue], skip_invalid: bool = False) -> list[Pair]:
    """Act on ``issues``: warn about the non-fatal ones, then raise on the fatal ones
    (one DatasetError listing them all) or, with ``skip_invalid``, drop the pairs they
    touch with one warning. Returns the pairs that remain.
    """
    fatal = [issue for issue in issues if issue.fatal]
    notes = [issue for issue in issues if not issue.fatal]
    if notes:
        warnings.warn(format_issues(notes), DatasetWarning, stacklevel=3)
    if not fatal:
        return list(pairs)
    if not skip_invalid:
        raise DatasetError(fatal)
    warnings.warn("skipping invalid data: " + format_issues(fatal), DatasetWarning, stacklevel=3)
    bad_paths = {path for issue in fatal for path in issue.paths}
    return [pair for pair in pairs if pair[0] not in bad_paths and pair[1] not in bad_paths]
