"""Figures render off-screen to real PNG/GIF files; the colouring helpers keep shapes and values."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.visualization import (
    class_palette,
    colorize_mask,
    diffusion_to_rgb,
    mask_edges,
    overlay_mask,
    save_forward_diffusion,
    save_prediction_grid,
    save_process_gif,
    save_reverse_process,
    save_training_curves,
    to_rgb_uint8,
    uncertainty_to_rgb,
)

ROOT = Path(__file__).resolve().parents[1]


def png_size(path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_training_curves_accept_epochs_without_validation(tmp_path):
    history = [
        {"epoch": 1, "loss": 0.9, "lr": 1e-3},
        {"epoch": 2, "loss": 0.5, "lr": 8e-4, "val_dice": None, "val_iou": None},
        {"epoch": 3, "loss": 0.3, "lr": 5e-4, "val_dice": 0.6, "val_iou": 0.45},
    ]
    path = save_training_curves(history, tmp_path / "sub" / "curves.png")
    assert path == tmp_path / "sub" / "curves.png"
    assert png_size(path)[0] > 300
    assert png_size(save_training_curves([], tmp_path / "empty.png"))[0] > 0


@pytest.mark.parametrize("channels,num_classes", [(3, 1), (1, 1), (3, 4)])
def test_prediction_grid_columns_and_rows(tmp_path, channels, num_classes):
    images = torch.rand(5, channels, 16, 16)
    masks = torch.randint(0, max(num_classes, 2), (5, 16, 16))
    full = save_prediction_grid(
        images,
        masks,
        masks,
        tmp_path / "full.png",
        uncertainty=torch.rand(5, 16, 16) * 0.5,
        num_classes=num_classes,
        max_rows=4,
    )
    bare = save_prediction_grid(images, None, masks, tmp_path / "bare.png", num_classes=num_classes, max_rows=2)
    (full_w, full_h), (bare_w, bare_h) = png_size(full), png_size(bare)
    assert full_w > bare_w and full_h > bare_h  # 4 columns x 4 rows vs 2 columns x 2 rows


def test_overlay_tints_only_the_foreground():
    image = np.full((8, 10, 3), 100, dtype=np.uint8)
    mask = np.zeros((8, 10), dtype=np.uint8)
    mask[2:6, 3:8] = 1
    out = overlay_mask(image, mask)
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    assert (out[mask == 0] == 60).all()  # dimmed background
    assert (out[mask == 1] != 100).any(axis=-1).all()
    with pytest.raises(ValueError, match="same size"):
        overlay_mask(image, mask[:4])


def test_overlay_accepts_grayscale_and_float_images():
    mask = np.eye(6, dtype=np.int64) * 2
    assert overlay_mask(np.zeros((6, 6, 1), np.uint8), mask, num_classes=3).shape == (6, 6, 3)
    assert overlay_mask(torch.rand(1, 6, 6), mask, num_classes=3).shape == (6, 6, 3)


def test_colour_helpers():
    labels = np.array([[0, 1], [2, 3]])
    coloured = colorize_mask(labels, num_classes=4)
    palette = class_palette(4)
    assert (coloured[0, 0] == 0).all() and len({tuple(c) for c in palette}) == 4
    assert (coloured[1, 1] == palette[3]).all()
    assert set(np.unique(colorize_mask(labels > 0))) == {0, 255}
    heat = uncertainty_to_rgb(np.array([[0.0, 0.04]]))
    assert heat.shape == (1, 2, 3) and heat[0, 1].sum() > 600  # scaled to its own maximum: bright
    assert (uncertainty_to_rgb(np.full((2, 2), 1e-4)) < 30).all()  # noise-level values stay dark
    assert to_rgb_uint8(torch.ones(3, 4, 5)).shape == (4, 5, 3)
    assert diffusion_to_rgb(torch.tensor([[[-1.0, 1.0]]])).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    assert diffusion_to_rgb(torch.randn(3, 4, 4), num_classes=3).shape == (4, 4, 3)
    assert mask_edges(np.array([[0, 0, 1]])).tolist() == [[False, True, True]]


def test_diffusion_figures_and_gif(tmp_path):
    image = torch.rand(3, 16, 16)
    frames = torch.randn(4, 1, 16, 16)
    forward = save_forward_diffusion(frames, [0, 10, 50, 99], tmp_path / "forward.png", image=image)
    reverse = save_reverse_process(
        image,
        [99, 66, 33, 0],
        frames,
        frames.tanh(),
        tmp_path / "reverse.png",
        final_mask=torch.zeros(16, 16, dtype=torch.long),
        next_timesteps=[66, 33, 0, -1],
    )
    assert png_size(forward)[0] > png_size(forward)[1]  # one wide row
    assert png_size(reverse)[0] > 0
    gif = save_process_gif(image, frames, frames, tmp_path / "process.gif")
    with Image.open(gif) as img:
        assert img.format == "GIF" and img.n_frames == 4 and img.size == (3 * 128, 128)


def test_importing_and_plotting_leave_the_users_matplotlib_backend_alone(tmp_path):
    """The project draws with matplotlib's object API: a user's backend choice survives our imports and figures."""
    script = (
        "import matplotlib; matplotlib.use('svg')\n"
        "import train, inference, demo, prepare_data\n"
        "from utils.visualization import save_training_curves\n"
        f"save_training_curves([{{'epoch': 1, 'loss': 1.0, 'lr': 1e-4}}], {str(tmp_path / 'curves.png')!r})\n"
        "print(matplotlib.get_backend())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "svg"
    assert (tmp_path / "curves.png").stat().st_size > 0
