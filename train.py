#!/usr/bin/env python
"""Train a diffusion segmentation model: `python train.py --synthetic --epochs 10`."""

import sys

from src.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
