"""prepare_data.py end to end in temp dirs: create-sample, analyze, validate (+ --fix-issues), organize."""

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import prepare_data
from utils.data_utils import SegmentationDataset, load_dataset

REPO = Path(__file__).resolve().parents[1]


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def grey_mask(height: int, width: int) -> np.ndarray:
    """A mask with anti-aliased grey edges around a bright box."""
    mask = np.zeros((height, width), np.uint8)
    top, bottom, left, right = height // 4, height // 2, width // 4, 3 * width // 4
    mask[top:bottom, left:right] = 255
    mask[top - 1, left:right] = mask[bottom, left:right] = 100
    return mask


def run(*args: str) -> int:
    return prepare_data.main([str(arg) for arg in args])


def test_create_sample_writes_a_loadable_dataset(tmp_path, capsys):
    assert (
        run(
            "--action",
            "create-sample",
            "--output-dir",
            tmp_path / "sample",
            "--num-samples",
            5,
            "--image-size",
            32,
            "--seed",
            1,
        )
        == 0
    )
    assert "Wrote 5 synthetic pairs" in capsys.readouterr().out
    assert len(list((tmp_path / "sample/images").glob("*.png"))) == 5
    dataset = SegmentationDataset(tmp_path / "sample/images", tmp_path / "sample/masks", image_size=32)
    assert len(dataset) == 5 and set(dataset[0][1].unique().tolist()) == {0.0, 1.0}


def test_create_sample_multiclass(tmp_path):
    assert (
        run(
            "--action",
            "create-sample",
            "--output-dir",
            tmp_path,
            "--num-samples",
            3,
            "--image-size",
            16,
            "--num-classes",
            3,
        )
        == 0
    )
    dataset = SegmentationDataset(tmp_path / "images", tmp_path / "masks", 16, num_classes=3)
    assert dataset[0][1].max() <= 2


def test_analyze_reports_statistics_and_writes_files(tiny_dataset, tmp_path, capsys):
    save(tiny_dataset / "images/wide.jpg", np.zeros((24, 64, 3), np.uint8))
    save(tiny_dataset / "masks/wide.png", grey_mask(24, 64))
    save(tiny_dataset / "images/lonely.png", np.zeros((24, 32, 3), np.uint8))
    out = tmp_path / "analysis"
    assert (
        run(
            "--action",
            "analyze",
            "--image-dir",
            tiny_dataset / "images",
            "--mask-dir",
            tiny_dataset / "masks",
            "--output-dir",
            out,
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "# Dataset analysis" in printed and "## Recommendations" in printed
    summary = json.loads((out / "analysis.json").read_text())
    assert summary["counts"] == {"images": 8, "masks": 7, "pairs": 7, "usable_pairs": 7}
    assert summary["width"]["max"] == 64 and summary["height"]["min"] == 24
    assert summary["aspect_ratio"]["max"] == pytest.approx(64 / 24)
    assert summary["distinct_sizes"] == 2
    assert 0 < summary["foreground_fraction"]["mean"] < 1
    assert set(summary["class_histogram"]) == {"0", "1"}
    assert summary["issue_counts"] == {"missing_mask": 1, "grey_mask": 1}
    assert any("small dataset" in advice for advice in summary["recommendations"])
    assert (out / "analysis.md").read_text().startswith("# Dataset analysis")
    assert Image.open(out / "analysis.png").size[0] > 100


def test_validate_clean_dataset_passes(tiny_dataset, capsys):
    assert (
        run("--action", "validate", "--image-dir", tiny_dataset / "images", "--mask-dir", tiny_dataset / "masks") == 0
    )
    assert "OK: no problems found" in capsys.readouterr().out


def test_validate_lists_every_problem(tiny_dataset, tmp_path, capsys):
    images, masks = tiny_dataset / "images", tiny_dataset / "masks"
    save(images / "lonely.png", np.zeros((24, 32, 3), np.uint8))  # image without mask
    save(masks / "orphan_mask.png", grey_mask(24, 32))  # mask without image
    (masks / "sample_0000.png").write_bytes(b"not an image")  # unreadable
    save(masks / "sample_0001.png", grey_mask(20, 30))  # size mismatch
    save(masks / "sample_0002.png", np.zeros((24, 32), np.uint8))  # all background
    save(masks / "sample_0003.png", grey_mask(24, 32))  # grey values
    (images / "sample_0005.png").write_bytes((images / "sample_0003.png").read_bytes())  # duplicate
    path = images / "sample_0004.png"  # truncated (header intact)
    path.write_bytes(path.read_bytes()[:200])
    assert (
        run("--action", "validate", "--image-dir", images, "--mask-dir", masks, "--output-dir", tmp_path / "report")
        == 1
    )
    printed = capsys.readouterr().out
    for expected in [
        "ERROR missing_mask (1)",
        "images/lonely.png: no mask",
        "ERROR missing_image (1)",
        "masks/orphan_mask.png: no image",
        "ERROR unreadable (2)",
        "masks/sample_0000.png: unreadable",
        "images/sample_0004.png: unreadable",
        "ERROR size_mismatch (1)",
        "masks/sample_0001.png: size 30x20 differs from its image",
        "warning empty_mask (1)",
        "masks/sample_0002.png: mask is all background",
        "warning grey_mask",
        "masks/sample_0003.png: 3 grey levels",
        "warning duplicate_image (1)",
        "images/sample_0003.png, images/sample_0005.png: identical files",
        "Run again with --fix-issues",
    ]:
        assert expected in printed, expected
    report = json.loads((tmp_path / "report/validation.json").read_text())
    assert not report["ok"] and len(report["issues"]) == 9  # sample_0001 is grey too


def test_fix_issues_repairs_masks_and_keeps_byte_identical_backups(tiny_dataset):
    images, masks = tiny_dataset / "images", tiny_dataset / "masks"
    resized = save(masks / "sample_0001.png", grey_mask(12, 16))  # half size, grey edges
    (masks / "sample_0002.png").unlink()
    jpeg = save(masks / "sample_0002.jpg", grey_mask(24, 32), quality=70)  # lossy format
    originals = {path.name: path.read_bytes() for path in (resized, jpeg)}
    untouched = (masks / "sample_0003.png").read_bytes()

    assert run("--action", "validate", "--image-dir", images, "--mask-dir", masks, "--fix-issues") == 0
    backup_dir = tiny_dataset / "masks_backup"
    for name, content in originals.items():
        assert (backup_dir / name).read_bytes() == content  # byte-identical backup
    assert not jpeg.exists()  # replaced by a PNG; the JPEG lives on in the backup
    for name in ("sample_0001.png", "sample_0002.png"):
        fixed = np.asarray(Image.open(masks / name))
        assert fixed.shape == (24, 32) and set(np.unique(fixed)) <= {0, 255}
    assert (masks / "sample_0003.png").read_bytes() == untouched  # clean masks are not rewritten
    assert sorted(p.name for p in backup_dir.iterdir()) == sorted(originals)
    load_dataset(images, masks, image_size=8)  # the dataset loads now

    # A second run finds nothing to fix and never overwrites the first backups.
    save(masks / "sample_0001.png", grey_mask(24, 32))
    assert run("--action", "validate", "--image-dir", images, "--mask-dir", masks, "--fix-issues") == 0
    assert (backup_dir / "sample_0001.png").read_bytes() == originals["sample_0001.png"]
    assert (backup_dir / "sample_0001.1.png").exists()


def test_fix_issues_keeps_every_original_byte_for_byte(tiny_dataset, tmp_path):
    """Every file there before --fix-issues is afterwards unchanged in place or byte-identical in the
    backup; a mask that is a symbolic link is replaced by the fix, never written through."""
    images, masks = tiny_dataset / "images", tiny_dataset / "masks"
    save(masks / "sample_0001.png", grey_mask(12, 16))  # wrong size, grey edges
    (masks / "sample_0002.png").unlink()
    save(masks / "sample_0002.jpg", grey_mask(24, 32), quality=70)  # lossy format
    save(masks / "sample_0003.png", grey_mask(24, 32))  # grey edges
    (masks / "sample_0004.png").write_bytes(b"garbage")  # unreadable: not fixable, left alone
    elsewhere = save(tmp_path / "shared/sample_0005.png", grey_mask(24, 32))  # e.g. the original dataset
    (masks / "sample_0005.png").unlink()
    (masks / "sample_0005.png").symlink_to(elsewhere)
    before = {path: path.read_bytes() for path in [*images.iterdir(), *masks.iterdir(), elsewhere]}

    assert run("--action", "validate", "--image-dir", images, "--mask-dir", masks, "--fix-issues") == 1  # 0004 remains
    changed = sorted(path.name for path, content in before.items() if not path.exists() or path.read_bytes() != content)
    assert changed == ["sample_0001.png", "sample_0002.jpg", "sample_0003.png", "sample_0005.png"]
    backups = [path.read_bytes() for path in (tiny_dataset / "masks_backup").iterdir()]
    assert sorted(backups) == sorted(before[masks / name] for name in changed)  # each original, byte for byte
    assert elsewhere.read_bytes() == before[elsewhere] and not (masks / "sample_0005.png").is_symlink()
    assert sorted(p.name for p in masks.iterdir()) == [f"sample_{i:04d}.png" for i in range(6)]  # no temp files


def test_fix_issues_on_a_full_disk_leaves_the_mask_whole(tiny_dataset, monkeypatch, capsys):
    images, masks = tiny_dataset / "images", tiny_dataset / "masks"
    mask = save(masks / "sample_0001.png", grey_mask(24, 32))
    original, names = mask.read_bytes(), sorted(p.name for p in masks.iterdir())

    def disk_full(image, fp, format=None, **params):  # PIL's save: opens (truncating) a path, writes, fails
        f = open(fp, "wb") if isinstance(fp, (str, Path)) else fp
        f.write(b"\x89PNG half a mask")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    assert run("--action", "validate", "--image-dir", images, "--mask-dir", masks, "--fix-issues") == 1
    assert mask.read_bytes() == original
    assert sorted(p.name for p in masks.iterdir()) == names
    assert "masks/sample_0001.png: not fixed, left unchanged: No space left on device" in capsys.readouterr().out


def test_fix_issues_backup_goes_to_output_dir_when_given(tiny_dataset, tmp_path):
    save(tiny_dataset / "masks/sample_0001.png", grey_mask(24, 32))
    assert (
        run(
            "--action",
            "validate",
            "--image-dir",
            tiny_dataset / "images",
            "--mask-dir",
            tiny_dataset / "masks",
            "--fix-issues",
            "--output-dir",
            tmp_path / "out",
        )
        == 0
    )
    assert (tmp_path / "out/backup/sample_0001.png").exists()


def flat_source(root: Path, count: int = 10) -> Path:
    """Images with ``_mask`` / ``_gt`` masks side by side, plus one unpaired image."""
    for index in range(count):
        save(root / f"img_{index:02d}.jpg", np.full((8, 8, 3), index * 20, np.uint8))
        suffix = "_mask" if index % 2 else "_gt"
        save(root / f"img_{index:02d}{suffix}.png", grey_mask(8, 8))
    save(root / "stray.png", np.zeros((8, 8, 3), np.uint8))
    return root


def test_organize_flat_folder_copies_a_seeded_split(tmp_path, capsys):
    source = flat_source(tmp_path / "raw")
    before = sorted(p.name for p in source.iterdir())
    assert (
        run(
            "--action",
            "organize",
            "--source-dir",
            source,
            "--output-dir",
            tmp_path / "out",
            "--train-split",
            0.8,
            "--seed",
            3,
        )
        == 0
    )
    assert "skipped: raw/stray.png: no mask" in capsys.readouterr().out
    out = tmp_path / "out"
    train = sorted(p.stem for p in (out / "train/images").iterdir())
    val = sorted(p.stem for p in (out / "val/images").iterdir())
    assert len(train) == 8 and len(val) == 2 and set(train).isdisjoint(val)
    # masks renamed to their image's stem, so the output is the standard pre-split layout
    assert sorted(p.name for p in (out / "val/masks").iterdir()) == [f"{stem}.png" for stem in val]
    assert sorted(p.name for p in source.iterdir()) == before  # copies, not moves
    train_loader, val_loader = load_dataset(data_dir=out, image_size=8)
    assert len(train_loader.dataset) == 8 and len(val_loader.dataset) == 2

    assert (
        run(
            "--action",
            "organize",
            "--source-dir",
            source,
            "--output-dir",
            tmp_path / "again",
            "--train-split",
            0.8,
            "--seed",
            3,
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "again/val/images").iterdir()) == [f"{s}.jpg" for s in val]


def test_organize_images_and_masks_folders_and_refuses_to_overwrite(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert run("--action", "organize", "--source-dir", tiny_dataset, "--output-dir", out, "--train-split", 0.5) == 0
    assert len(list((out / "train/masks").iterdir())) == 3
    assert run("--action", "organize", "--source-dir", tiny_dataset, "--output-dir", out) == 1
    assert "already exists and is not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--action", "analyze", "--image-dir", "."], "--action analyze needs --mask-dir"),
        (["--action", "organize", "--output-dir", "x"], "--action organize needs --source-dir"),
        (["--action", "create-sample"], "--action create-sample needs --output-dir"),
        (
            ["--action", "validate", "--image-dir", "/no/such/dir", "--mask-dir", "."],
            "--image-dir /no/such/dir: folder does not exist",
        ),
        (
            ["--action", "organize", "--source-dir", ".", "--output-dir", "x", "--train-split", "1.5"],
            "must be between 0 and 1",
        ),
        (["--action", "shuffle"], "invalid choice"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        prepare_data.main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_script_runs_as_a_command(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "prepare_data.py"),
            "--action",
            "create-sample",
            "--output-dir",
            str(tmp_path),
            "--num-samples",
            "2",
            "--image-size",
            "16",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "masks").iterdir())) == 2


# ---- class-id masks, ignore label, EXIF --------------------------------------------------------


def test_class_id_masks_are_named_and_never_binarised(tmp_path, capsys):
    from tests.helpers import write_class_id_dataset

    data = write_class_id_dataset(tmp_path / "data", count=3)
    assert run("--action", "analyze", "--image-dir", data / "images", "--mask-dir", data / "masks") == 0
    report = capsys.readouterr().out
    hint = (
        "the masks look like 3 class ids (values 0..2), not binary masks: pass --num-classes 3 and --ignore-index 255"
    )
    assert hint in report
    assert "grey_mask" not in report and "empty_mask" not in report and "fix-issues" not in report
    # a mask at the wrong size: --fix-issues resizes it, keeping its class ids (and its unlabelled 255s)
    original = np.asarray(Image.open(data / "masks" / "01.png"))
    Image.fromarray(original).resize((20, 12), Image.Resampling.NEAREST).save(data / "masks" / "01.png")
    assert (
        run("--action", "validate", "--image-dir", data / "images", "--mask-dir", data / "masks", "--fix-issues") == 0
    )
    assert hint in capsys.readouterr().out
    fixed = np.asarray(Image.open(data / "masks" / "01.png"))
    assert fixed.shape == original.shape and set(np.unique(fixed)) == {0, 1, 2, 255}


def test_analyze_reports_the_ignored_fraction(tmp_path, capsys):
    from tests.helpers import write_class_id_dataset

    data = write_class_id_dataset(tmp_path / "data", count=2, size=(24, 40), ignore_rows=6)
    assert (
        run(
            "--action",
            "analyze",
            "--image-dir",
            data / "images",
            "--mask-dir",
            data / "masks",
            "--num-classes",
            3,
            "--ignore-index",
            255,
            "--output-dir",
            tmp_path / "report",
        )
        == 0
    )
    assert "ignored fraction (value 255): min 0.250, mean 0.250, max 0.250" in capsys.readouterr().out
    summary = json.loads((tmp_path / "report" / "analysis.json").read_text())
    assert summary["ignored_fraction"]["mean"] == pytest.approx(0.25) and summary["issue_counts"] == {}


def test_exif_rotated_photo_matches_its_mask_in_validate(tmp_path, capsys):
    stored = np.zeros((12, 20, 3), np.uint8)  # landscape pixels of a photo displayed as 12 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 270 degrees clockwise to display
    save(tmp_path / "images" / "phone.jpg", stored, exif=exif)
    mask = np.zeros((20, 12), np.uint8)
    mask[5:10, 3:9] = 255
    save(tmp_path / "masks" / "phone.png", mask)
    assert run("--action", "validate", "--image-dir", tmp_path / "images", "--mask-dir", tmp_path / "masks") == 0
    assert "size_mismatch" not in capsys.readouterr().out
