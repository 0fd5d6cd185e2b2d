"""Noise schedules: beta_t for t = 0..T-1, and `extract` to broadcast per-timestep values."""

import math

import torch

SCHEDULES = ("linear", "cosine")


def linear_beta_schedule(timesteps: int) -> torch.Tensor:
    """Ho et al. 2020: betas from 1e-4 to 0.02, rescaled so any T spans the same noise range."""
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: abar_t = cos^2(((t/T + s) / (1 + s)) * pi/2), betas <= 0.999."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alphas_cumprod = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=0.999)


def make_beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    if name == "linear":
        return linear_beta_schedule(timesteps)
    if name == "cosine":
        return cosine_beta_schedule(timesteps)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")


def extract(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] reshaped to (B, 1, ..., 1) so it broadcasts over a tensor of `ndim` dims."""
    return values.gather(0, t).reshape(t.shape[0], *([1] * (ndim - 1)))
