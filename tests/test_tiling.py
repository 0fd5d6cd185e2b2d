"""Sliding-window inference (src/inference/tiling.py) and letterboxed inputs, alone and through inference.py."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from src.device import select_runtime
from src.inference import Predictor, PredictorOptions
from src.inference.tiling import gaussian_weight, sliding_window, tile_starts, windows
from src.models import SegmentationOutput
from tests.helpers import ONE_THREAD_ENV, tiny_model, write_checkpoint, write_image
from tests.test_inference import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "length, window, overlap", [(100, 16, 0.25), (64, 16, 0.5), (17, 16, 0.25), (16, 16, 0.5), (10, 16, 0.25)]
)
def test_windows_cover_every_pixel_with_the_asked_overlap(length, window, overlap):
    starts = tile_starts(length, window, overlap)
    covered = np.zeros(max(length, window), dtype=bool)
    for start in starts:
        covered[start : start + window] = True
    assert covered[:length].all() and starts[0] == 0 and starts[-1] + window == max(length, window)
    steps = np.diff(starts)
    assert all(0 < step <= window * (1 - overlap) for step in steps)


def test_gaussian_weight_peaks_in_the_middle_and_never_reaches_zero():
    weight = gaussian_weight(16, 24)
    assert weight.shape == (16, 24) and weight.max() == pytest.approx(1.0) and weight.min() > 0
    assert weight[8, 12] > weight[8, 0] and weight[8, 12] > weight[0, 12]


def test_blending_a_per_pixel_answer_gives_it_back_exactly():
    """A 'model' that answers each pixel's own value: any weighting of identical answers is that value,
    so the blended map must equal the image wherever windows overlap, at every edge and corner."""
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    seen = []

    def run(tiles, first):
        seen.append(tiles.shape)
        return tiles[:, :2], tiles[:, 2]  # 2 "classes" and an "uncertainty" from the pixels themselves

    probabilities, uncertainty = sliding_window(
        image, (16, 16), run, num_channels=2, overlap=0.5, batch_size=3, progress=False
    )
    expected = image.astype(np.float32) / 255
    np.testing.assert_allclose(probabilities, expected[..., :2].transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(uncertainty, expected[..., 2], atol=1e-6)
    assert all(shape[1:] == (3, 16, 16) and shape[0] <= 3 for shape in seen)
    assert sum(shape[0] for shape in seen) == len(windows((37, 53), (16, 16), 0.5))


class _EchoModel:
    """Stands in for model.segment: the probability of class k is the input's channel k, at the input's size."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, images, steps, ensemble, threshold, seed, **sampler_options):
        self.calls.append(tuple(images.shape))
        probabilities = images[:, :1].clone()
        return SegmentationOutput(
            probabilities=probabilities,
            mask=(probabilities[:, 0] > threshold).long(),
            uncertainty=torch.zeros_like(probabilities[:, 0]),
        )


@pytest.mark.parametrize("resize, tile", [("pad", False), ("stretch", True), ("pad", None)])
def test_letterboxed_and_tiled_predictions_land_on_the_original_pixels(resize, tile):
    # tile None: the options' default, which must not tile an image of over 5x the 16 px model:
    # train.py's models see whole images resized, and a window would show them objects at another scale
    tiling = {} if tile is None else {"tile": tile}
    predictor = Predictor(tiny_model(), select_runtime("cpu", "fp32"), PredictorOptions(resize=resize, **tiling))
    echo = _EchoModel(predictor.model)
    predictor.model.segment = echo
    image = np.zeros((40, 90, 3), dtype=np.uint8)
    image[:, 30:60] = 255
    prediction = predictor.predict([image])[0]
    assert prediction.mask.shape == (40, 90)
    if tile:
        assert all(shape[-2:] == (16, 16) for shape in echo.calls) and sum(s[0] for s in echo.calls) > 1
        np.testing.assert_allclose(prediction.probabilities[0], image[..., 0] / 255, atol=1e-6)
    else:  # one letterboxed call; cropped and resized back, the bright band is where it was
        assert echo.calls == [(1, 3, 16, 16)]
        assert (
            prediction.mask[:, 34:56].all() and not prediction.mask[:, :26].any() and not prediction.mask[:, 64:].any()
        )


def test_tile_through_inference_py_for_a_multiclass_ensemble(tmp_path):
    checkpoint = write_checkpoint(tiny_model(num_classes=3), tmp_path / "three.pth")
    source = write_image(tmp_path / "big.png", (70, 45))  # (W, H)
    result = subprocess.run(
        [
            sys.executable,
            "inference.py",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "out"),
            "--steps",
            "2",
            "--ensemble",
            "2",
            "--tile",
            "--tile-overlap",
            "0.5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=ONE_THREAD_ENV,
    )
    assert result.returncode == 0, result.stderr
    count = len(windows((45, 70), (16, 16), 0.5))
    assert f"tiles:   0%|          | 0/{count}" in result.stderr  # the progress bar over the windows
    with Image.open(tmp_path / "out" / "big.png") as mask, Image.open(tmp_path / "out" / "big_uncertainty.png") as unc:
        assert mask.size == unc.size == (70, 45)
        assert set(np.unique(np.asarray(mask))) <= {0, 1, 2}
