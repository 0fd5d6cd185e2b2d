"""Shared fixtures. The repo root is on sys.path via pyproject.toml (pythonpath = ["."])."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also when pytest runs without pyproject


@pytest.fixture
def tiny_dataset(tmp_path):
    """A folder with ``images/`` and ``masks/``: 6 synthetic 24x32 (H x W) PNG pairs, binary 0/255 masks."""
    from utils.synthetic import write_synthetic_dataset

    root = tmp_path / "tiny"
    write_synthetic_dataset(root, num_samples=6, image_size=(24, 32), seed=0)
    return root
