"""Reading images and masks from disk into uint8 / class-id numpy arrays.

Images come back as (H, W, C) uint8 (C = 1 or 3), whatever the file holds: 8- or 16-bit,
grayscale, palette, RGB, RGBA (alpha dropped), CMYK. Masks come back as (H, W) class ids:
0/1 for binary masks (grey values thresholded), the pixel value for multi-class masks.
Every failure is a ``DatasetError`` naming the file.

The file's content, not its suffix, picks the decoder, and only the PNG, JPEG, BMP and TIFF
decoders are allowed: PIL knows ~40 formats (EPS even runs Ghostscript), and a hostile file
named ``x.png`` should not reach them. Images over ``PIL.Image.MAX_IMAGE_PIXELS`` are refused
from the header, before any pixel is decoded.
"""

from __future__ import annotations

import numbers
import os
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageChops, UnidentifiedImageError

from utils.errors import DatasetError, Issue, display_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
# PIL's names of the only decoders we let run (JPEG also reads the multi-picture JPEGs of cameras)
DECODERS = ("PNG", "JPEG", "BMP", "TIFF")
# What PIL's decoders raise on damaged or hostile data (a corrupt TIFF tag gives a TypeError,
# a huge one a MemoryError): all mean "this file cannot be used".
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, TypeError, IndexError, KeyError,
                 ArithmeticError, MemoryError)


def as_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``256`` or ``(256, 256)`` -> ``(H, W)``."""
    if isinstance(image_size, numbers.Integral):
        image_size = (image_size, image_size)
    height, width = (int(v) for v in image_size)
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return (height, width)


def is_image_file(path: Path) -> bool:
    """A visible file with a supported extension (any case).

    A broken symbolic link with such a name counts too, so that it is reported rather than
    silently missing.
    """
    if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
        return False
    return path.is_file() or (path.is_symlink() and not path.exists())


def _unreadable(path: Path, reason: str) -> DatasetError:
    return DatasetError(Issue("unreadable", f"{display_path(path)}: {reason}", (Path(path),)))


def _check_pixels(img: Image.Image, path: Path) -> None:
    """Refuse images over PIL's MAX_IMAGE_PIXELS (PIL itself only warns below twice the limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = img.size
    if limit and width * height > limit:
        raise _unreadable(path, f"{width}x{height} pixels is over the {limit}-pixel limit (a possible decompression "
                                "bomb, refused before decoding); raise PIL.Image.MAX_IMAGE_PIXELS if the file is genuine")


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """``PIL.Image.open`` whose failures (also while decoding in the body) become a DatasetError."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused by _check_pixels instead
            img = Image.open(path, formats=DECODERS)
        with img:
            _check_pixels(img, path)
            yield img
    except DatasetError:
        raise
    except Image.DecompressionBombError as error:
        raise _unreadable(path, f"{error} Raise PIL.Image.MAX_IMAGE_PIXELS if the file is genuine.") from error
    except UnidentifiedImageError as error:
        empty = path.is_file() and path.stat().st_size == 0
        what = "empty file, 0 bytes" if empty else "not a PNG, JPEG, BMP or TIFF file"
        raise _unreadable(path, f"unreadable or truncated image ({what})") from error
    except DECODE_ERRORS as error:
        if path.is_symlink() and not path.exists():
            raise _unreadable(path, f"broken symbolic link (to {os.readlink(path)})") from error
        if isinstance(error, MemoryError):
            raise _unreadable(path, "not enough memory to decode it") from error
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _unreadable(path, f"unreadable or truncated image ({reason})") from error


def read_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only: cheap, no decoding."""
    with open_image(path) as img:
        return img.size


def _value_max(img: Image.Image, values: np.ndarray) -> float:
    """The top of the range a file's pixel values live in (255 for 8-bit, 65535 for 16-bit)."""
    if img.mode == "1":
        return 1.0
    if img.mode.startswith("I;16"):
        return 65535.0
    if img.mode == "I":  # 32-bit ints: how some Pillow versions open 16-bit PNGs
        return 65535.0 if values.max(initial=0) > 255 else 255.0
    if img.mode == "F":  # float TIFFs: guess the range from the data
        top = values.max(initial=0)
        return 1.0 if top <= 1 else 255.0 if top <= 255 else 65535.0
    return 255.0


def _to_8bit(img: Image.Image, in_channels: int) -> Image.Image:
    """An ``L`` (in_channels=1) or ``RGB`` (in_channels=3) copy of any PIL image."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # PIL's own conversion of wide modes to L clips instead of scaling: scale to the range.
        values = np.asarray(img, dtype=np.float64)
        scaled = np.clip(np.round(values * (255.0 / _value_max(img, values))), 0, 255)
        img = Image.fromarray(scaled.astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning; alpha dropped below
    return img.convert("RGB" if in_channels == 3 else "L")


def load_image(path: Path, in_channels: int = 3, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image to (H, W, C) uint8, resized to ``size`` = (H, W) when given.

    Resizing is bilinear with antialiasing (PIL's resize filters cover the source area).
    """
    path = Path(path)
    with open_image(path) as img:
        if size is not None and img.format == "JPEG":
            # Decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain (still >= size):
            # several times faster than decoding at full size and resizing.
            img.draft(None, (size[1], size[0]))
        img.load()
        img = _to_8bit(img, in_channels)
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        pixels = np.array(img)  # a writable copy: torch.from_numpy warns on read-only arrays
    return pixels[..., None] if pixels.ndim == 2 else pixels


def read_mask_values(path: Path) -> tuple[np.ndarray, float, bool]:
    """Raw mask values (H, W), the top of their range, and whether the file is in colour.

    Colour masks become their per-pixel maximum channel (so a red-on-black mask still has a
    bright foreground); alpha is dropped; palette masks keep their palette indices.
    """
    path = Path(path)
    with open_image(path) as img:
        img.load()
        if img.mode in ("1", "L", "P", "I", "F") or img.mode.startswith("I;16"):
            values = np.asarray(img)
            if values.dtype == bool:
                values = values.astype(np.uint8)
            return values, _value_max(img, values), False
        # PIL's C loops: ~10x faster than numpy reductions over a trailing axis of 3.
        red, green, blue = img.convert("RGB").split()
        is_colour = (ImageChops.difference(red, green).getbbox() is not None
                     or ImageChops.difference(green, blue).getbbox() is not None)
        brightest = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    return np.asarray(brightest), 255.0, is_colour


def values_are_binary(values: np.ndarray, value_max: float) -> bool:
    """Whether mask values hold only background and one foreground level (0/max or 0/1)."""
    levels = set(np.unique(values).tolist())
    return levels <= {0, value_max} or levels <= {0, 1}


def mask_to_labels(
    values: np.ndarray,
    value_max: float,
    path: Path,
    num_classes: int = 1,
    mask_threshold: float = 0.5,
    is_colour: bool = False,
) -> np.ndarray:
    """Raw mask values -> (H, W) class ids: uint8 (int64 when num_classes > 256).

    Binary (num_classes == 1): foreground where value > mask_threshold * value_max.
    A lossless mask whose values are all 0 or 1 is read as 0/1 labels, so 0/1 PNG masks
    are not silently thresholded to all background.
    Multi-class: the pixel value is the class id and must be < num_classes.
    """
    if num_classes == 1:
        is_jpeg = Path(path).suffix.lower() in JPEG_EXTENSIONS  # JPEG noise makes 0/1 values meaningless
        if not is_jpeg and np.issubdtype(values.dtype, np.integer) and values.max(initial=0) == 1:
            value_max = 1.0
        return (values > mask_threshold * value_max).astype(np.uint8)

    name = display_path(path)
    if is_colour:
        raise DatasetError(Issue(
            "bad_mask_values",
            f"{name}: colour mask; multi-class masks must be single-channel class ids (0..{num_classes - 1})",
            (Path(path),),
        ))
    labels = values.astype(np.int64)
    # the file's own values (a float TIFF's 0.5, not the 0 it would truncate to)
    bad = np.unique(values[(labels < 0) | (labels >= num_classes) | (labels != values)])
    if bad.size:
        listed = ", ".join(str(v.item()) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        hint = ""
        if set(np.unique(values).tolist()) <= {0, 255}:
            hint = "; it looks like a 0/255 binary mask: use num_classes=1"
        elif Path(path).suffix.lower() in JPEG_EXTENSIONS:
            hint = "; JPEG compression changes class ids: save masks as PNG"
        raise DatasetError(Issue(
            "bad_mask_values",
            f"{name}: values {listed} are not class ids 0..{num_classes - 1} (num_classes={num_classes}){hint}",
            (Path(path),),
        ))
    return labels.astype(np.uint8) if num_classes <= 256 else labels


def load_labels(
    path: Path, num_classes: int = 1, mask_threshold: float = 0.5, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode a mask to (H, W) class ids (see ``mask_to_labels``), resized to ``size`` when given.

    Resizing is nearest-neighbour so class ids stay class ids.
    """
    values, value_max, is_colour = read_mask_values(path)
    labels = mask_to_labels(values, value_max, path, num_classes, mask_threshold, is_colour)
    return labels if size is None else resize_labels(labels, size)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H0, W0) class ids -> (H, W) by nearest neighbour, same dtype (no-op at that size)."""
    if labels.shape == tuple(size):
        return labels
    pil_labels = Image.fromarray(labels.astype(np.int32) if labels.dtype == np.int64 else labels)
    resized = pil_labels.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(resized).astype(labels.dtype)
