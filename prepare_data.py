#!/usr/bin/env python
"""Analyze, validate, organize or generate segmentation datasets.

python prepare_data.py --action analyze --image-dir ./data/images --mask-dir ./data/masks --output-dir ./analysis
python prepare_data.py --action validate --image-dir ./data/images --mask-dir ./data/masks [--fix-issues]
python prepare_data.py --action organize --source-dir ./raw_data --output-dir ./organized_data --train-split 0.8
python prepare_data.py --action create-sample --output-dir ./sample_data --num-samples 50
"""

import argparse
import sys
from pathlib import Path

from src.cli import ArgumentParser, number_in, positive_int
from utils.dataset_tools import run_action

REQUIRED = {
    "analyze": ("image_dir", "mask_dir"),
    "validate": ("image_dir", "mask_dir"),
    "organize": ("source_dir", "output_dir"),
    "create-sample": ("output_dir",),
}
# Every flag an action reads; any other flag typed with it is a mistake worth stopping on
# (e.g. --fix-issues with analyze would silently repair nothing).
USES = {
    "analyze": {"image_dir", "mask_dir", "output_dir", "num_classes", "mask_threshold", "ignore_index"},
    "validate": {"image_dir", "mask_dir", "output_dir", "fix_issues", "num_classes", "mask_threshold", "ignore_index"},
    "organize": {"source_dir", "output_dir", "train_split", "seed"},
    "create-sample": {"output_dir", "num_samples", "image_size", "num_classes", "seed"},
}
DEFAULTS = {
    "train_split": 0.8,
    "num_samples": 50,
    "image_size": 256,
    "num_classes": 1,
    "mask_threshold": 0.5,
    "seed": 42,
}
MUST_EXIST = ("image_dir", "mask_dir", "source_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="prepare_data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--action", required=True, choices=list(REQUIRED))
    parser.add_argument("--image-dir", type=Path, help="images folder (analyze, validate)")
    parser.add_argument("--mask-dir", type=Path, help="masks folder (analyze, validate); may equal --image-dir")
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="reports (analyze, validate), the organized dataset (organize) or samples (create-sample)",
    )
    parser.add_argument(
        "--fix-issues",
        action="store_true",
        help="validate: repair masks (binarise, resize to the image, convert to PNG) after backing them up",
    )
    parser.add_argument(
        "--source-dir", type=Path, help="organize: images/ + masks/, or images and *_mask files together"
    )
    parser.add_argument(
        "--train-split",
        type=number_in(0, 1, low_inclusive=False, high_inclusive=False),
        help="organize: training fraction (default 0.8)",
    )
    parser.add_argument("--num-samples", type=positive_int, help="create-sample: pairs to write (default 50)")
    parser.add_argument("--image-size", type=positive_int, help="create-sample: side in pixels (default 256)")
    parser.add_argument("--num-classes", type=positive_int, help="1 for binary masks, K for class-id masks (default 1)")
    parser.add_argument(
        "--mask-threshold",
        type=float,
        help="binary masks: foreground above this fraction of the mask's range (default 0.5)",
    )
    parser.add_argument("--seed", type=int, help="organize split and create-sample data (default 42)")
    parser.add_argument(
        "--ignore-index",
        type=int,
        help="analyze, validate: mask value of unlabelled pixels (often 255): counted apart, kept by --fix-issues",
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [name for name in REQUIRED[args.action] if getattr(args, name) is None]
    if missing:
        parser.error(f"--action {args.action} needs {_flags(missing)}")
    unused = [
        name
        for name, value in vars(args).items()
        if name != "action" and value is not None and value is not False and name not in USES[args.action]
    ]
    if unused:
        parser.error(f"--action {args.action} does not use {_flags(unused)}")
    for name in MUST_EXIST:
        path = getattr(args, name)
        if path is not None and not path.is_dir():
            parser.error(f"--{name.replace('_', '-')} {path}: folder does not exist")
    if args.output_dir is not None and args.output_dir.exists() and not args.output_dir.is_dir():
        parser.error(f"--output-dir {args.output_dir}: exists and is not a folder")
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 0.0 <= args.mask_threshold < 1.0:
        parser.error(f"--mask-threshold must be in [0, 1), got {args.mask_threshold}")
    return args


def _flags(names: list[str]) -> str:
    return " and ".join("--" + name.replace("_", "-") for name in names)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = vars(args)
    return run_action(options.pop("action"), **options)


if __name__ == "__main__":
    sys.exit(main())
