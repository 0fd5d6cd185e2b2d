"""Reading images and masks from disk into uint8 / class-id numpy arrays.

Images come back as (H, W, C) uint8 (C = 1 or 3), whatever the file holds: 8- or 16-bit,
grayscale, palette, RGB, RGBA (alpha dropped), CMYK. Masks come back as (H, W) class ids:
0/1 for binary masks (grey values thresholded), the pixel value for multi-class masks.
Every failure is a ``DatasetError`` naming the file.

EXIF orientation is applied, as every viewer and annotation tool shows the file: a phone photo
stored sideways with "rotate 90" in its header is read upright, so it matches a mask drawn on it.

Pixels that belong to no class (an ``ignore_index`` value in the file, letterbox padding) get the
label ``void_label(dtype)``: 255 in uint8 labels (so at most 255 classes fit in uint8), -1 in
int64 ones. Losses and metrics leave them out.

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from utils.errors import DatasetError, Issue, display_path
from utils.resize import resize_labels

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
# PIL's names of the only decoders we let run (JPEG also reads the multi-picture JPEGs of cameras)
DECODERS = ("PNG", "JPEG", "BMP", "TIFF")
# What PIL's decoders raise on damaged or hostile data (a corrupt TIFF tag gives a TypeError,
# a huge one a MemoryError): all mean "this file cannot be used".
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    TypeError,
    IndexError,
    KeyError,
    ArithmeticError,
    MemoryError,
)


# EXIF orientations 5-8 turn the picture by 90 degrees: displayed width and height swap
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112


def label_dtype(num_classes: int) -> type:
    """uint8 while the class ids and the void label (255) fit, else int64."""
    return np.uint8 if num_classes <= 255 else np.int64


def void_label(dtype) -> int:
    """The label of pixels left out of losses and metrics: 255 in uint8 labels, -1 otherwise."""
    return 255 if np.dtype(dtype) == np.uint8 else -1


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
        raise _unreadable(
            path,
            f"{width}x{height} pixels is over the {limit}-pixel limit (a possible decompression "
            "bomb, refused before decoding); raise PIL.Image.MAX_IMAGE_PIXELS if the file is genuine",
        )


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


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except DECODE_ERRORS:  # a damaged EXIF block: show the pixels as stored, as most viewers do
        return 1


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as viewers show the file: swapped when EXIF says it is stored sideways."""
    width, height = img.size
    return (height, width) if _orientation(img) in TRANSPOSED_ORIENTATIONS else (width, height)


def _upright(img: Image.Image) -> Image.Image:
    """The decoded image turned as its EXIF orientation says (the same image when it says nothing)."""
    if _orientation(img) == 1:
        return img
    return ImageOps.exif_transpose(img)


def read_size(path: Path) -> tuple[int, int]:
    """Displayed (width, height) from the file header only: cheap, no decoding."""
    with open_image(path) as img:
        return displayed_size(img)


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


def load_image(path: Path, in_channels: int = 3) -> np.ndarray:
    """Decode an image to (H, W, C) uint8 at its own size, upright (EXIF orientation applied).

    Always the full-resolution decode: every model input is then made from it by
    ``fit_image``, so training, validation, inference and the benchmarks give the model the
    same pixels for the same file (a reduced-scale JPEG decode would not).
    """
    path = Path(path)
    with open_image(path) as img:
        img.load()
        img = _to_8bit(_upright(img), in_channels)
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
        img = _upright(img)
        if img.mode in ("1", "L", "P", "I", "F") or img.mode.startswith("I;16"):
            values = np.asarray(img)
            if values.dtype == bool:
                values = values.astype(np.uint8)
            return values, _value_max(img, values), False
        # PIL's per-band C loops: numpy's reductions over a trailing axis of 3 are strided and slow.
        red, green, blue = img.convert("RGB").split()
        is_colour = (
            ImageChops.difference(red, green).getbbox() is not None
            or ImageChops.difference(green, blue).getbbox() is not None
        )
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
    ignore_index: int | None = None,
) -> np.ndarray:
    """Raw mask values -> (H, W) class ids of ``label_dtype(num_classes)``.

    Binary (num_classes == 1): foreground where value > mask_threshold * value_max.
    A lossless mask whose values are all 0 or 1 is read as 0/1 labels, so 0/1 PNG masks
    are not silently thresholded to all background.
    Multi-class: the pixel value is the class id and must be < num_classes.
    Pixels equal to ``ignore_index`` get ``void_label`` in both cases.
    """
    dtype = label_dtype(num_classes)
    ignored = (values == ignore_index) if ignore_index is not None else None
    if num_classes == 1:
        kept = values if ignored is None else values[~ignored]
        is_jpeg = Path(path).suffix.lower() in JPEG_EXTENSIONS  # JPEG noise makes 0/1 values meaningless
        if not is_jpeg and np.issubdtype(values.dtype, np.integer) and kept.max(initial=0) == 1:
            value_max = 1.0
        labels = (values > mask_threshold * value_max).astype(dtype)
        if ignored is not None:
            labels[ignored] = void_label(dtype)
        return labels

    name = display_path(path)
    if is_colour:
        raise DatasetError(
            Issue(
                "bad_mask_values",
                f"{name}: colour mask; multi-class masks must be single-channel class ids (0..{num_classes - 1})",
                (Path(path),),
            )
        )
    labels = values.astype(np.int64)
    # the file's own values (a float TIFF's 0.5, not the 0 it would truncate to)
    wrong = (labels < 0) | (labels >= num_classes) | (labels != values)
    if ignored is not None:
        wrong &= ~ignored
    bad = np.unique(values[wrong])
    if bad.size:
        raise _not_class_ids(bad, values, path, num_classes, ignore_index)
    if ignored is not None:
        labels[ignored] = void_label(dtype)
    return labels.astype(dtype)


def _not_class_ids(bad: np.ndarray, values: np.ndarray, path: Path, num_classes: int, ignore_index) -> DatasetError:
    """The error for mask values that are not class ids, with a hint at the likely cause."""
    name = display_path(path)
    listed = ", ".join(str(v.item()) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
    hint = ""
    if set(np.unique(values).tolist()) <= {0, 255}:
        hint = "; it looks like a 0/255 binary mask: use num_classes=1"
    elif Path(path).suffix.lower() in JPEG_EXTENSIONS:
        hint = "; JPEG compression changes class ids: save masks as PNG"
    elif ignore_index is None and bad.size == 1:
        hint = f"; if {listed} marks unlabelled pixels, pass --ignore-index {listed}"
    return DatasetError(
        Issue(
            "bad_mask_values",
            f"{name}: values {listed} are not class ids 0..{num_classes - 1} (num_classes={num_classes}){hint}",
            (Path(path),),
        )
    )


def load_labels(
    path: Path,
    num_classes: int = 1,
    mask_threshold: float = 0.5,
    size: tuple[int, int] | None = None,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Decode a mask to (H, W) class ids (see ``mask_to_labels``), resized to ``size`` when given.

    Resizing is nearest-neighbour so class ids stay class ids.
    """
    values, value_max, is_colour = read_mask_values(path)
    labels = mask_to_labels(values, value_max, path, num_classes, mask_threshold, is_colour, ignore_index)
    return labels if size is None else resize_labels(labels, size)


# Masks whose values are at most this, in at least 3 levels, look like class ids (0, 1, 2, ...)
# rather than a binary mask, whose foreground sits at the top of the range (255, 65535) and whose
# anti-aliased or JPEG edges add levels near 0 and near the top.
CLASS_ID_MAX = 127


class ClassIds(NamedTuple):
    """Masks that look like class ids 0..count-1; `unlabelled`: a top-of-range value (255) beside
    them, the usual "void" label, to pass as --ignore-index (None when there is none)."""

    count: int
    unlabelled: int | None = None


def looks_like_class_ids(levels, value_max: float, ignore_index: int | None = None) -> ClassIds | None:
    """ClassIds when the distinct mask values ``levels`` (of one mask or a whole dataset) look
    like class ids rather than a binary mask; None otherwise.

    Class ids: integers, at least three levels besides a void value (0/1 and 0/255 are binary),
    all small (<= CLASS_ID_MAX), so a 12-class mask 0..11 (with or without 255 for unlabelled
    pixels) is recognised and a grey-edged 0/255 mask, whose levels sit near both ends, is not.
    """
    levels = {float(v) for v in levels} - ({float(ignore_index)} if ignore_index is not None else set())
    if any(v != int(v) or v < 0 for v in levels) or value_max < CLASS_ID_MAX:
        return None
    unlabelled = int(value_max) if value_max in levels else None
    ids = levels - {float(value_max)}
    if len(ids) < 3 or max(ids) > CLASS_ID_MAX:
        return None
    return ClassIds(int(max(ids)) + 1, unlabelled)


def class_id_hint(class_ids: ClassIds) -> str:
    """The one line analyze, validate and train print when masks look like class ids."""
    k = class_ids.count
    void = (
        f" and --ignore-index {class_ids.unlabelled} (for the {class_ids.unlabelled} pixels)"
        if class_ids.unlabelled
        else ""
    )
    return (
        f"the masks look like {k} class ids (values 0..{k - 1}), not binary masks: pass --num-classes {k}{void} "
        "to train on the classes (read as binary, they are thresholded at half their range)"
    )
