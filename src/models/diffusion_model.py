"""Denoising diffusion for segmentation masks, conditioned on the image.

The mask x0 lives in [-1, 1] (one channel for a binary mask, one one-hot channel per class
otherwise). Training noises it to x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPM eq. 4) and
teaches the UNet, fed [x_t, image], to predict eps, x0 or v. Sampling runs the reverse process
from pure noise with ancestral DDPM (Ho et al. 2020, eq. 6-7) or DDIM (Song et al. 2021, eq. 12).

Shapes: images (B, C, H, W) float in [0, 1]; binary masks (B, 1, H, W) float in {0, 1};
multi-class masks (B, H, W) int64 class ids.
"""

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .unet import UNet, size_multiple

PREDICTION_TYPES = ("eps", "x0", "v")
SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddim", "ddpm")


# What a checkpoint without these fields was trained with (they were added later, with new defaults).
LEGACY_DEFAULTS = {"input_scale": 1.0, "patch_size": 1, "bounded_x0": False, "self_condition": False,
                   "refine_from_estimate": False}


@dataclass
class DiffusionConfig:
    """Everything needed to rebuild the model; saved inside every checkpoint."""

    in_channels: int = 3
    num_classes: int = 1
    image_size: tuple = (256, 256)
    base_channels: int = 32
    channel_mults: tuple = (1, 2, 4, 8)
    # 1 block per level: on CPU more optimizer steps per minute beat depth (BENCHMARKS.md, ablations)
    num_res_blocks: int = 1
    attention_resolutions: tuple = (8,)
    dropout: float = 0.0
    num_heads: int = 4
    # The UNet runs at 1/patch_size of image_size (pixel unshuffle in, pixel shuffle out). 4 won the
    # 128 px Kvasir ablation per wall-clock minute (BENCHMARKS.md): ~7x the optimizer steps of 1.
    patch_size: int = 4
    timesteps: int = 1000
    schedule: str = "linear"  # beat cosine on Kvasir (BENCHMARKS.md): more steps at low SNR, where the image matters
    prediction_type: str = "x0"
    dice_weight: float = 1.0  # weight of Dice + BCE on the predicted x0; 0 gives plain MSE
    # Masks in [-1, 1] are multiplied by this before noising (Chen et al. 2022, Pix2Seq-D; Chen 2023,
    # "On the importance of noise scheduling"). A binary mask is so easy to read through noise that
    # at scale 1 the network learns to denoise x_t and barely looks at the image; < 1 hides the mask
    # at every noise level and forces it to segment the image. Chosen by the Kvasir ablation.
    input_scale: float = 0.05
    # With prediction_type "x0": the network's output o is a logit and x0 = tanh(o), so the predicted
    # mask can never leave [-1, 1] and BCE is taken on the logit 2o (p = sigmoid(2o)), whose gradient
    # does not vanish or explode the way BCE on a clamped linear output does.
    bounded_x0: bool = True
    # Self-conditioning (Chen, Zhang & Hinton 2022, "Analog Bits", sec. 3.3): the UNet also sees its
    # previous x0 estimate. At a low input_scale x_t alone says almost nothing about the mask, so
    # without it every reverse step starts from scratch; with it a step can build on the last
    # step's mask, which the time-ensembled sampler (segment) turns into a gain from more steps
    # (BENCHMARKS.md, "Making the steps refine").
    self_condition: bool = True
    # With self-conditioning: the self-conditioned half of training also noises the estimate, not
    # the true mask, into x_t. Sampling puts the last estimate into x_t (DDIM eq. 12); a network
    # trained only on true masks there trusts the faint mask it finds in x_t and keeps its own
    # errors (exposure bias, Ning et al. 2023). Trained on its estimates, it learns to correct them.
    refine_from_estimate: bool = False

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.num_classes < 1 or self.in_channels < 1 or self.timesteps < 1 or self.patch_size < 1:
            raise ValueError("num_classes, in_channels, timesteps and patch_size must be positive")
        if not 0 < self.input_scale <= 1:
            raise ValueError(f"input_scale must be in (0, 1], got {self.input_scale}")
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        self.image_size = tuple(self.image_size)
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)

    @property
    def mask_channels(self) -> int:
        return self.num_classes

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (what the UNet checks)."""
        return size_multiple(self.patch_size, len(self.channel_mults))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DiffusionConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        # a checkpoint saved before a field existed was trained the way the field's first value says
        return cls(**{**LEGACY_DEFAULTS, **values})


# ---------------------------------------------------------------------------------------------
# Noise schedules
# ---------------------------------------------------------------------------------------------


def linear_beta_schedule(timesteps: int) -> torch.Tensor:
    """Ho et al. 2020: betas from 1e-4 to 0.02, rescaled so any T spans the same noise range."""
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: abar_t = cos^2(((t/T + s) / (1 + s)) * pi/2), betas <= 0.999."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alphas_cumprod = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=0.999)


def make_beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    if name == "linear":
        return linear_beta_schedule(timesteps)
    if name == "cosine":
        return cosine_beta_schedule(timesteps)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")


def extract(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] reshaped to (B, 1, ..., 1) so it broadcasts over a tensor of `ndim` dims."""
    return values.gather(0, t).reshape(t.shape[0], *([1] * (ndim - 1)))


# ---------------------------------------------------------------------------------------------
# Sampler steps: stateless, one reverse step each
# ---------------------------------------------------------------------------------------------


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: torch.Tensor, sigma: torch.Tensor, noise) -> torch.Tensor:
    """DDIM eq. 12: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z."""
    direction = (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps
    x_prev = alpha_bar_prev.sqrt() * x0 + direction
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_sigma(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """DDIM eq. 16: eta = 0 is deterministic DDIM, eta = 1 matches DDPM's posterior variance."""
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).clamp(min=0).sqrt()


class DiffusionSegmentation(nn.Module):
    """The DDPM wrapper: schedule, losses and samplers around a UNet.

    model(images, masks) -> scalar training loss
    model.sample(images, steps=50) -> (B, K, H, W) mask estimate x0 in [-1, 1]
    model.segment(images, steps=50, ensemble=N) -> SegmentationOutput
    """

    def __init__(self, config: Optional[DiffusionConfig] = None, **overrides):
        super().__init__()
        if config is None:
            config = DiffusionConfig(**overrides)
        elif overrides:
            config = DiffusionConfig(**{**config.to_dict(), **overrides})
        self.config = config
        self.unet = UNet(
            in_channels=config.mask_channels * (2 if config.self_condition else 1) + config.in_channels,
            out_channels=config.mask_channels,
            base_channels=config.base_channels,
            channel_mults=config.channel_mults,
            num_res_blocks=config.num_res_blocks,
            attention_resolutions=config.attention_resolutions,
            dropout=config.dropout,
            num_heads=config.num_heads,
            patch_size=config.patch_size,
        )
        self._register_schedule(make_beta_schedule(config.schedule, config.timesteps))

    # -- schedule ---------------------------------------------------------------------------

    def _register_schedule(self, betas: torch.Tensor) -> None:
        """Precompute the schedule in float64, store float32 buffers (they move with the model)."""
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        # DDPM eq. 7: posterior q(x_{t-1} | x_t, x0)
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(),
            "posterior_variance": posterior_variance,
            # the variance is 0 at t = 0: clip the log to the next value (improved-diffusion)
            "posterior_log_variance_clipped": torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),
        }
        for name, value in buffers.items():
            # persistent=False: rebuilt from the config, so checkpoints hold only learned weights
            self.register_buffer(name, value.float(), persistent=False)

    @property
    def num_timesteps(self) -> int:
        return self.config.timesteps

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """DDPM eq. 4: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        return extract(self.sqrt_alphas_cumprod, t, x0.ndim) * x0 + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """DDPM eq. 7: mean and variance of q(x_{t-1} | x_t, x0)."""
        mean = extract(self.posterior_mean_coef1, t, x_t.ndim) * x0 + extract(self.posterior_mean_coef2, t, x_t.ndim) * x_t
        variance = extract(self.posterior_variance, t, x_t.ndim)
        log_variance = extract(self.posterior_log_variance_clipped, t, x_t.ndim)
        return mean, variance, log_variance

    def predict_x0_from_eps(self, x_t, t, eps):
        """Invert eq. 4: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
        return extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps

    def predict_eps_from_x0(self, x_t, t, x0):
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0) / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim)

    def predict_v(self, x0, t, eps):
        """Salimans & Ho 2022: v = sqrt(abar) eps - sqrt(1 - abar) x0."""
        return extract(self.sqrt_alphas_cumprod, t, x0.ndim) * eps - extract(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0

    def predict_x0_from_v(self, x_t, t, v):
        """x0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
        return extract(self.sqrt_alphas_cumprod, t, x_t.ndim) * x_t - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v

    # -- masks <-> diffusion space --------------------------------------------------------------

    def masks_to_x0(self, masks: torch.Tensor) -> torch.Tensor:
        """Binary (B, 1, H, W) / (B, H, W) in {0, 1}, or class ids (B, H, W) -> (B, K, H, W) in {-1, 1}."""
        if self.config.num_classes == 1:
            masks = masks.float()
            if masks.ndim == 3:
                masks = masks.unsqueeze(1)
            return masks * 2 - 1
        if masks.ndim == 4:
            masks = masks.squeeze(1)
        one_hot = F.one_hot(masks.long(), self.config.num_classes).permute(0, 3, 1, 2).float()
        return one_hot * 2 - 1

    def x0_to_probabilities(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) in [-1, 1] -> foreground probability (K = 1) or class probabilities summing to 1."""
        probs = ((x0 + 1) / 2).clamp(0, 1)
        if self.config.num_classes == 1:
            return probs
        return (probs + 1e-6) / (probs + 1e-6).sum(dim=1, keepdim=True)

    # -- network --------------------------------------------------------------------------------

    def network_output(self, x_t: torch.Tensor, t: torch.Tensor, images: torch.Tensor,
                       x0_estimate: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Raw UNet output for noisy masks x_t given images in [0, 1], in float32.

        With self-conditioning, `x0_estimate` is the previous estimate of the mask in [-1, 1]
        (None: no estimate yet, given to the network as zeros).
        """
        parts = [x_t]
        if self.config.self_condition:
            parts.append(torch.zeros_like(x_t) if x0_estimate is None else x0_estimate.to(x_t.dtype))
        x_in = torch.cat([*parts, images * 2 - 1], dim=1)
        return self.unet(x_in.to(memory_format=torch.channels_last) if _is_channels_last(self) else x_in, t).float()

    def output_to_x0_eps(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip: bool = True):
        """Turn the network output into (x0, eps) whatever the prediction type.

        x0 is the mask estimate in [-1, 1] (not multiplied by input_scale); eps lives in x_t's space.
        With `clip`, x0 is clamped to [-1, 1] and eps recomputed from it, so the sampler stays on
        the data range (improved-diffusion's `clip_denoised`).
        """
        kind, scale = self.config.prediction_type, self.config.input_scale
        if kind == "eps":
            x0 = self.predict_x0_from_eps(x_t, t, output) / scale
        elif kind == "x0":
            x0 = torch.tanh(output) if self.config.bounded_x0 else output
        else:
            x0 = self.predict_x0_from_v(x_t, t, output) / scale
        if clip:
            x0 = x0.clamp(-1, 1)
        if kind == "eps" and not clip:
            return x0, output
        return x0, self.predict_eps_from_x0(x_t, t, x0 * scale)

    @property
    def _predicts_logits(self) -> bool:
        return self.config.prediction_type == "x0" and self.config.bounded_x0

    # -- training -------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, masks: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Training loss for a batch: images (B, C, H, W) in [0, 1], masks as in the module doc."""
        return self.training_losses(images, masks, valid=valid)["loss"]

    def training_losses(self, images: torch.Tensor, masks: torch.Tensor, t: Optional[torch.Tensor] = None,
                        valid: Optional[torch.Tensor] = None) -> dict:
        """MSE on the prediction target, plus `dice_weight` x (soft Dice + BCE) on the predicted x0.

        valid: (B, 1, H, W) or (B, H, W) bool, False where a pixel belongs to no class (an ignore
        label, padding): those pixels count in no loss term. None: every pixel counts.
        """
        self._check_inputs(images)
        if valid is not None:
            valid = (valid if valid.ndim == 4 else valid.unsqueeze(1)).to(images.device)
            masks = masks.clamp(min=0)  # any class will do under a pixel no loss looks at
        x0 = self.masks_to_x0(masks).to(images.device)
        if valid is not None:
            x0 = x0 * valid  # 0, "no class", under ignored pixels: x_t there holds noise only
        z0 = x0 * self.config.input_scale  # what is noised
        batch = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (batch,), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.q_sample(z0, t, noise)
        estimate = self._self_condition_estimate(x_t, t, images)
        if estimate is not None and self.config.refine_from_estimate:
            x_t = self.q_sample(estimate * self.config.input_scale, t, noise)
        output = self.network_output(x_t, t, images, estimate)
        target = {"eps": noise, "x0": x0, "v": None}[self.config.prediction_type]
        if target is None:
            target = self.predict_v(z0, t, noise)
        logits = 2 * output if self._predicts_logits else None
        mse = masked_mean(F.mse_loss(torch.tanh(output) if logits is not None else output, target, reduction="none"), valid)
        losses = {"mse": mse, "loss": mse}
        if self.config.dice_weight > 0:
            truth = (x0 + 1) / 2
            if logits is not None:
                probs = torch.sigmoid(logits)
                losses["bce"] = masked_mean(F.binary_cross_entropy_with_logits(logits, truth, reduction="none"), valid)
            else:
                x0_pred, _ = self.output_to_x0_eps(output, x_t, t, clip=False)
                probs = ((x0_pred + 1) / 2).clamp(1e-4, 1 - 1e-4)
                # In fp32 with autocast off: CUDA autocast refuses binary_cross_entropy (its log is
                # unsafe in fp16), and the clamped probs are not logits, so the _with_logits form is no substitute.
                with torch.autocast(probs.device.type, enabled=False):
                    losses["bce"] = masked_mean(F.binary_cross_entropy(probs.float(), truth.float(), reduction="none"), valid)
            losses["dice"] = soft_dice_loss(probs, truth, valid)
            losses["loss"] = mse + self.config.dice_weight * (losses["dice"] + losses["bce"])
        return losses

    def _self_condition_estimate(self, x_t, t, images) -> Optional[torch.Tensor]:
        """Analog Bits' training rule: on half of the batches, first estimate x0 with no estimate
        given, and feed that (without gradient) back in; on the other half, give none. The network
        so learns both to segment from scratch (the first sampling step) and to refine an estimate
        (every later step)."""
        if not self.config.self_condition or torch.rand(()) < 0.5:
            return None
        with torch.no_grad():
            x0, _ = self.output_to_x0_eps(self.network_output(x_t, t, images), x_t, t)
        return x0

    # -- sampling -------------------------------------------------------------------------------

    def sample_timesteps(self, steps: int) -> list:
        """`steps` timesteps from T-1 down to 0, evenly spaced (DDIM's uniform skip)."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be between 1 and {self.num_timesteps}, got {steps}")
        spaced = torch.linspace(self.num_timesteps - 1, 0, steps).round().long().tolist()
        return list(dict.fromkeys(spaced))  # unique, order kept

    @torch.no_grad()
    def sample(
        self,
        images: torch.Tensor,
        steps: int = 50,
        sampler: str = "ddim",
        eta: float = 0.0,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        callback: Optional[Callable[[int, int, torch.Tensor, torch.Tensor], None]] = None,
        predict_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Reverse diffusion from noise to a mask estimate x0: (B, K, H, W) float32 in [-1, 1].

        sampler "ddim" uses `steps` evenly spaced timesteps (eta = 0: deterministic given the
        starting noise); "ddpm" is ancestral sampling over all T timesteps and ignores `steps`.
        `seed` (or a `generator`) makes the result reproducible. `callback(i, t, x_t, x0_pred)` is
        called after each step (x_t holds the mask times input_scale, plus noise; x0_pred is in
        [-1, 1]), for figures of the process. `predict_fn(x_t, t)` replaces the network (tests use
        an oracle).
        """
        x_t = None
        for i, (step, x_t, x0) in enumerate(self.reverse_process(images, steps, sampler, eta, seed, generator, predict_fn)):
            if callback is not None:
                callback(i, step, x_t, x0)
        return x_t / self.config.input_scale  # the last step lands on z0 = input_scale * x0

    @torch.no_grad()
    def reverse_process(self, images, steps: int = 50, sampler: str = "ddim", eta: float = 0.0, seed: Optional[int] = None,
                        generator: Optional[torch.Generator] = None, predict_fn=None) -> Iterator[tuple]:
        """The reverse process step by step: yields (t, x_{t_prev}, x0 estimate at t) per step.

        With self-conditioning each step's x0 estimate is handed to the next step's network call.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        self._check_inputs(images)
        if generator is None and seed is not None:
            generator = torch.Generator(device=images.device).manual_seed(seed)
        if predict_fn is None:
            def network(x_t, t, x0_estimate):
                return self.network_output(x_t, t, images, x0_estimate)
        else:  # a test's oracle knows the mask and ignores the estimate
            def network(x_t, t, x0_estimate):
                return predict_fn(x_t, t)
        shape = (images.shape[0], self.config.mask_channels, *images.shape[-2:])
        step_noise = StepNoise(shape, generator, images.device)  # forks the generator before x_T is drawn
        x_t = torch.randn(shape, generator=generator, device=images.device)

        timesteps = list(range(self.num_timesteps - 1, -1, -1)) if sampler == "ddpm" else self.sample_timesteps(steps)
        x0 = None
        for i, step in enumerate(timesteps):
            t = torch.full((shape[0],), step, device=images.device, dtype=torch.long)
            x0, eps = self.output_to_x0_eps(network(x_t, t, x0), x_t, t)
            z0 = x0 * self.config.input_scale
            if sampler == "ddpm":
                x_t = self._ddpm_step(z0, x_t, t, step_noise)
            else:
                prev_step = timesteps[i + 1] if i + 1 < len(timesteps) else -1
                x_t = self._ddim_step(z0, eps, step, prev_step, eta, step_noise)
            yield step, x_t, x0

    def _ddpm_step(self, x0, x_t, t, step_noise):
        """DDPM eq. 6-7: sample x_{t-1} ~ N(posterior mean, posterior variance); no noise at t = 0."""
        mean, _, log_variance = self.q_posterior(x0, x_t, t)
        if int(t[0]) == 0:
            return mean
        noise = step_noise()
        return mean + (0.5 * log_variance).exp() * noise

    def _ddim_step(self, x0, eps, step, prev_step, eta, step_noise):
        alpha_bar = self.alphas_cumprod[step]
        alpha_bar_prev = self.alphas_cumprod[prev_step] if prev_step >= 0 else torch.ones_like(alpha_bar)
        sigma = ddim_sigma(alpha_bar, alpha_bar_prev, eta)
        noise = None
        if eta > 0 and prev_step >= 0:
            noise = step_noise()
        return ddim_step(x0, eps, alpha_bar_prev, sigma, noise)

    @torch.no_grad()
    def segment(
        self,
        images: torch.Tensor,
        steps: int = 50,
        ensemble: int = 1,
        threshold: float = 0.5,
        seed: Optional[int] = None,
        sampler: str = "ddim",
        callback=None,
        eta: float = 1.0,
        time_ensemble: bool = True,
    ) -> "SegmentationOutput":
        """Segment images with an ensemble of `ensemble` samples each (Wolleb et al. 2021).

        A sample's probability map is its final x0, or with `time_ensemble` the mean of the x0
        estimates of all its steps. With eta = 1 (DDIM eq. 16: DDPM's posterior noise at every
        step) each estimate is made under fresh noise, so the mean over more steps is a better
        mask: more steps help (BENCHMARKS.md, "Making the steps refine"). The soft mask is
        the mean of the samples' probabilities, the hard mask its threshold (binary) or argmax
        (multi-class), the uncertainty the per-pixel std over the samples (0 when ensemble = 1).
        """
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        batch = images.shape[0]
        repeated = images.repeat_interleave(ensemble, dim=0)
        total, count = 0.0, 0
        for i, (step, x_t, x0) in enumerate(self.reverse_process(repeated, steps, sampler, eta, seed)):
            if callback is not None:
                callback(i, step, x_t, x0)
            if time_ensemble:
                total, count = total + self.x0_to_probabilities(x0), count + 1
        probs = total / count if time_ensemble else self.x0_to_probabilities(x_t / self.config.input_scale)
        probs = probs.reshape(batch, ensemble, *probs.shape[1:])
        mean_probs = probs.mean(dim=1)
        uncertainty = probs.std(dim=1, unbiased=False).mean(dim=1)
        if self.config.num_classes == 1:
            mask = (mean_probs[:, 0] > threshold).long()
        else:
            mask = mean_probs.argmax(dim=1)
        return SegmentationOutput(probabilities=mean_probs, mask=mask, uncertainty=uncertainty)

    def _check_inputs(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"images must be (B, {self.config.in_channels}, H, W), got {tuple(images.shape)}"
            )
        self.unet.check_size(images.shape[-2], images.shape[-1])


class StepNoise:
    """The noise of the stochastic reverse steps, drawn per batch row from its own generator when
    sampling is seeded: a row's noise then depends only on the seed and the row's position, not
    on how many rows are sampled with it (so --batch-size never changes a result).

    The row generators are seeded from a fork of `generator` made before anything is drawn from
    it, so the starting noise x_T stays the first draw of `generator` itself."""

    def __init__(self, shape: tuple, generator: Optional[torch.Generator], device):
        self.shape, self.device, self.rows = shape, device, None
        if generator is not None:
            fork = torch.Generator(device=generator.device)
            fork.set_state(generator.get_state())
            seeds = torch.randint(0, 2**62, (shape[0],), generator=fork, device=generator.device).tolist()
            self.rows = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self) -> torch.Tensor:
        if self.rows is None:
            return torch.randn(self.shape, device=self.device)
        return torch.stack([torch.randn(self.shape[1:], generator=row, device=self.device) for row in self.rows])


@dataclass
class SegmentationOutput:
    """probabilities: (B, K, H, W) mean over the ensemble; mask: (B, H, W) int64 (0/1 or class ids);
    uncertainty: (B, H, W) per-pixel std over the ensemble."""

    probabilities: torch.Tensor
    mask: torch.Tensor
    uncertainty: torch.Tensor


def masked_mean(per_pixel: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of (B, K, H, W) per-pixel losses over the pixels where valid (B, 1, H, W) is True (all when None)."""
    if valid is None:
        return per_pixel.mean()
    weight = valid.to(per_pixel.dtype).expand_as(per_pixel)
    return (per_pixel * weight).sum() / weight.sum().clamp(min=1)


def soft_dice_loss(probs: torch.Tensor, truth: torch.Tensor, valid: Optional[torch.Tensor] = None, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, averaged over images and channels. probs, truth: (B, K, H, W) in [0, 1];
    valid: (B, 1, H, W) bool, pixels outside it count for nothing (None: all count)."""
    if valid is not None:
        probs, truth = probs * valid, truth * valid
    dims = (2, 3)
    intersection = (probs * truth).sum(dims)
    total = probs.sum(dims) + truth.sum(dims)
    return 1 - ((2 * intersection + eps) / (total + eps)).mean()


def _is_channels_last(module: nn.Module) -> bool:
    weight = module.unet.input_conv.weight
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
