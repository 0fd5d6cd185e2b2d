"""Frames of the forward diffusion q(x_t | x0) of a mask, for figures (the reverse process is
kept while sampling: `Predictor.predict(record_process=True)`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from src.models import DiffusionSegmentation


def evenly_spaced_timesteps(num_timesteps: int, count: int = 8) -> list[int]:
    """`count` timesteps from 0 (clean) to T - 1 (pure noise), evenly spaced, no repeats."""
    return sorted(set(np.linspace(0, num_timesteps - 1, count).round().astype(int).tolist()))


@torch.no_grad()
def forward_diffusion_frames(
    model: DiffusionSegmentation, mask, timesteps: Sequence[int] | None = None, seed: int = 0
) -> tuple[list[int], torch.Tensor]:
    """Noise one mask to each timestep with DDPM eq. 4, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

    mask: (H, W) 0/1 or class ids. One noise draw serves every t, so the frames show the same
    noise growing over the mask. Returns (timesteps, frames (F, K, H, W) float32 on the CPU).
    """
    timesteps = list(timesteps) if timesteps is not None else evenly_spaced_timesteps(model.num_timesteps)
    device = model.process.alphas_cumprod.device
    mask = torch.as_tensor(np.asarray(mask)).long().to(device)
    x0 = model.masks_to_x0(mask[None]).float()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    count = len(timesteps)
    t = torch.tensor(timesteps, dtype=torch.long, device=device)
    z0 = x0 * model.config.input_scale  # what the model noises (see DiffusionConfig.input_scale)
    frames = model.process.q_sample(z0.expand(count, -1, -1, -1), t, noise.expand(count, -1, -1, -1))
    return timesteps, frames.float().cpu()
