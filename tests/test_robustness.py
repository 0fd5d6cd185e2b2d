"""Bad input, faults and hostile files through the real entry points: load_dataset, train.py,
inference.py and prepare_data.py. Every file is either used correctly or refused with one clear
error naming it; nothing ends in a traceback, nothing runs out of memory.

Broken and hostile checkpoints: test_robustness_checkpoints.py. --fix-issues keeping every
original: test_prepare_data.py.
"""

import ctypes
import io
import os
import resource
import struct
import subprocess
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import prepare_data
from src.inference import OutputOptions, Predictor, PredictorOptions, run_batch, segment_file
from src.inference.cli import main as inference_main
from src.training.cli import main as train_main
from tests.helpers import ONE_THREAD_ENV, TINY_FLAGS, tiny_model, write_checkpoint
from utils.data_utils import DatasetError, load_dataset
from utils.errors import display_path
from utils.image_io import IMAGE_EXTENSIONS

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "--no-progress"]
H, W = 12, 16

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save(path: Path, pixels, **options) -> Path:
    """Write an array or PIL image; ``format=`` may disagree with the suffix on purpose."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    image.save(path, **options)
    return path


def photo(height: int = H, width: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_mask(height: int = H, width: int = W, value: int = 255) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : height // 2, width // 4 : 3 * width // 4] = value
    return mask


def good_pairs(root: Path, count: int = 2) -> Path:
    """``root/images`` and ``root/masks`` with ``count`` valid 12x16 pairs ``ok_0``, ``ok_1``, ..."""
    for index in range(count):
        save(root / f"images/ok_{index}.png", photo(seed=index))
        save(root / f"masks/ok_{index}.png", box_mask())
    return root


def run_main(main, argv, capsys) -> tuple[int, str]:
    """Exit code and stderr of a script's main(), whether it returns or exits (argparse)."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line_error(err: str, *expected: str) -> None:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)


def png_1bit(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG written chunk by chunk: a 10000x10000 one is 12 KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = bytes((1 + (width + 7) // 8) * height)  # a filter byte per row, then zero bits
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
    )
    return path


def tiff_with_bad_strip_offsets(path: Path) -> Path:
    """A TIFF whose StripOffsets tag is typed RATIONAL: PIL raises TypeError (not OSError) on it.
    Found by fuzzing; it used to escape as a traceback."""
    save(path, photo(4, 4), format="TIFF")
    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 273:  # StripOffsets: LONG -> RATIONAL
            struct.pack_into("<H", data, entry + 2, 5)
    path.write_bytes(bytes(data))
    return path


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nnewpath 0 0 moveto 8 8 lineto stroke\n%%EOF\n"


def _truncated(path: Path, fmt: str) -> None:
    save(path, photo(48, 64), format=fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # header intact, pixels cut


# name -> (writer, words the error must hold)
BAD_FILES = {
    "zero-byte": (lambda p: p.write_bytes(b""), "empty file, 0 bytes"),
    "truncated PNG": (lambda p: _truncated(p, "PNG"), "truncated"),
    "truncated JPEG": (lambda p: _truncated(p, "JPEG"), "truncated"),
    "text named .png": (lambda p: p.write_text("not an image\n"), "not a PNG, JPEG, BMP or TIFF file"),
    # PIL would decode these (EPS by running Ghostscript): only our four formats are let through
    "EPS named .png": (lambda p: p.write_bytes(EPS), "not a PNG, JPEG, BMP or TIFF file"),
    "GIF named .png": (lambda p: save(p, photo(), format="GIF"), "not a PNG, JPEG, BMP or TIFF file"),
    "corrupt TIFF tag": (tiff_with_bad_strip_offsets, "unreadable or truncated image"),
}


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu", options=PredictorOptions(steps=1))


# ---- bad files --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_image_file_is_refused_naming_it(case, tmp_path, tiny_checkpoint, capsys):
    write, reason = BAD_FILES[case]
    good_pairs(tmp_path)
    bad = tmp_path / "images" / "bad.png"
    write(bad)
    save(
        tmp_path / "masks/bad.png",
        box_mask(48, 64) if "truncated" in case else box_mask(4, 4) if "TIFF" in case else box_mask(),
    )
    if case == "EPS named .png":
        assert Image.open(bad).format == "EPS"  # the file really is one PIL would open

    with pytest.raises(DatasetError) as caught:
        load_dataset(tmp_path / "images", tmp_path / "masks", image_size=8)
    message = str(caught.value)
    assert message.startswith("images/bad.png: ") and reason in message and "\n" not in message

    code, err = run_main(
        inference_main, ["--checkpoint", tiny_checkpoint, "--input", bad, "--output", tmp_path / "out", *FAST], capsys
    )
    assert code == 2
    assert_one_line_error(err, "error: images/bad.png: ", reason)
    assert not (tmp_path / "out" / "bad.png").exists()


def test_wrongly_suffixed_images_are_read_by_content(tmp_path, tiny_checkpoint):
    png_named_jpg = save(tmp_path / "images/a.jpg", photo(seed=1), format="PNG")
    jpeg_named_png = save(tmp_path / "images/b.png", photo(seed=2), format="JPEG")
    save(tmp_path / "masks/a.png", box_mask())
    save(tmp_path / "masks/b.png", box_mask())
    loader = load_dataset(
        tmp_path / "images",
        tmp_path / "masks",
        image_size=(H, W),
        augmentation_mode="none",
        shuffle=False,
        batch_size=2,
    )
    images, masks = next(iter(loader))
    assert torch.equal(images[0], torch.from_numpy(photo(seed=1)).permute(2, 0, 1).float() / 255)  # lossless PNG
    decoded = np.array(Image.open(jpeg_named_png).convert("RGB"))  # what the JPEG decoder gives
    assert torch.equal(images[1], torch.from_numpy(decoded).permute(2, 0, 1).float() / 255)
    assert masks.shape == (2, 1, H, W)
    assert (
        inference_main(
            [
                "--checkpoint",
                str(tiny_checkpoint),
                "--input",
                str(png_named_jpg),
                "--output",
                str(tmp_path / "out"),
                *FAST,
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(tmp_path / "out/a.png")).shape == (H, W)


def test_one_pixel_images(tmp_path, tiny_checkpoint):
    save(tmp_path / "images/dot.png", np.full((1, 1, 3), 200, np.uint8))
    save(tmp_path / "masks/dot.png", np.full((1, 1), 255, np.uint8))
    loader = load_dataset(tmp_path / "images", tmp_path / "masks", image_size=16, augmentation_mode="none")
    images, masks = next(iter(loader))
    assert images.shape == (1, 3, 16, 16) and torch.allclose(images, torch.full_like(images, 200 / 255))
    assert masks.shape == (1, 1, 16, 16) and masks.eq(1).all()
    assert loader.dataset.load_original_mask(0).shape == (1, 1)

    assert (
        inference_main(
            [
                "--checkpoint",
                str(tiny_checkpoint),
                "--input",
                str(tmp_path / "images/dot.png"),
                "--output",
                str(tmp_path / "out"),
                *FAST,
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(tmp_path / "out/dot.png")).shape == (1, 1)
    assert np.asarray(Image.open(tmp_path / "out/dot_overlay.png")).shape == (1, 1, 3)


def test_huge_image_is_refused_from_its_header_without_decoding(tmp_path, predictor):
    huge = png_1bit(tmp_path / "images/huge.png", 10_000, 10_000)  # 10^8 pixels in 12 KB
    save(tmp_path / "masks/huge.png", box_mask())
    good_pairs(tmp_path)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, not merely warned about
        with pytest.raises(DatasetError, match=r"^images/huge.png: 10000x10000 pixels is over the \d+-pixel limit"):
            load_dataset(tmp_path / "images", tmp_path / "masks", image_size=8)
        summary = run_batch(predictor, tmp_path / "images", tmp_path / "out", OutputOptions(), progress=False)
    assert summary.count == 2 and [Path(f["file"]).name for f in summary.failures] == ["huge.png"]
    assert "decompression bomb" in summary.failures[0]["reason"]
    # Decoding it would have taken >= 100 MB (8.6 GB on the way to a 10000x10000 mask before the fix).
    growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert growth_kb < 50_000
    assert huge.stat().st_size < 20_000


def _image_modes() -> dict:
    rgb = Image.fromarray(photo())
    wide = np.random.default_rng(3).integers(0, 65536, (H, W), dtype=np.uint16)
    transparent = rgb.convert("P")
    transparent.info["transparency"] = 0
    return {  # name -> (file name, PIL image, save options, expected RGB pixels)
        "16-bit grey": (
            "deep.png",
            Image.fromarray(wide),
            {},
            np.repeat(np.round(wide / 257.0).astype(np.uint8)[..., None], 3, axis=2),
        ),
        "palette": ("pal.png", rgb.convert("P"), {}, np.asarray(rgb.convert("P").convert("RGB"))),
        "palette + transparency": (
            "palt.png",
            transparent,
            {"transparency": 0},
            np.asarray(rgb.convert("P").convert("RGB")),
        ),
        "CMYK": ("cmyk.tif", rgb.convert("CMYK"), {}, np.asarray(rgb.convert("CMYK").convert("RGB"))),
        "CMYK JPEG": ("cmyk_jpeg.jpg", rgb.convert("CMYK"), {"quality": 100}, None),  # lossy: shape only
        "RGBA": ("rgba.png", rgb.convert("RGBA"), {}, photo()),
        "grayscale": ("grey.png", rgb.convert("L"), {}, np.repeat(np.asarray(rgb.convert("L"))[..., None], 3, axis=2)),
        "grey + alpha": (
            "la.png",
            rgb.convert("LA"),
            {},
            np.repeat(np.asarray(rgb.convert("L"))[..., None], 3, axis=2),
        ),
        "1-bit": ("bits.png", rgb.convert("1"), {}, np.asarray(rgb.convert("1").convert("RGB"))),
    }


def test_image_modes_load_exactly_and_segment(tmp_path, predictor):
    modes = _image_modes()
    for name, (file_name, image, options, _) in modes.items():
        save(tmp_path / "images" / file_name, image, **options)
        save(tmp_path / "masks" / f"{Path(file_name).stem}.png", box_mask())
    dataset = load_dataset(tmp_path / "images", tmp_path / "masks", image_size=(H, W), augmentation_mode="none").dataset
    by_name = {image.name: index for index, (image, _) in enumerate(dataset.pairs)}
    for name, (file_name, _, _, expected) in modes.items():
        image, mask = dataset[by_name[file_name]]
        assert image.shape == (3, H, W) and mask.shape == (1, H, W), name
        if expected is not None:
            assert torch.equal(image, torch.from_numpy(np.array(expected)).permute(2, 0, 1).float() / 255), name
    grey_dataset = load_dataset(tmp_path / "images", tmp_path / "masks", image_size=(H, W), in_channels=1).dataset
    assert all(grey_dataset[i][0].shape == (1, H, W) for i in range(len(grey_dataset)))

    summary = run_batch(predictor, tmp_path / "images", tmp_path / "out", OutputOptions(), progress=False)
    assert summary.count == len(modes) and summary.failures == []
    for file_name, *_ in modes.values():
        assert np.asarray(Image.open(tmp_path / "out" / f"{Path(file_name).stem}.png")).shape == (H, W), file_name


def test_mask_encodings_read_alike_in_training_and_scoring(tmp_path, tiny_checkpoint, capsys):
    truth = box_mask(value=1)
    grey = box_mask(value=230)
    grey[2, :] = 90  # an anti-aliased edge below the 0.5 threshold
    masks = {"zero_one": truth, "zero_255": truth * 255, "grey": grey}
    for stem, mask in masks.items():
        save(tmp_path / f"images/{stem}.png", photo())  # identical images: identical predictions
        save(tmp_path / f"masks/{stem}.png", mask)
    loader = load_dataset(
        tmp_path / "images",
        tmp_path / "masks",
        image_size=(H, W),
        augmentation_mode="none",
        batch_size=3,
        shuffle=False,
    )
    _, labels = next(iter(loader))
    assert all(torch.equal(label[0], torch.from_numpy(truth).float()) for label in labels)

    save(tmp_path / "images/small.png", photo())
    save(tmp_path / "masks/small.png", box_mask(6, 8))  # another size than its image
    with pytest.raises(
        DatasetError, match=r"masks/small.png: size 8x6 differs from its image images/small.png \(16x12\)"
    ):
        load_dataset(tmp_path / "images", tmp_path / "masks", image_size=(H, W))

    code, _ = run_main(
        inference_main,
        [
            "--checkpoint",
            tiny_checkpoint,
            "--input",
            tmp_path / "images",
            "--mask-dir",
            tmp_path / "masks",
            "--batch-size",
            1,
            "--output",
            tmp_path / "out",
            *FAST,
        ],
        capsys,
    )
    assert code == 0
    rows = {row.split(",")[0]: row.split(",")[2] for row in (tmp_path / "out/metrics.csv").read_text().splitlines()[1:]}
    assert rows["zero_one.png"] == rows["zero_255.png"] == rows["grey.png"]  # same prediction, same truth
    summary = (tmp_path / "out/summary.json").read_text()
    assert "mask not scored: its size 8x6 differs from the image's 16x12" in summary


def test_multiclass_mask_ids(tmp_path, capsys):
    labels = np.zeros((H, W), np.uint8)
    labels[2:6, 3:10], labels[8:11, 1:5] = 1, 2
    save(tmp_path / "images/m.png", photo())
    save(tmp_path / "masks/m.png", labels)
    loader = load_dataset(
        tmp_path / "images", tmp_path / "masks", image_size=(H, W), num_classes=3, augmentation_mode="none"
    )
    assert torch.equal(next(iter(loader))[1][0], torch.from_numpy(labels).long())
    checkpoint = write_checkpoint(tiny_model(num_classes=3), tmp_path / "multi.pth")
    code, _ = run_main(
        inference_main,
        [
            "--checkpoint",
            checkpoint,
            "--input",
            tmp_path / "images",
            "--mask-dir",
            tmp_path / "masks",
            "--output",
            tmp_path / "out",
            *FAST,
        ],
        capsys,
    )
    assert code == 0 and (tmp_path / "out/metrics.csv").read_text().splitlines()[1].startswith("m.png,m.png,")

    fractions = np.zeros((H, W), np.float32)
    fractions[0, 0] = 0.5  # a float TIFF: 0.5 is no class id (the message used to say "values 0")
    save(tmp_path / "masks/m.png", Image.fromarray(fractions), format="TIFF")
    with pytest.raises(DatasetError, match=r"^masks/m.png: values 0.5 are not class ids 0..2"):
        load_dataset(tmp_path / "images", tmp_path / "masks", image_size=(H, W), num_classes=3)


# ---- folders --------------------------------------------------------------------------------


def test_unicode_and_spaces_in_folder_and_file_names(tmp_path, tiny_checkpoint, capsys):
    root = tmp_path / "dätä sét 1"
    save(root / "ímages ü/fötö 1.png", photo())
    save(root / "mäsks ü/fötö 1.png", box_mask())
    save(root / "ímages ü/写真.jpg", photo(seed=1))
    save(root / "mäsks ü/写真_mask.png", box_mask())
    loader = load_dataset(root / "ímages ü", root / "mäsks ü", image_size=8, batch_size=2)
    assert sorted(image.name for image, _ in loader.dataset.pairs) == ["fötö 1.png", "写真.jpg"]
    assert next(iter(loader))[0].shape == (2, 3, 8, 8)

    out = tmp_path / "öut pút"
    assert (
        run_main(
            inference_main,
            [
                "--checkpoint",
                tiny_checkpoint,
                "--input",
                root / "ímages ü",
                "--mask-dir",
                root / "mäsks ü",
                "--output",
                out,
                *FAST,
            ],
            capsys,
        )[0]
        == 0
    )
    assert (out / "fötö 1.png").exists() and (out / "写真_overlay.png").exists()
    assert len((out / "metrics.csv").read_text().splitlines()) == 4  # header, two images, mean
    assert (
        run_main(
            prepare_data.main,
            ["--action", "validate", "--image-dir", root / "ímages ü", "--mask-dir", root / "mäsks ü"],
            capsys,
        )[0]
        == 0
    )


def test_symlinks_are_followed_and_broken_ones_named(tmp_path, predictor):
    real = good_pairs(tmp_path / "real", count=3)
    linked = tmp_path / "linked"
    (linked / "masks").mkdir(parents=True)
    (linked / "images").symlink_to(real / "images", target_is_directory=True)  # a linked folder
    for index in range(3):
        (linked / "masks" / f"ok_{index}.png").symlink_to(real / "masks" / f"ok_{index}.png")  # linked files
    loader = load_dataset(linked / "images", linked / "masks", image_size=8)
    assert len(loader.dataset) == 3

    (real / "images/gone.png").symlink_to(real / "images/deleted.png")
    (real / "images/loop.png").symlink_to(real / "images/loop.png")
    for stem in ("gone", "loop"):
        save(real / f"masks/{stem}.png", box_mask())
    with pytest.raises(DatasetError) as caught:
        load_dataset(linked / "images", real / "masks", image_size=8)
    message = str(caught.value)
    assert "images/gone.png: broken symbolic link" in message and "images/loop.png: broken symbolic link" in message

    summary = run_batch(predictor, linked / "images", tmp_path / "out", OutputOptions(), progress=False)
    assert summary.count == 3
    assert sorted(Path(f["file"]).name for f in summary.failures) == ["gone.png", "loop.png"]
    assert all("broken symbolic link" in f["reason"] for f in summary.failures)


def test_empty_folder_through_every_entry_point(tmp_path, tiny_checkpoint, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")  # non-image files do not count
    code, err = run_main(
        inference_main, ["--checkpoint", tiny_checkpoint, "--input", empty, "--output", tmp_path / "out", *FAST], capsys
    )
    assert code == 2
    assert_one_line_error(err, f"error: {empty}: no images (.jpg")

    for action in ("analyze", "validate"):
        code, _ = run_main(prepare_data.main, ["--action", action, "--image-dir", empty, "--mask-dir", empty], capsys)
        assert code == 1, action
    code, err = run_main(
        prepare_data.main, ["--action", "organize", "--source-dir", empty, "--output-dir", tmp_path / "org"], capsys
    )
    assert code == 1 and "no image/mask pairs to organize" in err and not (tmp_path / "org").exists()

    code, err = run_main(
        train_main,
        ["--image-dir", empty, "--mask-dir", empty, "--output-dir", tmp_path / "run", "--no-progress", *TINY_FLAGS],
        capsys,
    )
    assert code == 1
    assert_one_line_error(err, f"error: {empty}: no images")


def test_train_py_names_bad_files_without_a_traceback(tmp_path):
    good_pairs(tmp_path, count=3)
    (tmp_path / "images/empty.png").write_bytes(b"")
    save(tmp_path / "masks/empty.png", box_mask())
    save(tmp_path / "masks/ok_1.png", box_mask(6, 8))
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--image-dir",
            str(tmp_path / "images"),
            "--mask-dir",
            str(tmp_path / "masks"),
            "--output-dir",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--no-progress",
            *TINY_FLAGS,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=ONE_THREAD_ENV,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: 2 problems in the dataset:")
    assert "images/empty.png: unreadable or truncated image (empty file, 0 bytes)" in result.stderr
    assert "masks/ok_1.png: size 8x6 differs from its image images/ok_1.png (16x12)" in result.stderr
    assert not list((tmp_path / "run").glob("*.pth"))


# ---- property-based: any bytes, any image -----------------------------------------------------

SAVABLE = {  # PIL format -> (suffix, modes it can write)
    "PNG": (".png", ["RGB", "L", "P", "RGBA", "LA", "I;16", "1"]),
    "JPEG": (".jpg", ["RGB", "L", "CMYK"]),
    "BMP": (".bmp", ["RGB", "L", "P", "1"]),
    "TIFF": (".tif", ["RGB", "L", "P", "RGBA", "CMYK", "I;16", "1"]),
}


@st.composite
def image_files(draw) -> tuple[bytes, str]:
    """(content, suffix): random bytes, a valid image of random format/mode/size, or one damaged
    by a cut or a few overwritten bytes."""
    kind = draw(st.sampled_from(["bytes", "image", "damaged"]))
    if kind == "bytes":
        return draw(st.binary(max_size=400)), draw(st.sampled_from(IMAGE_EXTENSIONS))
    fmt = draw(st.sampled_from(sorted(SAVABLE)))
    suffix, modes = SAVABLE[fmt]
    mode = draw(st.sampled_from(modes))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    content = bytearray(buffer.getvalue())
    if kind == "damaged":
        if draw(st.booleans()):
            content = content[: draw(st.integers(0, len(content) - 1))]
        else:
            for _ in range(draw(st.integers(1, 6))):
                content[draw(st.integers(0, len(content) - 1))] = draw(st.integers(0, 255))
    return bytes(content), suffix


def _size_or_none(path: Path):
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - only a hint for the mask's size
        return None


def _assert_clean_error(error: DatasetError, path: Path) -> None:
    message = str(error)
    # usually "<file>: <problem>"; a header that decodes to another size than its pair's is a size mismatch
    assert display_path(path) in message and "\n" not in message, message


# PIL warns about some damaged TIFF tags before failing or reading around them: expected here
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file=image_files(), as_mask=st.booleans())
def test_loader_uses_or_names_any_file(file, as_mask):
    content, suffix = file
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "masks").mkdir()
        path = root / ("masks" if as_mask else "images") / f"x{suffix}"
        path.write_bytes(content)
        size = _size_or_none(path)
        if size is None or size[0] * size[1] > 10_000:  # a damaged header may claim any size: keep ours small
            size = (4, 4)
        other = root / ("images" if as_mask else "masks") / "x.png"
        Image.fromarray(box_mask(size[1], size[0]) if as_mask else photo(size[1], size[0])).save(other)
        try:
            loader = load_dataset(root / "images", root / "masks", image_size=8, augmentation_mode="none")
        except DatasetError as error:
            _assert_clean_error(error, path)
        else:
            images, masks = next(iter(loader))
            assert images.shape == (1, 3, 8, 8) and masks.shape == (1, 1, 8, 8)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file=image_files())
def test_inference_segments_or_names_any_file(file, predictor):
    content, suffix = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in put{suffix}"
        path.write_bytes(content)
        try:
            result = segment_file(predictor, path, Path(tmp) / "out", OutputOptions())
        except DatasetError as error:
            _assert_clean_error(error, path)
        else:
            width, height = _size_or_none(path)
            assert np.asarray(Image.open(result.written["mask"])).shape == (height, width)


# ---- memory ---------------------------------------------------------------------------------


def resident_bytes() -> int:
    """This process's resident memory now (not its peak), as a leak would grow it. Freed heap
    pages are handed back to the OS first (glibc's malloc_trim): after a long test session the
    allocator holds enough free memory to absorb a leak without any growth in resident memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measure as it is
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryWatchingPredictor(Predictor):
    """Notes the resident memory before each batch; with ``leak``, also keeps every batch's images
    and predictions alive, the kind of bug the check must catch."""

    leak = False

    def predict(self, images, **kwargs):
        self.rss.append(resident_bytes())
        predictions = super().predict(images, **kwargs)
        if self.leak:
            self.kept.append((images, predictions))
        return predictions


@pytest.fixture(scope="module")
def five_hundred_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    base = photo(96, 128)  # big enough that keeping each image's arrays shows (~150 KB per image)
    for index in range(500):
        Image.fromarray(np.roll(base, index, axis=1)).save(folder / f"img_{index:03d}.png", compress_level=1)
    return folder


def _batch_memory_growth(checkpoint, folder, output_dir, leak: bool) -> tuple[int, int]:
    """(resident memory after the first 50 images, its growth from there to the end of 500)."""
    predictor = MemoryWatchingPredictor.from_checkpoint(checkpoint, device="cpu", options=PredictorOptions(steps=2))
    predictor.rss, predictor.kept, predictor.leak = [], [], leak
    summary = run_batch(predictor, folder, output_dir, OutputOptions(), batch_size=10, progress=False)
    end = resident_bytes()
    assert summary.count == 500 and len(predictor.rss) == 50
    after_50 = predictor.rss[5]  # before the 6th batch: 50 images segmented and saved
    return after_50, end - after_50


def _flat(after_50: int, growth: int) -> bool:
    # The bar (10 %), and an absolute one: 8 MB over 450 images is < 19 KB an image,
    # less than one leaked copy of a 96x128 input (37 KB).
    return growth <= 0.10 * after_50 and growth <= 8 * 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_batch_inference_memory_stays_flat_over_500_images(tiny_checkpoint, five_hundred_images, tmp_path):
    after_50, growth = _batch_memory_growth(tiny_checkpoint, five_hundred_images, tmp_path / "out", leak=False)
    assert _flat(after_50, growth), f"resident memory grew {growth / 2**20:.1f} MB after the first 50 images"
    assert len(list((tmp_path / "out").glob("*_overlay.png"))) == 500


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_memory_check_catches_a_leak(tiny_checkpoint, five_hundred_images, tmp_path):
    after_50, growth = _batch_memory_growth(tiny_checkpoint, five_hundred_images, tmp_path / "out", leak=True)
    assert not _flat(after_50, growth), f"a leak of {growth / 2**20:.1f} MB went unnoticed"


# ---- command-line misuse ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "unknown flag",
        "missing --checkpoint",
        "not a number",
        "interactive + mask dir",
        "interactive + batch",
        "missing mask dir",
        "checkpoint is a folder",
        "output is a file",
        "output inside a file",
    ],
)
def test_inference_misuse_is_one_line_exit_2(case, tmp_path, tiny_checkpoint, capsys):
    good_pairs(tmp_path)
    image, images = tmp_path / "images/ok_0.png", tmp_path / "images"
    before = image.read_bytes()
    ckpt = ["--checkpoint", tiny_checkpoint]
    argv, expected = {
        "unknown flag": ([*ckpt, "--input", image, "--bogus"], "inference.py: error: unrecognized arguments: --bogus"),
        "missing --checkpoint": (["--input", image], "the following arguments are required: --checkpoint"),
        "not a number": (
            [*ckpt, "--input", image, "--steps", "ten"],
            "argument --steps: expected an integer, got 'ten'",
        ),
        "interactive + mask dir": (
            [*ckpt, "--interactive", "--mask-dir", images],
            "--mask-dir works in batch mode only",
        ),
        "interactive + batch": ([*ckpt, "--interactive", "--batch"], "--interactive reads image paths at its prompt"),
        "missing mask dir": ([*ckpt, "--input", images, "--mask-dir", tmp_path / "nope"], "nope: no such folder"),
        "checkpoint is a folder": (["--checkpoint", images, "--input", image], "a folder, not a checkpoint file"),
        "output is a file": ([*ckpt, "--input", image, "--output", image], "exists and is not a folder"),
        "output inside a file": ([*ckpt, "--input", images, "--output", image / "out"], "ok_0.png is not a folder"),
    }[case]
    code, err = run_main(inference_main, [*argv, *FAST], capsys)
    assert code == 2
    assert_one_line_error(err, expected)
    assert image.read_bytes() == before and sorted(p.name for p in images.iterdir()) == ["ok_0.png", "ok_1.png"]


@pytest.mark.parametrize(
    "case",
    [
        "unknown flag",
        "missing --action",
        "fix-issues with analyze",
        "organize flags with create-sample",
        "missing source dir",
        "output dir is a file",
        "zero samples",
        "threshold out of range",
    ],
)
def test_prepare_data_misuse_is_one_line_exit_2(case, tmp_path, capsys):
    good_pairs(tmp_path)
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    a_file = images / "ok_0.png"
    argv, expected = {
        "unknown flag": (
            ["--action", "validate", "--image-dir", images, "--mask-dir", masks, "--bogus"],
            "unrecognized arguments: --bogus",
        ),
        "missing --action": ([], "the following arguments are required: --action"),
        "fix-issues with analyze": (
            ["--action", "analyze", "--image-dir", images, "--mask-dir", masks, "--fix-issues"],
            "--action analyze does not use --fix-issues",
        ),
        "organize flags with create-sample": (
            ["--action", "create-sample", "--output-dir", out, "--source-dir", images, "--train-split", "0.5"],
            "--action create-sample does not use --source-dir and --train-split",
        ),
        "missing source dir": (
            ["--action", "organize", "--source-dir", tmp_path / "nope", "--output-dir", out],
            "--source-dir " + str(tmp_path / "nope") + ": folder does not exist",
        ),
        "output dir is a file": (["--action", "create-sample", "--output-dir", a_file], "exists and is not a folder"),
        "zero samples": (["--action", "create-sample", "--output-dir", out, "--num-samples", "0"], "must be >= 1"),
        "threshold out of range": (
            ["--action", "validate", "--image-dir", images, "--mask-dir", masks, "--mask-threshold", "1.5"],
            "--mask-threshold must be in [0, 1)",
        ),
    }[case]
    code, err = run_main(prepare_data.main, argv, capsys)
    assert code == 2
    assert_one_line_error(err, "prepare_data.py: error: ", expected)
    assert not out.exists() and not (tmp_path / "masks_backup").exists()


def test_prepare_data_unwritable_output_is_one_line_exit_1(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = run_main(prepare_data.main, ["--action", "create-sample", "--output-dir", blocker / "sample"], capsys)
    assert code == 1
    assert_one_line_error(err, f"error: {blocker / 'sample'}", "Not a directory")


@pytest.mark.parametrize(
    "script, argv, expected",
    [
        ("inference.py", ["--checkpoint", "x.pth", "--bogus"], "inference.py: error: unrecognized arguments: --bogus"),
        (
            "prepare_data.py",
            ["--action", "create-sample", "--output-dir", "x", "--fix-issues"],
            "prepare_data.py: error: --action create-sample does not use --fix-issues",
        ),
    ],
)
def test_scripts_misused_from_the_shell(script, argv, expected, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / script), *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=ONE_THREAD_ENV,
    )
    assert result.returncode == 2
    assert_one_line_error(result.stderr, expected)
    assert list(tmp_path.iterdir()) == []
