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

from src.cli import ArgumentParser
from utils.dataset_tools import run_action

REQUIRED = {
    "analyze": ("image_dir", "mask_dir"),
    "validate": ("image_dir", "mask_dir"),
    "organize": ("source_dir", "output_dir"),
    "create-sample": ("output_dir",),
}
MUST_EXIST = ("image_dir", "mask_dir", "source_dir")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="prepare_data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--action", required=True, choices=list(REQUIRED))
    parser.add_argument("--image-dir", type=Path, help="images folder (analyze, validate)")
    parser.add_argument("--mask-dir", type=Path, help="masks folder (analyze, validate); may equal --image-dir")
    parser.add_argument("--output-dir", type=Path,
                        help="reports (analyze, validate), the organized dataset (organize) or samples (create-sample)")
    parser.add_argument("--fix-issues", action="store_true",
                        help="validate: repair masks (binarise, resize to the image, convert to PNG) after backing them up")
    parser.add_argument("--source-dir", type=Path, help="organize: images/ + masks/, or images and *_mask files together")
    parser.add_argument("--train-split", type=_fraction, default=0.8, help="organize: training fraction (default 0.8)")
    parser.add_argument("--num-samples", type=_positive_int, default=50, help="create-sample: pairs to write (default 50)")
    parser.add_argument("--image-size", type=_positive_int, default=256, help="create-sample: side in pixels (default 256)")
    parser.add_argument("--num-classes", type=_positive_int, default=1,
                        help="1 for binary masks, K for class-id masks (default 1)")
    parser.add_argument("--mask-threshold", type=float, default=0.5,
                        help="binary masks: foreground above this fraction of the mask's range (default 0.5)")
    parser.add_argument("--seed", type=int, default=42, help="organize split and create-sample data (default 42)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [name for name in REQUIRED[args.action] if getattr(args, name) is None]
    if missing:
        flags = " and ".join("--" + name.replace("_", "-") for name in missing)
        parser.error(f"--action {args.action} needs {flags}")
    for name in MUST_EXIST:
        path = getattr(args, name)
        if path is not None and not path.is_dir():
            parser.error(f"--{name.replace('_', '-')} {path}: folder does not exist")
    if not 0.0 <= args.mask_threshold < 1.0:
        parser.error(f"--mask-threshold must be in [0, 1), got {args.mask_threshold}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    options = vars(args)
    return run_action(options.pop("action"), **options)


if __name__ == "__main__":
    sys.exit(main())
