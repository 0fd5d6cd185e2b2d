"""Inference end to end on tiny checkpoints: single, batch (with a corrupt file), interactive, errors."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.checkpoint import CheckpointError, save_checkpoint
from src.device import select_runtime
from src.inference import InferenceError, OutputOptions, Predictor, PredictorOptions, run_interactive
from src.inference.cli import main
from tests.helpers import ONE_THREAD_ENV, tiny_model, write_checkpoint, write_image

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "3", "--no-progress"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    sizes = [(37, 23), (16, 16), (50, 41)]  # (W, H), none the model's own 16x16 but one
    for i, size in enumerate(sizes):
        write_image(images / f"img_{i}.png", size, seed=i)
        rng = np.random.default_rng(10 + i)
        Image.fromarray((rng.random((size[1], size[0])) > 0.5).astype(np.uint8) * 255).save(masks / f"img_{i}_mask.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    write_image(images / "grey.jpg", (20, 30), mode="L", seed=7)
    return {
        "root": root,
        "images": images,
        "masks": masks,
        "sizes": {f"img_{i}": size for i, size in enumerate(sizes)} | {"grey": (20, 30)},
        "checkpoint": write_checkpoint(tiny_model(), root / "tiny.pth"),
    }


def read_png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def run_cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "inference.py", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=ONE_THREAD_ENV,
    )


# -- single image -----------------------------------------------------------------------------


def test_single_image_end_to_end_keeps_size_and_stem(workspace, tmp_path):
    source = workspace["images"] / "img_0.png"
    result = run_cli(
        "--checkpoint",
        str(workspace["checkpoint"]),
        "--input",
        str(source),
        "--output",
        str(tmp_path),
        "--ensemble",
        "2",
        "--mc-dropout",
        "--save-probs",
        "--visualize-process",
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    width, height = workspace["sizes"]["img_0"]
    mask = read_png(tmp_path / "img_0.png")
    assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
    for name in ("img_0_overlay.png", "img_0_prob.png", "img_0_uncertainty.png"):
        assert read_png(tmp_path / name).shape[:2] == (height, width), name
    probs = np.load(tmp_path / "img_0_prob.npy")
    assert probs.shape == (1, height, width) and 0 <= probs.min() and probs.max() <= 1
    assert ((probs[0] > 0.5) == (mask > 0)).all()  # the mask is the thresholded probability map
    uncertainty = np.load(tmp_path / "img_0_uncertainty.npy")
    assert uncertainty.shape == (height, width) and 0 <= uncertainty.min() and uncertainty.max() <= 1
    with Image.open(tmp_path / "img_0_process.gif") as gif:
        assert gif.n_frames == 3  # one per DDIM step (fewer steps than the 8 frames asked)
    assert (tmp_path / "img_0_process.png").stat().st_size > 0
    assert str(tmp_path / "img_0.png") in result.stdout
    # the banner says how the ensemble samples: with --mc-dropout, each sample its own dropout draw
    assert tiny_model().can_mc_dropout and "ensemble 2 (MC dropout), seed 0" in result.stdout


def test_overlay_is_default_and_can_be_turned_off(workspace, tmp_path):
    source = str(workspace["images"] / "img_1.png")
    assert (
        main(["--checkpoint", str(workspace["checkpoint"]), "--input", source, "--output", str(tmp_path / "a"), *FAST])
        == 0
    )
    assert (
        main(
            [
                "--checkpoint",
                str(workspace["checkpoint"]),
                "--input",
                source,
                "--output",
                str(tmp_path / "b"),
                "--no-overlay",
                *FAST,
            ]
        )
        == 0
    )
    assert (tmp_path / "a" / "img_1_overlay.png").exists()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["img_1.png"]  # no uncertainty with one sample


def test_same_seed_same_mask_other_seed_other_sample(workspace, tmp_path):
    def probabilities(seed, out):
        argv = [
            "--checkpoint",
            str(workspace["checkpoint"]),
            "--input",
            str(workspace["images"] / "img_2.png"),
            "--output",
            str(tmp_path / out),
            "--seed",
            str(seed),
            "--save-probs",
            *FAST,
        ]
        assert main(argv) == 0
        return read_png(tmp_path / out / "img_2.png"), np.load(tmp_path / out / "img_2_prob.npy")

    mask_a, probs_a = probabilities(5, "a")
    mask_b, probs_b = probabilities(5, "b")
    _, probs_c = probabilities(6, "c")
    assert (mask_a == mask_b).all() and (probs_a == probs_b).all()
    assert not np.allclose(probs_a, probs_c)


def test_grayscale_input_and_grayscale_checkpoint(workspace, tmp_path):
    grey_ckpt = write_checkpoint(tiny_model(in_channels=1), tmp_path / "grey.pth")
    for checkpoint, source in ((workspace["checkpoint"], "grey.jpg"), (grey_ckpt, "img_0.png")):
        out = tmp_path / Path(checkpoint).stem
        assert (
            main(
                [
                    "--checkpoint",
                    str(checkpoint),
                    "--input",
                    str(workspace["images"] / source),
                    "--output",
                    str(out),
                    *FAST,
                ]
            )
            == 0
        )
        stem = Path(source).stem
        width, height = workspace["sizes"][stem]
        assert read_png(out / f"{stem}.png").shape == (height, width)
        assert read_png(out / f"{stem}_overlay.png").shape == (height, width, 3)


def test_multiclass_masks_are_class_ids_plus_colour(workspace, tmp_path):
    checkpoint = write_checkpoint(tiny_model(num_classes=3), tmp_path / "multi.pth")
    assert (
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(workspace["images"] / "img_0.png"),
                "--output",
                str(tmp_path),
                "--save-probs",
                *FAST,
            ]
        )
        == 0
    )
    ids = read_png(tmp_path / "img_0.png")
    width, height = workspace["sizes"]["img_0"]
    assert ids.shape == (height, width) and ids.dtype == np.uint8 and ids.max() <= 2
    assert read_png(tmp_path / "img_0_color.png").shape == (height, width, 3)
    probs = np.load(tmp_path / "img_0_prob.npy")
    assert probs.shape == (3, height, width) and (probs.argmax(0) == ids).all()


def test_image_size_override(workspace, tmp_path):
    argv = [
        "--checkpoint",
        str(workspace["checkpoint"]),
        "--input",
        str(workspace["images"] / "img_0.png"),
        "--output",
        str(tmp_path),
        "--image-size",
        "32",
        *FAST,
    ]
    assert main(argv) == 0
    assert read_png(tmp_path / "img_0.png").shape == (23, 37)


# -- predictor API ----------------------------------------------------------------------------


def test_predictor_uses_ema_weights_and_resizes_back(workspace, tmp_path):
    model, ema = tiny_model(), tiny_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # EMA weights that differ from the model's everywhere, without saturating tanh(x0)
        for p in ema.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    checkpoint = write_checkpoint(model, tmp_path / "ema.pth", ema=ema.state_dict())
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", options=PredictorOptions(steps=2, ensemble=3))
    loaded = dict(predictor.model.named_parameters())
    # (stored in the runtime's autocast dtype: bf16 on CPUs that have it)
    assert all(torch.equal(loaded[name], p.to(loaded[name].dtype)) for name, p in ema.named_parameters())

    images = [np.zeros((23, 37, 3), np.uint8), np.full((40, 20, 3), 200, np.uint8)]
    predictions = predictor.predict(images, record_process=True)
    for image, prediction in zip(images, predictions):
        assert prediction.mask.shape == prediction.uncertainty.shape == image.shape[:2]
        assert prediction.probabilities.shape == (1, *image.shape[:2])
        assert prediction.uncertainty.min() >= 0
        assert prediction.process.x_t.shape == (2, 1, 16, 16) and prediction.process.next_timesteps[-1] == -1
    assert predictions[0].uncertainty.max() > 0  # three different samples


@pytest.mark.parametrize("mc_dropout", [True, False])
def test_an_ensemble_of_a_dropout_model_encodes_each_sample_unless_mc_dropout_is_off(tmp_path, mc_dropout):
    model = tiny_model(dropout=0.1, mask_head_blocks=1)
    checkpoint = write_checkpoint(model, tmp_path / "dropout.pth")
    options = PredictorOptions(steps=2, ensemble=3, mc_dropout=mc_dropout)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", options=options)
    rows = []
    predictor.model.unet.register_forward_hook(lambda _module, inputs, _output: rows.append(inputs[0].shape[0]))
    predictor.predict([np.zeros((20, 20, 3), np.uint8), np.full((20, 20, 3), 90, np.uint8)])
    assert rows == ([6] if mc_dropout else [2])  # 2 images x 3 samples, each its own dropout draw; or shared


def test_mc_dropout_is_off_by_default_applies_to_ensembles_and_needs_a_dropout_model():
    assert not PredictorOptions(ensemble=5).samples_mc_dropout  # one shared encoding per image
    assert PredictorOptions(ensemble=5, mc_dropout=True).samples_mc_dropout
    assert not PredictorOptions(ensemble=1, mc_dropout=True).samples_mc_dropout  # one sample: deterministic
    runtime = select_runtime("cpu", "fp32")
    options = PredictorOptions(steps=2, ensemble=3, mc_dropout=True)
    with pytest.raises(InferenceError, match="--mc-dropout: MC dropout needs a model .* dropout 0.0"):
        Predictor(tiny_model(dropout=0.0, mask_head_blocks=1), runtime, options)
    Predictor(tiny_model(dropout=0.0, mask_head_blocks=1), runtime, PredictorOptions(ensemble=3))  # off: fine


def test_image_size_not_divisible_is_a_clean_error(workspace, capsys):
    code = main(
        [
            "--checkpoint",
            str(workspace["checkpoint"]),
            "--input",
            str(workspace["images"] / "img_0.png"),
            "--image-size",
            "15",
            *FAST,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --image-size") and "divisible" in err and "\n" not in err


# -- batch ------------------------------------------------------------------------------------


def test_batch_skips_corrupt_file_and_scores_against_masks(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "--checkpoint",
            str(workspace["checkpoint"]),
            "--input",
            str(workspace["images"]),
            "--batch",
            "--batch-size",
            "2",
            "--output",
            str(out),
            "--mask-dir",
            str(workspace["masks"]),
            *FAST,
        ]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    assert "corrupt.png" in stdout and "mean Dice" in stdout

    for stem, (width, height) in workspace["sizes"].items():
        assert read_png(out / f"{stem}.png").shape == (height, width)
        assert (out / f"{stem}_overlay.png").exists()
    assert not (out / "corrupt.png").exists()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 4
    assert [Path(f["file"]).name for f in summary["failures"]] == ["corrupt.png"]
    assert summary["seconds_per_image"] > 0 and summary["options"]["batch_size"] == 2

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["image"] for r in rows] == ["img_0.png", "img_1.png", "img_2.png", "mean"]  # grey.jpg has no mask
    scores = [float(r["dice"]) for r in rows[:-1]]
    assert all(0 <= s <= 1 for s in scores)
    assert float(rows[-1]["dice"]) == pytest.approx(np.mean(scores), abs=1e-5)
    assert summary["mean_dice"] == pytest.approx(np.mean(scores), abs=1e-5) and summary["scored"] == 3


def test_batch_result_does_not_depend_on_batch_size_for_the_first_image(workspace, tmp_path):
    for batch_size in (1, 3):
        assert (
            main(
                [
                    "--checkpoint",
                    str(workspace["checkpoint"]),
                    "--input",
                    str(workspace["images"]),
                    "--output",
                    str(tmp_path / str(batch_size)),
                    "--batch-size",
                    str(batch_size),
                    *FAST,
                ]
            )
            == 0
        )
    # sampling noise depends on the seed and the position in the batch: grey.jpg comes first in
    # its batch either way (corrupt.png, sorted before it, is skipped)
    assert (read_png(tmp_path / "1" / "grey.png") == read_png(tmp_path / "3" / "grey.png")).all()


# -- interactive ------------------------------------------------------------------------------


def test_interactive_with_piped_stdin(workspace, tmp_path):
    lines = [
        "help",
        str(workspace["images"] / "img_1.png"),
        "/no/such/file.png",
        str(workspace["images"] / "corrupt.png"),
        f'"{workspace["images"] / "img_0.png"}"',
        "",
        "q",
        str(workspace["images"] / "img_2.png"),
    ]
    result = run_cli(
        "--checkpoint",
        str(workspace["checkpoint"]),
        "--interactive",
        "--output",
        str(tmp_path),
        *FAST,
        stdin="\n".join(lines) + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout
    assert "q to quit" in out and "no such file" in out and "corrupt.png" in out
    assert str(tmp_path / "img_1.png") in out and "2 images segmented" in out
    assert read_png(tmp_path / "img_0.png").shape == (23, 37)
    assert not (tmp_path / "img_2.png").exists()  # after `q`


def test_interactive_ends_cleanly_on_eof_and_ctrl_c(workspace, tmp_path):
    predictor = Predictor.from_checkpoint(workspace["checkpoint"], device="cpu", options=PredictorOptions(steps=2))
    for ending in (EOFError, KeyboardInterrupt):
        inputs = iter([str(workspace["images"] / "img_1.png")])

        def read(prompt):
            try:
                return next(inputs)
            except StopIteration:
                raise ending from None

        printed = []
        assert run_interactive(predictor, tmp_path, OutputOptions(), read=read, write=printed.append) == 1
        assert printed[-1].startswith("bye")


# -- errors -----------------------------------------------------------------------------------


def test_checkpoint_of_another_architecture_is_a_clean_error(workspace, tmp_path):
    small, other = tiny_model(), tiny_model(base_channels=16, channel_mults=(1, 2, 2))
    foreign = save_checkpoint(
        {"model_config": small.config.to_dict(), "model": other.state_dict(), "ema": None}, tmp_path / "foreign.pth"
    )
    result = run_cli("--checkpoint", str(foreign), "--input", str(workspace["images"] / "img_0.png"), *FAST)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "foreign.pth" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(foreign, device="cpu")


@pytest.mark.parametrize(
    "case",
    [
        "missing checkpoint",
        "truncated checkpoint",
        "missing input",
        "corrupt image",
        "batch with a file",
        "no input",
        "interactive with input",
        "mask dir on one image",
        "unknown device",
    ],
)
def test_bad_input_gives_one_line_error_and_exit_2(workspace, tmp_path, capsys, case):
    ckpt, images = str(workspace["checkpoint"]), workspace["images"]
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(ckpt).read_bytes()[:200])
    argv = {
        "missing checkpoint": ["--checkpoint", str(tmp_path / "nope.pth"), "--input", str(images / "img_0.png")],
        "truncated checkpoint": ["--checkpoint", str(truncated), "--input", str(images / "img_0.png")],
        "missing input": ["--checkpoint", ckpt, "--input", str(tmp_path / "nope.png")],
        "corrupt image": ["--checkpoint", ckpt, "--input", str(images / "corrupt.png")],
        "batch with a file": ["--checkpoint", ckpt, "--input", str(images / "img_0.png"), "--batch"],
        "no input": ["--checkpoint", ckpt],
        "interactive with input": ["--checkpoint", ckpt, "--interactive", "--input", str(images)],
        "mask dir on one image": [
            "--checkpoint",
            ckpt,
            "--input",
            str(images / "img_0.png"),
            "--mask-dir",
            str(images),
        ],
        "unknown device": ["--checkpoint", ckpt, "--input", str(images / "img_0.png"), "--device", "tpu:9"],
    }[case]
    assert main([*argv, "--output", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_batch_refuses_to_write_into_the_input_folder(workspace, capsys):
    assert (
        main(
            [
                "--checkpoint",
                str(workspace["checkpoint"]),
                "--input",
                str(workspace["images"]),
                "--output",
                str(workspace["images"]),
                *FAST,
            ]
        )
        == 2
    )
    assert "overwrite" in capsys.readouterr().err


def test_runtime_is_the_shared_one(workspace):
    predictor = Predictor.from_checkpoint(workspace["checkpoint"], device="cpu")
    assert predictor.runtime == select_runtime("cpu", "auto")


def test_mask_dir_scoring_leaves_the_ignore_label_out_and_reports_per_class_iou(tmp_path, capsys):
    from src.metrics import segmentation_scores
    from tests.helpers import write_class_id_dataset

    data = write_class_id_dataset(tmp_path / "data", count=2)
    model = tiny_model(num_classes=3)
    # the run's own --ignore-index travels in the checkpoint and is the default at scoring
    checkpoint = save_checkpoint(
        {"model_config": model.config.to_dict(), "model": model.state_dict(), "train_config": {"ignore_index": 255}},
        tmp_path / "three.pth",
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(data / "images"),
                "--mask-dir",
                str(data / "masks"),
                "--output",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    assert "mIoU" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ignore_index"] == 255 and len(summary["per_class_iou"]) == 3 and 0 <= summary["miou"] <= 1
    rows = {row["image"]: row for row in csv.DictReader(open(out / "metrics.csv"))}
    for stem in ("00", "01"):
        pred, truth = read_png(out / f"{stem}.png"), read_png(data / "masks" / f"{stem}.png")
        labelled = truth != 255  # the top rows are unlabelled: whatever was predicted there does not count
        expected = segmentation_scores(pred[labelled], truth[labelled], 3)
        assert float(rows[f"{stem}.png"]["dice"]) == pytest.approx(expected["dice"], abs=1e-6)


def test_sampling_flags_take_their_defaults_and_help_from_predictor_options():
    from src.inference.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["--checkpoint", "c.pth", "--input", "x.png"])
    defaults = PredictorOptions()
    names = ("steps", "ensemble", "eta", "time_ensemble", "mc_dropout", "threshold", "seed", "resize", "tile")
    for name in (*names, "tile_overlap"):
        assert getattr(args, name) == getattr(defaults, name), name
    assert parser.parse_args(["--checkpoint", "c.pth", "--no-mc-dropout"]).mc_dropout is False
    assert "DDIM steps (default: 50)" in " ".join(parser.format_help().split())
    assert parser.parse_args(["--checkpoint", "c.pth", "--steps", "7", "--no-tile"]).steps == 7
