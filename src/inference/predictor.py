"""Segment images of any size with a trained checkpoint.

The model works at one size (its config's `image_size`, or an override): each image is resized
to it (bilinear, antialiased; with resize "pad" fitted inside it keeping its aspect ratio and
letterboxed, as in training), segmented, and the probabilities are cropped to the content and
resized back to the image's ORIGINAL size (bilinear) before thresholding / argmax, so masks
match the input pixel for pixel. With `tile=True` every image is segmented window by window at
the model's own resolution instead (src/inference/tiling.py), for models trained on crops at the
images' own scale. Never by default: train.py resizes whole images to the model size, and a model
trained so misreads a window, which shows its objects several times larger (Kvasir-SEG, README).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from src.checkpoint import load_checkpoint, model_from_checkpoint
from src.device import Runtime, select_runtime
from src.fields import option
from src.inference.tiling import sliding_window
from src.masks import crop_box, probabilities_to_mask, resize_maps
from src.models import DiffusionSegmentation, SegmentationOutput, SegmentationRun
from utils.image_io import as_size, load_image
from utils.resize import RESIZE_MODES, fit_image, letterbox_box


class InferenceError(ValueError):
    """Bad inference input or options (missing file, impossible size, ...); the message says which."""


@dataclass
class ProcessTrace:
    """Frames of one image's reverse diffusion, at model resolution.

    timesteps: the timestep t the network ran at for each frame, from T-1 down to 0.
    x0: (F, K, h, w) the network's clean-mask estimate at t.
    x_t: (F, K, h, w) the sample the step moved to, which belongs to timestep `next_timesteps`
        (the next, lower t; -1 after the last step, where the sample is the final mask).
    image: (C, h, w) in [0, 1], the resized input the model saw.
    mean: (F, K, h, w) with time-ensembling, the mean of the x0 estimates of every step so far
        (the result the sampler returns is the last one), in x0's [-1, 1] scale; else None.
    """

    timesteps: list
    next_timesteps: list
    x_t: torch.Tensor
    x0: torch.Tensor
    image: torch.Tensor
    mean: torch.Tensor | None = None


@dataclass
class Prediction:
    """One image's result at its ORIGINAL size (H, W).

    mask: (H, W) uint8 (uint16 beyond 256 classes), 0/1 (binary) or class ids.
    probabilities: (K, H, W) float32; K = 1 for binary, the foreground probability.
    uncertainty: (H, W) float32 predictive entropy of `probabilities`, 0 (certain) to 1 (even odds).
    process: the reverse diffusion, when recorded.
    """

    mask: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    process: ProcessTrace | None = None


@dataclass
class PredictorOptions:
    """How to sample: DDIM `steps`, `ensemble` samples per image, binary `threshold`, `seed`, the
    DDIM noise `eta`, whether a sample is the mean of its steps' estimates (`time_ensemble`) and
    which estimate a self-conditioned model is handed (`self_condition_on`); see
    DiffusionSegmentation.segment."""

    steps: int = option(50, "DDIM steps")
    ensemble: int = option(1, "samples per image; > 1 averages them and saves an uncertainty map")
    eta: float = option(1.0, "DDIM noise: 0 deterministic, 1 fresh noise at every step as in DDPM")
    time_ensemble: bool = option(True, "a sample is the mean of its steps' mask estimates, so more steps help")
    self_condition_on: str = option(
        "mean",
        "the estimate each step of a self-conditioned model is handed: the mean of the estimates so far, or the last",
    )
    mc_dropout: bool = option(
        False,
        "with an ensemble, each sample encodes the image with its own dropout draw (MC dropout; models "
        "trained with dropout and a mask head), so the samples disagree where the model is unsure: "
        "better uncertainty maps, slightly lower Dice",
    )
    threshold: float = option(0.5, "foreground probability threshold for binary models")
    seed: int | None = option(0, "sampling seed: same seed, same masks")
    process_frames: int = 8  # frames kept per image when the process is recorded
    resize: str | None = option(
        None,
        "stretch to the model size, or pad: keep the aspect ratio, letterbox (default: as the checkpoint was trained)",
    )
    tile: bool = option(
        False,
        "segment window by window at the model's size, blended with Gaussian weights: for models "
        "trained on crops at the images' own scale (train.py's resize whole images: leave it off)",
    )
    tile_overlap: float = option(0.25, "overlap of neighbouring windows, a fraction of the window")
    tile_batch: int = 8  # windows per forward pass
    progress: bool = False  # a bar over the windows of a tiled image

    @property
    def samples_mc_dropout(self) -> bool:
        """segment()'s mc_dropout: MC dropout when asked and there are several samples (one sample
        keeps the deterministic encoding; a single dropout draw is only a worse estimate). Off by
        default since the thirteenth round (BENCHMARKS.md): on images held out of the TRAIN split,
        at 10 steps x 5 samples, the samples' std ranked error pixels better on all five seeds
        (p(1-p) of the mean on four) at a lower calibration error, but Dice fell 0.0024 on the
        mean of five seeds against one shared encoding (the rule written before the results
        allowed 0.002), and 0.003-0.010 on each of eight val runs."""
        return self.mc_dropout and self.ensemble > 1


class Predictor:
    """A model in eval mode on its runtime, plus the pre/post-processing around it."""

    def __init__(
        self,
        model: DiffusionSegmentation,
        runtime: Runtime,
        options: PredictorOptions = None,
        image_size=None,
        training_options: dict | None = None,
    ):
        self.options = replace(options or PredictorOptions())
        # the run's train_config, when the checkpoint has one: how images were resized, the ignore label
        self.training_options = dict(training_options or {})
        if self.options.resize is None:
            self.options.resize = self.training_options.get("resize") or "stretch"
        self.runtime = runtime
        self.model = runtime.prepare_inference_model(model)
        self.config = model.config
        self.image_size = as_size(image_size) if image_size is not None else tuple(self.config.image_size)
        try:
            self.model.unet.check_size(*self.image_size)
        except ValueError as error:
            raise InferenceError(f"--image-size: {error}") from None
        _check_options(self.options, self.model.num_timesteps)
        if self.options.samples_mc_dropout:
            try:
                self.model.check_mc_dropout()
            except ValueError as error:
                raise InferenceError(f"--mc-dropout: {error}") from None

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint,
        device: str = "auto",
        precision: str = "auto",
        options: PredictorOptions = None,
        image_size=None,
    ) -> Predictor:
        """Rebuild the model from the checkpoint's own config (EMA weights when saved).

        The checkpoint's train_config (resize, ignore_index) becomes `training_options`. Raises
        CheckpointError for a missing or unusable checkpoint, InferenceError for bad options or an unavailable device.
        """
        try:
            runtime = select_runtime(device, precision)
        except ValueError as error:
            raise InferenceError(f"--device {device} / --precision {precision}: {error}") from None
        state = load_checkpoint(checkpoint)
        model = model_from_checkpoint(state, checkpoint, use_ema=True).eval()
        return cls(model, runtime, options, image_size, training_options=state.get("train_config"))

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def mask_dtype(self):
        """uint8 class ids (8-bit PNG masks); uint16 beyond 256 classes (16-bit PNG)."""
        return np.uint8 if self.num_classes <= 256 else np.uint16

    def load(self, path) -> np.ndarray:
        """Read an image file as (H, W, C) uint8 with the model's channel count (RGB or L).

        Raises DatasetError (from utils.image_io) naming the file when it cannot be decoded.
        """
        return load_image(Path(path), in_channels=self.config.in_channels)

    def content_box(self, image_hw) -> tuple:
        """(top, left, h, w) of an image of size image_hw inside the model input: all of it when
        stretched, the letterboxed part with resize "pad"."""
        if self.options.resize == "pad":
            return letterbox_box(tuple(image_hw), self.image_size)
        return (0, 0, *self.image_size)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(H_i, W_i, C) uint8 images of any sizes -> (B, C, h, w) float in [0, 1] at model size,
        through the same ``fit_image`` as training (the model sees the pixels it was trained on)."""
        fitted = [
            fit_image(_check_channels(image, self.config.in_channels), self.image_size, self.options.resize)
            for image in images
        ]
        return (
            torch.stack(
                [torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))) for pixels in fitted]
            ).float()
            / 255
        )

    @torch.inference_mode()  # no autograd bookkeeping at all (no_grad still tracks tensor versions)
    def predict(
        self, images: Sequence[np.ndarray], record_process: bool = False, seed: int | None = None
    ) -> list[Prediction]:
        """Segment a batch of (H_i, W_i, C) uint8 images; one Prediction per image, at its size.

        The batch (times the ensemble) is sampled together. With DDIM (eta = 0) an image's result
        depends only on the seed and its position in the batch. `seed` overrides options.seed
        for this call. With options.tile the images are segmented one by one, window by window
        (no process figure for them).
        """
        if not images:
            return []
        seed = self.options.seed if seed is None else seed
        if self.options.tile:
            return [self._predict_tiled(np.asarray(image), seed) for image in images]
        return self._predict_resized(images, record_process, seed)

    def _predict_tiled(self, image: np.ndarray, seed: int | None) -> Prediction:
        """One image, window by window at the model's resolution, blended (src/inference/tiling.py)."""
        options = self.options
        image = _check_channels(image, self.config.in_channels)

        def run(tiles: torch.Tensor, first: int):
            with self.runtime.autocast():
                output = self.model.segment(
                    self.runtime.to_device(tiles),
                    steps=options.steps,
                    ensemble=options.ensemble,
                    threshold=options.threshold,
                    seed=None if seed is None else seed + first,
                    eta=options.eta,
                    time_ensemble=options.time_ensemble,
                    self_condition_on=options.self_condition_on,
                    mc_dropout=options.samples_mc_dropout,
                )
            return output.probabilities, output.uncertainty

        probabilities, uncertainty = sliding_window(
            image,
            self.image_size,
            run,
            self.config.mask_channels,
            options.tile_overlap,
            options.tile_batch,
            options.progress,
        )
        mask = probabilities_to_mask(torch.from_numpy(probabilities), self.num_classes, options.threshold)
        return Prediction(
            mask=mask.numpy().astype(self.mask_dtype),
            probabilities=probabilities,
            uncertainty=np.maximum(uncertainty, 0),
        )

    def _predict_resized(
        self, images: Sequence[np.ndarray], record_process: bool, seed: int | None
    ) -> list[Prediction]:
        """A batch of images resized (or letterboxed) to the model's size, sampled together."""
        options = self.options
        batch = self.runtime.to_device(self.preprocess(images))
        sampling = dict(
            steps=options.steps,
            ensemble=options.ensemble,
            threshold=options.threshold,
            seed=seed,
            eta=options.eta,
            time_ensemble=options.time_ensemble,
            self_condition_on=options.self_condition_on,
            mc_dropout=options.samples_mc_dropout,
        )
        with self.runtime.autocast():
            if record_process:
                output, frames = run_keeping_frames(
                    self.model.segmentation(batch, **sampling),
                    self.model.sample_timesteps(options.steps),
                    options.process_frames,
                )
            else:
                output = self.model.segment(batch, **sampling)
        probabilities = output.probabilities.float().cpu()
        uncertainty = output.uncertainty.float().cpu()
        predictions = []
        for i, image in enumerate(images):
            size = image.shape[:2]
            box = self.content_box(size)
            probs = resize_maps(crop_box(probabilities[i], box), size)
            predictions.append(
                Prediction(
                    mask=probabilities_to_mask(probs, self.num_classes, options.threshold)
                    .numpy()
                    .astype(self.mask_dtype),
                    probabilities=probs.numpy(),
                    uncertainty=resize_maps(crop_box(uncertainty[i][None], box), size)[0].clamp(min=0).numpy(),
                    process=process_trace(frames, i * options.ensemble, batch[i].float().cpu(), options.time_ensemble)
                    if record_process
                    else None,
                )
            )
        return predictions


def _check_channels(image, in_channels: int) -> np.ndarray:
    array = np.asarray(image)
    array = array[..., None] if array.ndim == 2 else array
    if array.shape[-1] != in_channels:
        raise InferenceError(f"image has {array.shape[-1]} channel(s), the model takes {in_channels}")
    if array.dtype != np.uint8:
        raise InferenceError(f"image must be 8-bit (uint8, as load() returns it), got {array.dtype}")
    return array


def _check_options(options: PredictorOptions, timesteps: int) -> None:
    if options.resize not in RESIZE_MODES:
        raise InferenceError(f"--resize must be one of {RESIZE_MODES}, got {options.resize!r}")
    if not 0 <= options.tile_overlap < 1:
        raise InferenceError(f"--tile-overlap must be in [0, 1), got {options.tile_overlap}")
    if not 1 <= options.steps <= timesteps:
        raise InferenceError(f"--steps must be between 1 and the model's {timesteps} timesteps, got {options.steps}")
    if options.ensemble < 1:
        raise InferenceError(f"--ensemble must be >= 1, got {options.ensemble}")
    if not 0 < options.threshold < 1:
        raise InferenceError(f"--threshold must be between 0 and 1, got {options.threshold}")


def run_keeping_frames(run: SegmentationRun, schedule: list, count: int) -> tuple[SegmentationOutput, dict]:
    """Run the reverse process to its end, keeping x_t, x0 and the running mean of the x0
    estimates (over every step, not only those kept) at ~`count` evenly spaced steps, on the CPU."""
    keep = set(np.linspace(0, len(schedule) - 1, min(count, len(schedule))).round().astype(int).tolist())
    frames = {"timesteps": [], "next_timesteps": [], "x_t": [], "x0": [], "mean": []}
    for i, step in enumerate(run):
        if i in keep:
            frames["timesteps"].append(int(step.t))
            frames["next_timesteps"].append(schedule[i + 1] if i + 1 < len(schedule) else -1)
            for name, frame in (("x_t", step.x_t), ("x0", step.x0), ("mean", run.mean_x0)):
                frames[name].append(frame.float().cpu())
    return run.output(), frames


def process_trace(frames: dict, row: int, image: torch.Tensor, time_ensemble: bool) -> ProcessTrace:
    """The kept frames of batch row `row` (the first ensemble member of an image)."""
    return ProcessTrace(
        timesteps=list(frames["timesteps"]),
        next_timesteps=list(frames["next_timesteps"]),
        x_t=torch.stack([frame[row] for frame in frames["x_t"]]),
        x0=torch.stack([frame[row] for frame in frames["x0"]]),
        image=image,
        mean=torch.stack([frame[row] for frame in frames["mean"]]) if time_ensemble else None,
    )
