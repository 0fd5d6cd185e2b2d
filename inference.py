#!/usr/bin/env python
"""Segment images with a trained checkpoint: `python inference.py --checkpoint best.pth --input image.jpg`."""

import sys

from src.inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
