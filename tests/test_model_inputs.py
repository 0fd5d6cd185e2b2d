"""One resize path: training, validation, inference and the benchmarks give the model the same
pixels for the same file and size (utils.image_io.fit_image)."""

import numpy as np
import pytest
import torch
from PIL import Image

from src.device import select_runtime
from src.inference.predictor import InferenceError, Predictor, PredictorOptions
from tests.helpers import tiny_model
from utils.data_utils import SegmentationDataset


def write_pair(root, name: str, size_hw, suffix: str):
    """A smooth colour photo-like image (so JPEG keeps detail) and a disc mask, at `size_hw`."""
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    yy, xx = np.mgrid[0 : size_hw[0], 0 : size_hw[1]]
    image = np.stack([(xx * 255 // size_hw[1]), (yy * 255 // size_hw[0]), ((xx + yy) * 7) % 256], axis=-1).astype(
        np.uint8
    )
    Image.fromarray(image).save(root / "images" / f"{name}{suffix}", quality=90)
    disc = ((yy - size_hw[0] / 2) ** 2 + (xx - size_hw[1] / 2) ** 2) < (min(size_hw) / 3) ** 2
    Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / f"{name}.png")


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_training_and_inference_see_identical_pixels(tmp_path, resize):
    write_pair(tmp_path, "photo", (300, 460), ".jpg")  # large enough that a reduced-scale decode would differ
    write_pair(tmp_path, "scan", (37, 23), ".png")  # upscaled
    dataset = SegmentationDataset(tmp_path / "images", tmp_path / "masks", image_size=(32, 48), resize=resize)
    predictor = Predictor(
        tiny_model(image_size=(32, 48)), select_runtime("cpu", "fp32"), PredictorOptions(resize=resize)
    )
    for index, (image_path, _) in enumerate(dataset.pairs):
        trained_on = dataset[index][0]
        inferred_on = predictor.preprocess([predictor.load(image_path)])[0]
        assert trained_on.shape == inferred_on.shape == (3, 32, 48)
        assert torch.equal(trained_on, inferred_on), image_path.name
        if resize == "pad":  # letterboxed: black borders around the fitted content
            borders = [trained_on[:, 0], trained_on[:, -1], trained_on[:, :, 0], trained_on[:, :, -1]]
            assert any(border.abs().sum() == 0 for border in borders)


def test_inference_refuses_images_that_are_not_8_bit():
    predictor = Predictor(tiny_model(), select_runtime("cpu", "fp32"), PredictorOptions())
    with pytest.raises(InferenceError, match="uint8"):
        predictor.preprocess([np.zeros((16, 16, 3), dtype=np.float32)])
