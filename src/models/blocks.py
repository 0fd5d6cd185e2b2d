"""Building blocks of the denoising UNet.

Every block takes and returns feature maps of shape (B, C, H, W); the ResNet block also takes the
time embedding (B, time_dim). Nothing here knows about noise schedules or masks.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest of 32/16/8/4/2/1 groups that divides `channels`."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style sinusoidal encoding of the timestep (Vaswani et al. 2017, sec. 3.5).

    timesteps: (B,) int or float -> (B, dim) float32.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.dim = dim
        self.max_period = max_period

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            -math.log(self.max_period) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half
        )
        angles = timesteps.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def time_embedding_mlp(dim: int, time_dim: int) -> nn.Sequential:
    """timesteps (B,) -> (B, time_dim): the sinusoidal encoding of width `dim`, then a 2-layer MLP."""
    return nn.Sequential(
        SinusoidalTimeEmbedding(dim), nn.Linear(dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
    )


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, with the time embedding as a per-channel scale and shift
    (FiLM, as in improved-diffusion's `use_scale_shift_norm`) and a 1x1 skip when widths differ.
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * out_channels))
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        # Start each block as the identity so deep UNets train from step one.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time_proj(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all H*W positions, through `scaled_dot_product_attention`
    (flash / memory-efficient kernels where the backend has them). Residual, pre-norm."""

    def __init__(self, channels: int, num_heads: int = 4):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.to_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x))
        # (B, 3C, H, W) -> 3 x (B, heads, H*W, C/heads)
        q, k, v = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, h * w).permute(1, 0, 2, 4, 3)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.permute(0, 1, 3, 2).reshape(b, c, h, w)
        return x + self.to_out(out)


class Downsample(nn.Module):
    """Halve H and W with a strided 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling then a 3x3 convolution (no checkerboard)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def check_stem(stem_channels: int, patch_size: int) -> None:
    """Raise a ValueError naming both values when a ConvStem of width `stem_channels` (0: none)
    cannot fold `patch_size` x `patch_size` patches in stride-2 steps."""
    odd_patch = patch_size < 2 or patch_size & (patch_size - 1)
    if stem_channels < 0 or (stem_channels and odd_patch):
        raise ValueError(
            f"stem_channels must be >= 0 (got {stem_channels}), and > 0 only with a patch size that is "
            f"a power of 2 (>= 2, got {patch_size})"
        )


class ConvStem(nn.Module):
    """Full resolution -> 1/patch_size in stride-2 3x3 convolutions with SiLU between them.

    Pixel unshuffle hands the UNet each patch as a linear fold; this stem runs beside it so the
    first features can also hold a nonlinear response (an edge, a small bright spot) computed at
    2x, 4x, ... the UNet's resolution, for a few per cent of a step. Its last convolution starts at
    zero, so a new model starts as the unshuffle-only one.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, patch_size: int):
        super().__init__()
        check_stem(max(hidden_channels, 1), patch_size)  # a stem is built: its patch must fold
        halvings = int(math.log2(patch_size))
        widths = [in_channels] + [hidden_channels] * (halvings - 1) + [out_channels]
        layers = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            if index > 0:
                layers.append(nn.SiLU())
            layers.append(nn.Conv2d(width_in, width_out, 3, stride=2, padding=1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
