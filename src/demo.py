"""The demo: train a small model on synthetic shapes, segment held-out images, draw every figure.

Runs on a plain CPU in a few minutes (`--quick`: under a minute, a smoke test with a tiny model
that learns little). Everything it writes goes to one folder:

    training/                 checkpoints, history.json and the trainer's own figures
    training_curves.png       loss, learning rate and validation Dice/IoU per epoch
    forward_diffusion.png     a held-out mask noised step by step, q(x_t | x0)
    reverse_process.png/.gif  the DDIM reverse process on a held-out image: sample and x0 estimate
    predictions.png           held-out images: ground truth, prediction, ensemble uncertainty
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src.inference.predictor import Predictor, PredictorOptions
from src.inference.process import forward_diffusion_frames
from src.metrics import segmentation_scores
from src.models import DiffusionConfig
from src.training import TrainConfig, train
from utils.synthetic import HELD_OUT_SEED_OFFSET, SyntheticSegmentationDataset
from utils.visualization import (
    save_forward_diffusion,
    save_prediction_grid,
    save_process_gif,
    save_reverse_process,
    save_training_curves,
)


@dataclass(frozen=True)
class DemoSettings:
    """Data, model and budget of one demo run."""

    image_size: int
    base_channels: int
    channel_mults: tuple
    attention_resolutions: tuple
    train_samples: int
    epochs: int
    batch_size: int
    lr: float
    warmup_steps: int
    max_minutes: float  # the trainer stops (and keeps its checkpoints) when this is spent
    val_steps: int  # DDIM steps of the trainer's validation
    sample_steps: int  # DDIM steps for the held-out predictions
    ensemble: int  # samples per held-out image, for the uncertainty map
    held_out: int  # held-out images segmented and drawn


# Sized to train in a couple of minutes on 2 CPU cores and still segment the shapes cleanly (the
# README's demo section shows what it reaches); the time cap bounds a busy machine.
FULL = DemoSettings(
    image_size=64,
    base_channels=16,
    channel_mults=(1, 2, 2),
    attention_resolutions=(4,),
    train_samples=320,
    epochs=6,
    batch_size=16,
    lr=2e-3,
    warmup_steps=20,
    max_minutes=3.0,
    val_steps=10,
    sample_steps=20,
    ensemble=4,
    held_out=4,
)
# A smoke test of every stage: a few seconds of training on 16 px images.
QUICK = DemoSettings(
    image_size=16,
    base_channels=8,
    channel_mults=(1, 2),
    attention_resolutions=(2,),
    train_samples=32,
    epochs=1,
    batch_size=8,
    lr=2e-3,
    warmup_steps=2,
    max_minutes=0.5,
    val_steps=2,
    sample_steps=4,
    ensemble=2,
    held_out=4,
)


def model_config(settings: DemoSettings) -> DiffusionConfig:
    return DiffusionConfig(
        image_size=settings.image_size,
        base_channels=settings.base_channels,
        channel_mults=settings.channel_mults,
        num_res_blocks=1,
        attention_resolutions=settings.attention_resolutions,
        num_heads=2,
        prediction_type="x0",
        dice_weight=1.0,
        # the settings its figures in the README were measured with: 64 px shapes
        # are small enough to run at full resolution
        patch_size=1,
        bounded_x0=False,
    )


def run_demo(
    output_dir="./demo_outputs", quick: bool = False, seed: int = 0, device: str = "auto", progress: bool = True
) -> dict[str, Path]:
    """Train, evaluate, segment and draw; returns {figure name: path} (also printed)."""
    settings = QUICK if quick else FULL
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    print(
        f"Diffusion segmentation demo{' (quick smoke run)' if quick else ''}: synthetic "
        f"{settings.image_size}x{settings.image_size} shapes, {settings.train_samples} training images, "
        f"at most {settings.epochs} epochs / {settings.max_minutes:g} min"
    )

    result = train(_train_config(settings, output_dir / "training", seed, device, progress), model_config(settings))
    checkpoint = result.best_checkpoint or result.last_checkpoint
    predictor = Predictor.from_checkpoint(
        checkpoint,
        device=device,
        options=PredictorOptions(steps=settings.sample_steps, ensemble=settings.ensemble, seed=seed),
    )

    held_out = SyntheticSegmentationDataset(
        settings.held_out, image_size=settings.image_size, seed=seed + HELD_OUT_SEED_OFFSET
    )
    images = torch.stack([held_out[i][0] for i in range(len(held_out))])  # (N, C, H, W) in [0, 1]
    truths = np.stack([held_out.load_original_mask(i) for i in range(len(held_out))])  # (N, H, W) 0/1
    predictions = predictor.predict(_to_uint8(images), record_process=True)
    masks = np.stack([p.mask for p in predictions])
    held_out_dice = float(np.mean([segmentation_scores(m, t)["dice"] for m, t in zip(masks, truths)]))
    _print_scores(result.best_val_dice, held_out_dice, chance_dice(truths), quick)

    figures = _draw_figures(result.history, predictor.model, predictions, masks, images, truths, output_dir, seed)
    figures["checkpoint"] = Path(checkpoint)

    print(f"\nDone in {time.monotonic() - start:.0f} s. Files:")
    for name, path in figures.items():
        print(f"  {name:20s} {path}")
    print(f"Segment your own images with: python inference.py --checkpoint {checkpoint} --input IMAGE --ensemble 4")
    return figures


def _draw_figures(history, model, predictions, masks, images, truths, output_dir: Path, seed: int) -> dict[str, Path]:
    """Training curves, the forward and reverse process of the first held-out image, the predictions."""
    figures = {"training_curves": save_training_curves(history, output_dir / "training_curves.png")}
    timesteps, frames = forward_diffusion_frames(model, truths[0], seed=seed)
    figures["forward_diffusion"] = save_forward_diffusion(
        frames, timesteps, output_dir / "forward_diffusion.png", image=images[0]
    )
    trace = predictions[0].process
    figures["reverse_process"] = save_reverse_process(
        trace.image,
        trace.timesteps,
        trace.x_t,
        trace.x0,
        output_dir / "reverse_process.png",
        final_mask=masks[0],
        next_timesteps=trace.next_timesteps,
        mean_frames=trace.mean,
    )
    figures["reverse_process_gif"] = save_process_gif(
        trace.image, trace.x_t, trace.x0, output_dir / "reverse_process.gif"
    )
    figures["predictions"] = save_prediction_grid(
        images,
        truths,
        masks,
        output_dir / "predictions.png",
        uncertainty=np.stack([p.uncertainty for p in predictions]),
    )
    return figures


def _train_config(settings: DemoSettings, output_dir: Path, seed: int, device: str, progress: bool) -> TrainConfig:
    return TrainConfig(
        synthetic=True,
        synthetic_samples=settings.train_samples,
        output_dir=str(output_dir),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=settings.warmup_steps,
        max_minutes=settings.max_minutes,
        val_steps=settings.val_steps,
        save_every=settings.epochs,
        seed=seed,
        device=device,
        ema_decay=0.99,
        progress=progress,
        overwrite=True,
    )  # each demo run replaces the last one


def chance_dice(truths: np.ndarray) -> float:
    """Expected Dice of a random mask with the true foreground rate p: 2p^2 / 2p = p (per image, mean)."""
    return float(np.mean([(t > 0).mean() for t in truths]))


def _to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(N, C, H, W) float in [0, 1] -> N arrays (H, W, C) uint8, as image files are read."""
    return [np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for img in images]


def _print_scores(val_dice, held_out_dice: float, chance: float, quick: bool) -> None:
    val_text = f"{val_dice:.3f}" if val_dice is not None else "n/a"
    print(
        f"\nbest validation Dice {val_text}; held-out Dice {held_out_dice:.3f}; "
        f"chance level (a random mask with the true foreground rate) {chance:.3f}"
    )
    if quick:
        print("(quick run: the model trained for seconds, so scores near chance are expected)")
    elif held_out_dice < chance + 0.2:
        print("warning: the model is not clearly above chance; try a longer run or another --seed")
