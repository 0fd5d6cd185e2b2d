"""Dataset problems: one ``Issue`` per problem, one ``DatasetError`` to stop on them.

The same issues feed the dataset (which stops, or skips with a warning) and
``prepare_data.py --action validate`` (which lists them all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MAX_LISTED_ISSUES = 20


def display_path(path: Path | str) -> str:
    """``/long/path/data/masks/foo.png`` -> ``masks/foo.png``: short, still unambiguous."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


@dataclass(frozen=True)
class Issue:
    """One problem with the dataset.

    kind: a short key, e.g. "missing_mask", "size_mismatch", "empty_mask" (see ISSUE_KINDS).
    message: one line that names the file(s) and what is wrong.
    paths: the files involved (first the one to fix).
    fatal: True when the pair cannot be used for training; False for warnings.
    """

    kind: str
    message: str
    paths: tuple[Path, ...] = field(default=())
    fatal: bool = True


ISSUE_KINDS = {
    "empty_folder": "folder holds no images",
    "missing_mask": "image without a mask",
    "missing_image": "mask without an image",
    "ambiguous_mask": "several masks match one image",
    "duplicate_stem": "two images share a file name stem",
    "unreadable": "unreadable, truncated or too large file",
    "size_mismatch": "mask size differs from its image",
    "bad_mask_values": "mask values that are not class ids",
    "empty_mask": "mask that is all background (warning)",
    "grey_mask": "mask with values other than 0 and max (thresholded; warning)",
    "lossy_mask": "JPEG mask: compression blurs its edges (warning)",
    "duplicate_image": "identical image files (warning)",
    "missing_stem": "stem listed in a split file has no pair",
    "fix_failed": "mask that --fix-issues could not repair (left unchanged)",
}


def format_issues(issues: list[Issue]) -> str:
    """One line for one issue; a count then one line per issue (at most 20) otherwise."""
    if len(issues) == 1:
        return issues[0].message
    lines = [f"{len(issues)} problems in the dataset:"]
    lines += [f"  {issue.message}" for issue in issues[:MAX_LISTED_ISSUES]]
    if len(issues) > MAX_LISTED_ISSUES:
        lines.append(f"  ... and {len(issues) - MAX_LISTED_ISSUES} more")
    return "\n".join(lines)


class DatasetWarning(UserWarning):
    """Legal but suspicious data (e.g. an all-background mask), or skipped invalid pairs."""


class DatasetError(ValueError):
    """Bad input data. ``str(error)`` names the file(s); ``error.issues`` lists them."""

    def __init__(self, issues: Issue | list[Issue] | str):
        if isinstance(issues, str):
            issues = [Issue("dataset", issues)]
        elif isinstance(issues, Issue):
            issues = [issues]
        self.issues = list(issues)
        super().__init__(format_issues(self.issues))
