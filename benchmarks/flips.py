"""Flip test-time augmentation across the members of an ensemble.

Member k of each image sees the image flipped by MEMBER_FLIPS[k % 4] (none, horizontal, vertical,
both) and its estimates are flipped back, so the ensemble averages over flips as well as over
noise. The default "medium" training augmentation flips images horizontally and vertically, so
every flipped view is one the network has learned to segment.
"""

import torch

MEMBER_FLIPS = ((), (-1,), (-2,), (-2, -1))  # dims flipped for member k % 4: none, horizontal, vertical, both


def _flip(x: torch.Tensor, dims: tuple) -> torch.Tensor:
    return x.flip(dims) if dims else x


def flip_members(x: torch.Tensor, ensemble: int) -> torch.Tensor:
    """Rows image-major (row b * ensemble + k is member k of image b, as segmentation() repeats
    them): each member's rows flipped by its MEMBER_FLIPS entry. Its own inverse."""
    if ensemble < 1 or x.shape[0] % ensemble:
        raise ValueError(f"{x.shape[0]} rows are not a whole number of ensembles of {ensemble}")
    out = x.clone()
    for member in range(1, ensemble):
        out[member::ensemble] = _flip(x[member::ensemble], MEMBER_FLIPS[member % len(MEMBER_FLIPS)])
    return out


def flip_averaged(predict, images: torch.Tensor) -> torch.Tensor:
    """The mean of `predict` over the four flips of `images`, each flipped back: the same
    augmentation for a one-shot model (the plain UNet's test-time augmentation)."""
    return sum(_flip(predict(_flip(images, dims)), dims) for dims in MEMBER_FLIPS) / len(MEMBER_FLIPS)
