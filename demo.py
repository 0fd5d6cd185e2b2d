#!/usr/bin/env python
"""Train a small model on synthetic shapes and draw every figure: `python demo.py` (`--quick`: < 1 min)."""

import argparse
import sys

from src.checkpoint import CheckpointError
from src.demo import run_demo
from src.training import TrainingError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Diffusion segmentation demo on synthetic data (CPU friendly).")
    p.add_argument(
        "--output-dir", default="./demo_outputs", help="where figures and checkpoints go (default: %(default)s)"
    )
    p.add_argument("--quick", action="store_true", help="a sub-minute smoke run with a tiny model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = p.parse_args(argv)
    try:
        run_demo(args.output_dir, quick=args.quick, seed=args.seed, device=args.device, progress=args.progress)
    except (CheckpointError, TrainingError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
