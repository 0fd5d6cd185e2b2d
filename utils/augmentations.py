"""Joint image + mask augmentation on top of ``torchvision.transforms.v2``.

Every transform here is called as ``transform(image, mask)`` with a ``tv_tensors.Image``
(C, H, W) and a ``tv_tensors.Mask`` (H, W). v2 draws one set of random parameters per call
and applies it to both, so the mask always follows the image; geometry on masks is
nearest-neighbour (class ids stay class ids) and colour transforms leave masks untouched.
The classes below only fix the defaults the spec names; they are ordinary v2 transforms.
"""

from __future__ import annotations

from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from utils.image_io import as_size

AUGMENTATION_MODES = ("none", "light", "medium", "heavy")


class DualRandomHorizontalFlip(v2.RandomHorizontalFlip):
    """Flip image and mask left-right together with probability ``p``."""


class DualRandomVerticalFlip(v2.RandomVerticalFlip):
    """Flip image and mask upside down together with probability ``p``."""


class DualRandomRotation(v2.RandomRotation):
    """Rotate image and mask by the same angle in [-degrees, degrees].

    The image is resampled bilinearly, the mask by nearest neighbour; the corners that
    rotate in are black in the image and ``mask_fill`` in the mask: background (0), or the
    void label when the dataset leaves unlabelled pixels out of the loss.
    """

    def __init__(self, degrees: float = 15.0, mask_fill: int = 0):
        super().__init__(
            degrees, interpolation=InterpolationMode.BILINEAR, fill={tv_tensors.Image: 0, tv_tensors.Mask: mask_fill}
        )


class DualRandomResizedCrop(v2.RandomResizedCrop):
    """Crop the same random region (``scale`` of the area) of image and mask, resized to ``size``."""

    def __init__(self, size: int | tuple[int, int], scale: tuple[float, float] = (0.7, 1.0)):
        super().__init__(as_size(size), scale=scale, antialias=True)


class ColorJitter(v2.ColorJitter):
    """Random brightness/contrast/saturation (and optional hue) on the image only; masks pass through.

    Hue defaults to 0: shifting hue is an RGB -> HSV -> RGB round trip per image, the costliest
    of the augmentations, and colour often carries meaning
    (e.g. in endoscopy). Pass hue=0.02 to turn it on.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.0):
        super().__init__(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)


def build_augmentations(mode: str, image_size: int | tuple[int, int], mask_fill: int = 0) -> list[v2.Transform]:
    """The transforms of one augmentation mode, as the README defines them.

    none:   nothing
    light:  horizontal flip (p=0.5)
    medium: horizontal flip (0.5), vertical flip (0.3), rotation (+-15 deg), colour jitter
    heavy:  horizontal flip (0.5), vertical flip (0.3), rotation (+-30 deg),
            random resized crop (70-100 % of the area, back to image_size), colour jitter
    mask_fill: the mask value of areas rotated in (see DualRandomRotation).
    """
    if mode not in AUGMENTATION_MODES:
        raise ValueError(f"augmentation_mode must be one of {AUGMENTATION_MODES}, got {mode!r}")
    if mode == "none":
        return []
    if mode == "light":
        return [DualRandomHorizontalFlip(p=0.5)]
    flips = [DualRandomHorizontalFlip(p=0.5), DualRandomVerticalFlip(p=0.3)]
    if mode == "medium":
        return [*flips, DualRandomRotation(degrees=15, mask_fill=mask_fill), ColorJitter()]
    return [
        *flips,
        DualRandomRotation(degrees=30, mask_fill=mask_fill),
        DualRandomResizedCrop(image_size),
        ColorJitter(),
    ]
