"""Coarsen a batch of mask estimates the way a segmenter errs on images it was not trained on.

Self-conditioned training hands the network its own estimate of the batch (made without one),
but on training images that estimate is close to the truth, so the network learns to copy it
and make it firmer; on new images the estimate is worse and the copy keeps its errors. Handing
over a coarsened estimate instead, moved at its boundary and made less sure, trains a step that
corrects an estimate from the image, as the refiner CascadePSP (Cheng et al. 2020) is trained on
ground-truth masks with perturbed boundaries. Measured, not adopted (BENCHMARKS.md, seventh round).
"""

import torch
import torch.nn.functional as F

MAX_RADIUS = 3  # pixels at the model's resolution
MIN_CONFIDENCE = 0.5  # the estimate is scaled toward 0 (p = 0.5) by a factor in [MIN_CONFIDENCE, 1]


def dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-level dilation with a (2r+1)^2 square: each pixel takes the largest value around it."""
    return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius) if radius else x


def perturb_estimates(x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, K, H, W) estimates in [-1, 1] -> the same shape and range, each sample independently
    dilated or eroded by 0..MAX_RADIUS pixels, then scaled toward 0 by a factor in
    [MIN_CONFIDENCE, 1]."""
    batch, device = x0.shape[0], x0.device
    radius = torch.randint(0, MAX_RADIUS + 1, (batch,), generator=generator, device=device)
    grow = torch.rand(batch, generator=generator, device=device) < 0.5
    out = x0.clone()
    for r in range(1, MAX_RADIUS + 1):
        for grows, moved in ((True, dilate(x0, r)), (False, -dilate(-x0, r))):
            chosen = (radius == r) & (grow == grows)
            out[chosen] = moved[chosen]
    confidence = MIN_CONFIDENCE + (1 - MIN_CONFIDENCE) * torch.rand(batch, generator=generator, device=device)
    return out * confidence.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
