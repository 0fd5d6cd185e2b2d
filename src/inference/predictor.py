"""Segment images of any size with a trained checkpoint.

The model works at one size (its config's `image_size`, or an override): each image is resized
to it (bilinear, antialiased), segmented, and the probabilities are resized back to the image's
ORIGINAL size (bilinear) before thresholding / argmax, so masks match the input pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from src.checkpoint import load_model
from src.device import Runtime, select_runtime
from src.masks import probabilities_to_mask, resize_maps
from src.models import DiffusionSegmentation
from utils.image_io import as_size, load_image


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
    mean: Optional[torch.Tensor] = None


@dataclass
class Prediction:
    """One image's result at its ORIGINAL size (H, W).

    mask: (H, W) uint8 (uint16 beyond 256 classes), 0/1 (binary) or class ids.
    probabilities: (K, H, W) float32; K = 1 for binary, the foreground probability.
    uncertainty: (H, W) float32 per-pixel std over the ensemble (all 0 with one sample).
    process: the reverse diffusion, when recorded.
    """

    mask: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    process: Optional[ProcessTrace] = None


@dataclass
class PredictorOptions:
    """How to sample: DDIM `steps`, `ensemble` samples per image, binary `threshold`, `seed`, the
    DDIM noise `eta` and whether a sample is the mean of its steps' estimates (`time_ensemble`);
    see DiffusionSegmentation.segment."""

    steps: int = 50
    ensemble: int = 1
    eta: float = 1.0
    time_ensemble: bool = True
    threshold: float = 0.5
    seed: Optional[int] = 0
    process_frames: int = 8  # frames kept per image when the process is recorded


class Predictor:
    """A model in eval mode on its runtime, plus the pre/post-processing around it."""

    def __init__(self, model: DiffusionSegmentation, runtime: Runtime, options: PredictorOptions = None, image_size=None):
        self.options = options or PredictorOptions()
        self.runtime = runtime
        self.model = runtime.prepare_model(model).eval()
        self.config = model.config
        self.image_size = as_size(image_size) if image_size is not None else tuple(self.config.image_size)
        try:
            self.model.unet.check_size(*self.image_size)
        except ValueError as error:
            raise InferenceError(f"--image-size: {error}") from None
        _check_options(self.options, self.model.num_timesteps)

    @classmethod
    def from_checkpoint(cls, checkpoint, device: str = "auto", precision: str = "auto", options: PredictorOptions = None,
                        image_size=None) -> "Predictor":
        """Rebuild the model from the checkpoint's own config (EMA weights when saved).

        Raises CheckpointError for a missing or unusable checkpoint, InferenceError for bad
        options or an unavailable device.
        """
        try:
            runtime = select_runtime(device, precision)
        except ValueError as error:
            raise InferenceError(f"--device {device} / --precision {precision}: {error}") from None
        model = load_model(checkpoint, use_ema=True)
        return cls(model, runtime, options, image_size)

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

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(H_i, W_i, C) uint8 images of any sizes -> (B, C, h, w) float in [0, 1] at model size."""
        resized = []
        for image in images:
            array = np.asarray(image)
            array = array[..., None] if array.ndim == 2 else array
            if array.shape[-1] != self.config.in_channels:
                raise InferenceError(f"image has {array.shape[-1]} channel(s), the model takes {self.config.in_channels}")
            tensor = torch.tensor(array, dtype=torch.float32).permute(2, 0, 1)[None] / 255
            if tuple(tensor.shape[-2:]) != self.image_size:
                # antialias: downscaling a large photo without it aliases fine texture
                tensor = F.interpolate(tensor, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
            resized.append(tensor.clamp(0, 1))
        return torch.cat(resized)

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], record_process: bool = False, seed: Optional[int] = None) -> list[Prediction]:
        """Segment a batch of (H_i, W_i, C) uint8 images; one Prediction per image, at its size.

        The batch (times the ensemble) is sampled together. With DDIM (eta = 0) an image's result
        depends only on the seed and its position in the batch. `seed` overrides options.seed
        for this call.
        """
        if not images:
            return []
        options = self.options
        batch = self.runtime.to_device(self.preprocess(images))
        recorder = _ProcessRecorder(options, self.model) if record_process else None
        with self.runtime.autocast():
            output = self.model.segment(
                batch,
                steps=options.steps,
                ensemble=options.ensemble,
                threshold=options.threshold,
                seed=options.seed if seed is None else seed,
                callback=recorder,
                eta=options.eta,
                time_ensemble=options.time_ensemble,
            )
        probabilities = output.probabilities.float().cpu()
        uncertainty = output.uncertainty.float().cpu()
        predictions = []
        for i, image in enumerate(images):
            size = image.shape[:2]
            probs = resize_maps(probabilities[i], size)
            predictions.append(Prediction(
                mask=probabilities_to_mask(probs, self.num_classes, options.threshold).numpy().astype(self.mask_dtype),
                probabilities=probs.numpy(),
                uncertainty=resize_maps(uncertainty[i][None], size)[0].clamp(min=0).numpy(),
                process=recorder.trace(i * options.ensemble, batch[i].float().cpu()) if recorder else None,
            ))
        return predictions


def _check_options(options: PredictorOptions, timesteps: int) -> None:
    if not 1 <= options.steps <= timesteps:
        raise InferenceError(f"--steps must be between 1 and the model's {timesteps} timesteps, got {options.steps}")
    if options.ensemble < 1:
        raise InferenceError(f"--ensemble must be >= 1, got {options.ensemble}")
    if not 0 < options.threshold < 1:
        raise InferenceError(f"--threshold must be between 0 and 1, got {options.threshold}")


class _ProcessRecorder:
    """`segment()` callback that keeps x_t and x0 at ~`frames` evenly spaced steps, on the CPU,
    and with time-ensembling the running mean of the estimates (over every step, not only those kept)."""

    def __init__(self, options: PredictorOptions, model: DiffusionSegmentation):
        self.schedule = model.sample_timesteps(options.steps)
        count = len(self.schedule)
        self.keep = set(np.linspace(0, count - 1, min(options.process_frames, count)).round().astype(int).tolist())
        self.timesteps, self.next_timesteps, self.x_t, self.x0, self.mean = [], [], [], [], []
        self.time_ensemble, self.sum = options.time_ensemble, 0.0

    def __call__(self, i: int, t: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        self.sum = self.sum + x0.float()
        if i in self.keep:
            self.timesteps.append(int(t))
            self.next_timesteps.append(self.schedule[i + 1] if i + 1 < len(self.schedule) else -1)
            self.x_t.append(x_t.float().cpu())
            self.x0.append(x0.float().cpu())
            self.mean.append((self.sum / (i + 1)).cpu())

    def trace(self, row: int, image: torch.Tensor) -> ProcessTrace:
        """The frames of batch row `row` (the first ensemble member of an image)."""
        return ProcessTrace(
            timesteps=list(self.timesteps),
            next_timesteps=list(self.next_timesteps),
            x_t=torch.stack([frame[row] for frame in self.x_t]),
            x0=torch.stack([frame[row] for frame in self.x0]),
            image=image,
            mean=torch.stack([frame[row] for frame in self.mean]) if self.time_ensemble else None,
        )
