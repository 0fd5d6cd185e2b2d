"""The per-step part of a model that encodes its image once (DDP, Ji et al. 2023).

With `DiffusionConfig.mask_head_blocks` > 0 the UNet sees only the image, once per image, and
leaves features at its own resolution (1/patch_size); at every reverse step only this head runs:
the noisy mask and the previous estimate, folded into patches the way the UNet folds its input,
are added to those features and pass `num_blocks` time-conditioned ResNet blocks. Ten steps of an
ensemble of five then cost one UNet pass (five with MC dropout, DiffusionSegmentation.member_conditioning)
and fifty head passes, and in training the self-conditioning pass re-runs only the head.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Downsample, ResnetBlock, SelfAttention, group_norm, time_embedding_mlp


class MaskHead(nn.Module):
    """(masks (B, mask_in_channels, H, W), features (B, width, H/p, W/p), timesteps (B,)) ->
    (B, out_channels, H, W), p = patch_size."""

    def __init__(
        self,
        mask_in_channels: int,
        out_channels: int,
        width: int,
        num_blocks: int,
        patch_size: int,
        dropout: float = 0.0,
        global_context: bool = False,
    ):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"a mask head needs at least one block, got {num_blocks}")
        self.patch_size = patch_size
        time_dim = width * 4
        self.time_embedding = time_embedding_mlp(width, time_dim)
        self.input_conv = nn.Conv2d(mask_in_channels * patch_size**2, width, 3, padding=1)
        self.blocks = nn.ModuleList(ResnetBlock(width, width, time_dim, dropout) for _ in range(num_blocks))
        self.output = nn.Sequential(
            group_norm(width), nn.SiLU(), nn.Conv2d(width, out_channels * patch_size**2, 3, padding=1)
        )
        # built last, so the modules above draw the same initial weights with or without it
        self.context = GlobalContext(width) if global_context else None

    def forward(self, masks: torch.Tensor, features: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        folded = F.pixel_unshuffle(masks, self.patch_size) if self.patch_size > 1 else masks
        h = features + self.input_conv(folded)
        time_emb = self.time_embedding(timesteps)
        for index, block in enumerate(self.blocks):
            h = block(h, time_emb)
            if index == 0 and self.context is not None:  # the later blocks see the whole estimate's shape
                h = self.context(h)
        out = self.output(h)
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out


class GlobalContext(nn.Module):
    """The head's features at a quarter of its resolution, attending over every position, added
    back (residual; zero-initialised, so a new head starts as one without it). The head's blocks
    see about 13 positions across (52 px at patch size 4): a step can then judge its estimate
    locally only, while a false blob or a missed half of a large polyp is a matter of the whole
    mask's shape."""

    def __init__(self, width: int, num_heads: int = 4):
        super().__init__()
        self.down = nn.Sequential(Downsample(width), nn.SiLU(), Downsample(width))
        self.attention = SelfAttention(width, num_heads)
        self.up = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        context = self.attention(self.down(h))
        return h + self.up(F.interpolate(context, size=h.shape[-2:], mode="nearest"))
