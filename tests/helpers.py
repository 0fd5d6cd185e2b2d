"""Small builders shared by the test files: tiny models and checkpoints, random images."""

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.checkpoint import save_checkpoint
from src.models import DiffusionConfig, DiffusionSegmentation

# train.py's flags for a tiny model (16 px, two levels, 100 timesteps): CLI runs in seconds.
TINY_FLAGS = ["--image-size", "16", "--base-channels", "8", "--channel-mults", "1,2", "--num-res-blocks", "1"]
TINY_FLAGS += ["--attention-resolutions", "2", "--timesteps", "100"]
# ... and the same model as a config, for tests that build or train it in-process
TINY_MODEL = DiffusionConfig(
    image_size=(16, 16),
    base_channels=8,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(2,),
    num_heads=2,
    timesteps=100,
    # A new model starts deaf to x_t (DiffusionConfig.zero_init_noisy_input), so an untrained one
    # samples one mask under any noise; a trained one hears x_t, and its seeds and ensemble members
    # differ. The tests of seeds, ensembles and uncertainty need that, so the tiny model hears it.
    zero_init_noisy_input=False,
)

# For subprocesses running tiny models: see the one_torch_thread fixture in conftest.py.
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_model(**overrides) -> DiffusionSegmentation:
    """A ~30k-parameter model at 16x16: fast enough for end-to-end inference tests on a CPU.
    TINY_MODEL's network with DiffusionConfig's default 1000 timesteps, unless overridden."""
    torch.manual_seed(0)
    return DiffusionSegmentation(replace(TINY_MODEL, **{"timesteps": 1000, **overrides}))


def write_checkpoint(model, path, ema=None) -> Path:
    return save_checkpoint({"model_config": model.config.to_dict(), "model": model.state_dict(), "ema": ema}, path)


def write_image(path, size, mode="RGB", seed=0) -> Path:
    """A random image of `size` = (W, H)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": (3,), "L": ()}[mode]
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8), mode).save(path)
    return Path(path)


def write_class_id_dataset(root, count: int = 12, size=(24, 40), ignore_rows: int = 3) -> Path:
    """`root/images` + `root/masks`: `count` RGB images of `size` = (H, W) whose masks hold class ids
    0, 1, 2 (blocks that the image shows in colour) and 255 (unlabelled) in the top `ignore_rows` rows."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    height, width = size
    for i in range(count):
        labels = np.zeros(size, dtype=np.uint8)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        labels[top : top + height // 2, left : left + width // 3] = 1
        labels[height // 2 :, width - width // 4 :] = 2
        image = np.stack([labels == 1, labels == 2, labels == 0], axis=-1).astype(np.uint8) * 200
        labels[:ignore_rows] = 255
        Image.fromarray(image + rng.integers(0, 40, image.shape, dtype=np.uint8)).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(labels).save(root / "masks" / f"{i:02d}.png")
    return root
