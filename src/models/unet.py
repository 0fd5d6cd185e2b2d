"""Encoder-decoder UNet that predicts the denoising target for a segmentation mask.

The network knows nothing about noise: it maps (noisy mask, conditioning image, timestep) to
`out_channels` feature maps, and the diffusion wrapper decides what those mean (eps, x0 or v).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvStem, Downsample, ResnetBlock, SelfAttention, Upsample, group_norm, time_embedding_mlp


def size_multiple(patch_size: int, num_levels: int) -> int:
    """Input height and width must be multiples of this: patch folding, then one halving per level."""
    return patch_size * 2 ** (num_levels - 1)


def check_image_size(height: int, width: int, patch_size: int, num_levels: int) -> None:
    """Raise a ValueError naming the sizes and a size that works when a UNet of `num_levels`
    levels over patches of `patch_size` cannot take (height, width)."""
    multiple = size_multiple(patch_size, num_levels)
    if height % multiple or width % multiple:
        raise ValueError(
            f"image size {height}x{width} is not divisible by {multiple} (patch size {patch_size} x "
            f"2^{num_levels - 1} for {num_levels} UNet levels); use e.g. {max(multiple, height // multiple * multiple)}"
            f"x{max(multiple, width // multiple * multiple)}"
        )


def per_level_counts(counts: Sequence[int], num_levels: int) -> tuple:
    """A count per level from `counts`, which names the deepest levels: (1, 1) over 4 levels is
    (0, 0, 1, 1). Raises a ValueError for negative counts or more counts than levels."""
    counts = tuple(counts)
    if len(counts) > num_levels or any(c < 0 for c in counts):
        raise ValueError(
            f"extra encoder blocks must be >= 0, at most one count per level ({num_levels} levels), got {counts}"
        )
    return (0,) * (num_levels - len(counts)) + counts


class UNet(nn.Module):
    """UNet with ResNet blocks, time conditioning and self-attention at the low resolutions.

    Args:
        in_channels: channels of the input (noisy mask channels + conditioning image channels).
        out_channels: channels of the output (the mask channels). None: no output layer; forward
            returns the finest level's features (base_channels * channel_mults[0] channels at
            1/patch_size of the input), which a MaskHead turns into a mask (mask_head.py).
        base_channels: width of the first level; level i has base_channels * channel_mults[i].
        channel_mults: one entry per level; there are len(channel_mults) - 1 downsamplings.
        num_res_blocks: ResNet blocks per level on the way down (the way up mirrors it).
        attention_resolutions: downsampling factors (1, 2, 4, ...) at which self-attention is
            used; the middle of the network always has it.
        dropout: dropout inside the ResNet blocks.
        num_heads: attention heads.
        patch_size: the network runs at 1/patch_size of the input resolution: each patch_size x
            patch_size patch is folded into channels on the way in (pixel unshuffle) and unfolded
            on the way out (pixel shuffle, as in sub-pixel convolution, Shi et al. 2016). On a CPU the
            full-resolution levels, wide in pixels and narrow in channels, cost the most per FLOP, and
            folding removes them (BENCHMARKS.md, "Ablations" for the step times).
        stem_channels: > 0 adds a ConvStem of that width beside the fold (patch_size a power of 2).
        extra_encoder_blocks: more ResNet blocks per encoder level that leave no skip connection,
            run before the level's skip blocks (the deepest level last; see per_level_counts).

    forward(x: (B, in_channels, H, W), timesteps: (B,)) -> (B, out_channels, H, W), with H and W
    divisible by patch_size * 2 ** (len(channel_mults) - 1) (features, see out_channels, when None).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (8,),
        dropout: float = 0.0,
        num_heads: int = 4,
        patch_size: int = 1,
        stem_channels: int = 0,
        extra_encoder_blocks: Sequence[int] = (),
    ):
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        self.size_multiple = size_multiple(patch_size, len(channel_mults))
        time_dim = base_channels * 4
        self.time_embedding = time_embedding_mlp(base_channels, time_dim)
        self.input_conv = nn.Conv2d(in_channels * patch_size**2, base_channels, 3, padding=1)
        self.stem = ConvStem(in_channels, base_channels, stem_channels, patch_size) if stem_channels else None

        widths = [base_channels * m for m in channel_mults]
        blocks = dict(
            time_dim=time_dim,
            num_res_blocks=num_res_blocks,
            dropout=dropout,
            attention_resolutions=attention_resolutions,
            num_heads=num_heads,
        )
        extra_blocks = per_level_counts(extra_encoder_blocks, len(widths))
        self.down_levels, skip_widths = self._down_levels(base_channels, widths, extra_blocks, **blocks)
        width = widths[-1]
        self.mid_block1 = ResnetBlock(width, width, time_dim, dropout)
        self.mid_attention = SelfAttention(width, num_heads)
        self.mid_block2 = ResnetBlock(width, width, time_dim, dropout)
        self.up_levels = self._up_levels(widths, skip_widths, **blocks)
        self.feature_channels = base_channels * channel_mults[0]
        self.output = None
        if out_channels is not None:
            self.output = nn.Sequential(
                group_norm(self.feature_channels),
                nn.SiLU(),
                nn.Conv2d(self.feature_channels, out_channels * patch_size**2, 3, padding=1),
            )

    def _down_levels(
        self,
        width: int,
        widths: list,
        extra_blocks: tuple,
        time_dim,
        num_res_blocks,
        dropout,
        attention_resolutions,
        num_heads,
    ) -> tuple:
        """The encoder: per level, its extra blocks, the ResNet blocks that leave a skip connection,
        attention where asked, a downsampling (not after the last). Also the widths of the skip
        connections each block leaves for the decoder."""
        levels, skip_widths = nn.ModuleList(), []
        for level, level_width in enumerate(widths):
            extras = nn.ModuleList()  # empty: no parameters, so checkpoints without them still load
            for _ in range(extra_blocks[level]):
                extras.append(ResnetBlock(width, level_width, time_dim, dropout))
                width = level_width
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(width, level_width, time_dim, dropout))
                width = level_width
                skip_widths.append(width)
            levels.append(
                nn.ModuleDict(
                    {
                        "extra_blocks": extras,
                        "blocks": blocks,
                        "attention": self._attention_or_identity(width, 2**level, attention_resolutions, num_heads),
                        "downsample": Downsample(width) if level < len(widths) - 1 else nn.Identity(),
                    }
                )
            )
        return levels, skip_widths

    def _up_levels(
        self, widths: list, skip_widths: list, time_dim, num_res_blocks, dropout, attention_resolutions, num_heads
    ) -> nn.ModuleList:
        """The decoder: per level from the deepest, ResNet blocks over [features, skip], attention
        where asked, an upsampling (not after the last)."""
        levels, width = nn.ModuleList(), widths[-1]
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(width + skip_widths.pop(), widths[level], time_dim, dropout))
                width = widths[level]
            levels.append(
                nn.ModuleDict(
                    {
                        "blocks": blocks,
                        "attention": self._attention_or_identity(width, 2**level, attention_resolutions, num_heads),
                        "upsample": Upsample(width) if level > 0 else nn.Identity(),
                    }
                )
            )
        return levels

    @staticmethod
    def _attention_or_identity(width, downsample_factor, attention_resolutions, num_heads) -> nn.Module:
        if downsample_factor in attention_resolutions:
            return SelfAttention(width, num_heads)
        return nn.Identity()

    def check_size(self, height: int, width: int) -> None:
        """Raise a ValueError naming the sizes when the UNet cannot downsample them evenly."""
        check_image_size(height, width, self.patch_size, len(self.down_levels))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.check_size(x.shape[-2], x.shape[-1])
        time_emb = self.time_embedding(timesteps)
        h = self.input_conv(F.pixel_unshuffle(x, self.patch_size) if self.patch_size > 1 else x)
        if self.stem is not None:
            h = h + self.stem(x)
        skips = []
        for level in self.down_levels:
            for block in level["extra_blocks"]:
                h = block(h, time_emb)
            for block in level["blocks"]:
                h = block(h, time_emb)
                skips.append(h)
            h = level["attention"](h)
            h = level["downsample"](h)

        h = self.mid_block2(self.mid_attention(self.mid_block1(h, time_emb)), time_emb)

        for level in self.up_levels:
            for block in level["blocks"]:
                h = block(torch.cat([h, skips.pop()], dim=1), time_emb)
            h = level["attention"](h)
            h = level["upsample"](h)
        if self.output is None:
            return h
        out = self.output(h)
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out
