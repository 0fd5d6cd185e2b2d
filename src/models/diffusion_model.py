"""Denoising diffusion for segmentation masks, conditioned on the image.

The mask x0 lives in [-1, 1] (one channel for a binary mask, one one-hot channel per class
otherwise). Training noises it (times input_scale) to x_t with the Gaussian process
(gaussian_diffusion.py) and teaches the UNet, fed [x_t, previous estimate, image], to predict
eps, x0 or v (or, with a mask head, the UNet fed the image once and the head fed the rest, see
mask_head.py). Sampling runs the reverse process from pure noise, one step at a time
(`reverse_process`, a generator); `sample()` and `segment()` consume it.

Shapes: images (B, C, H, W) float in [0, 1]; binary masks (B, 1, H, W) float in {0, 1};
multi-class masks (B, H, W) int64 class ids.
"""

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResnetBlock
from .config import DiffusionConfig
from .estimate_perturbation import perturb_estimates
from .gaussian_diffusion import GaussianDiffusion, StepNoise
from .losses import bce_on_logits, bce_on_probabilities, fair_crps, masked_mean, soft_dice_loss
from .mask_head import MaskHead
from .segmentation import SegmentationOutput, SegmentationRun
from .unet import UNet

SELF_CONDITION_SOURCES = ("mean", "last")
SAMPLE_NOISE_CHANNELS = 1  # what a sampler (crps_samples, sampler_head) reads beside x_t: fresh N(0, 1) per call


class ReverseStep(NamedTuple):
    """One step of the reverse process: at timestep t the network estimated x0 ((B, K, H, W) in
    [-1, 1]), and the step moved to x_t for the next timestep (input_scale x mask, plus noise).
    With a sampler head (config.sampler_head) x0 is its draw, while x_t and the estimates handed
    on follow the mean head's x0, as without one."""

    t: int
    x_t: torch.Tensor
    x0: torch.Tensor


class DiffusionSegmentation(nn.Module):
    """A UNet and the Gaussian process around it.

    model(images, masks) -> scalar training loss
    model.reverse_process(images, steps=50) -> generator of ReverseStep
    model.sample(images, steps=50) -> (B, K, H, W) mask estimate x0 in [-1, 1]
    model.segment(images, steps=50, ensemble=N) -> SegmentationOutput
    """

    def __init__(self, config: DiffusionConfig | None = None, **overrides):
        super().__init__()
        if config is None:
            config = DiffusionConfig(**overrides)
        elif overrides:
            config = DiffusionConfig(**{**config.to_dict(), **overrides})
        self.config = config
        mask_inputs = config.mask_channels * (2 if config.self_condition else 1)  # x_t (and the estimate)
        mask_inputs += SAMPLE_NOISE_CHANNELS if config.crps_samples else 0
        encodes_once = config.mask_head_blocks > 0
        self.unet = UNet(
            in_channels=config.in_channels if encodes_once else mask_inputs + config.in_channels,
            out_channels=None if encodes_once else config.mask_channels,
            base_channels=config.base_channels,
            channel_mults=config.channel_mults,
            num_res_blocks=config.num_res_blocks,
            attention_resolutions=config.attention_resolutions,
            dropout=config.dropout,
            num_heads=config.num_heads,
            patch_size=config.patch_size,
            stem_channels=config.stem_channels,
            extra_encoder_blocks=config.extra_encoder_blocks,
        )
        self.mask_head = None
        if encodes_once:
            self.mask_head = MaskHead(
                mask_inputs,
                config.mask_channels,
                self.unet.feature_channels,
                config.mask_head_blocks,
                config.patch_size,
                0.0 if config.crps_samples else config.dropout,  # a sampler's randomness is its noise channel
                config.mask_head_context,
            )
        self.process = GaussianDiffusion(config.schedule, config.timesteps)
        # built last, so the modules above draw the same initial weights with or without it
        self.sampler_head = None
        if config.sampler_head:
            self.sampler_head = MaskHead(
                mask_inputs + SAMPLE_NOISE_CHANNELS + config.mask_channels,  # and the mean head's x0
                config.mask_channels,
                self.unet.feature_channels,
                config.mask_head_blocks,
                config.patch_size,
            )
            nn.init.zeros_(self.sampler_head.output[-1].weight)  # a new sampler draws the mean head's x0
            nn.init.zeros_(self.sampler_head.output[-1].bias)
        self._zero_init_inputs()

    @torch.no_grad()
    def _zero_init_inputs(self) -> None:
        """The config's zero_init_* choices for a new model (a checkpoint's weights replace them)."""
        if self.config.zero_init_noisy_input:
            noisy = self.config.mask_channels  # x_t comes first in network_output's input
            # pixel unshuffle keeps the channel order: x_t's channels fold into the first ones
            self.noisy_input_conv.weight[:, : noisy * self.config.patch_size**2].zero_()
            if self.mask_head is None and self.unet.stem is not None:
                self.unet.stem.layers[0].weight[:, :noisy].zero_()
        if self.config.zero_init_time_film:
            for module in self.modules():
                if isinstance(module, ResnetBlock):
                    nn.init.zeros_(module.time_proj[-1].weight)
                    nn.init.zeros_(module.time_proj[-1].bias)

    @property
    def noisy_input_conv(self) -> nn.Conv2d:
        """The convolution that reads x_t: its first mask_channels x patch_size^2 input channels."""
        return self.unet.input_conv if self.mask_head is None else self.mask_head.input_conv

    @property
    def num_timesteps(self) -> int:
        return self.config.timesteps

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

    def image_conditioning(self, images: torch.Tensor) -> torch.Tensor:
        """What every network call on `images` (in [0, 1]) shares, made once per batch: the images in
        [-1, 1], which the UNet reads beside the mask at every step, or with a mask head the UNet's
        features of them (B, feature channels, H / patch_size, W / patch_size)."""
        scaled = images * 2 - 1
        if self.mask_head is None:
            return scaled
        # The image branch sees no timestep (it runs once for all of them): at t = 0 for every
        # image, its time scale and shift are learned constants.
        t = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        return self.unet(scaled.to(memory_format=torch.channels_last) if _is_channels_last(self) else scaled, t)

    @property
    def can_mc_dropout(self) -> bool:
        """Whether this model's samples can each encode the image with dropout (member_conditioning)."""
        return self.mask_head is not None and self.config.dropout > 0

    def check_mc_dropout(self) -> None:
        """A ValueError saying why, unless can_mc_dropout (the one wording of this refusal: the
        predictor prefixes it with the flag's name)."""
        if not self.can_mc_dropout:
            raise ValueError(
                "MC dropout needs a model that encodes its image once and was trained with dropout "
                "(train.py --mask-head-blocks > 0 --dropout > 0); this one has mask_head_blocks "
                f"{self.config.mask_head_blocks}, dropout {self.config.dropout}"
            )

    def member_conditioning(
        self, images: torch.Tensor, ensemble: int, mc_dropout: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """image_conditioning for each of `ensemble` samples per image, rows image-major.

        Without `mc_dropout` every sample of an image shares one encoding. With it (MC dropout, Gal
        & Ghahramani 2016), each sample's features come from the image branch with its dropout
        active, a draw from an approximate posterior over that branch: the samples then disagree
        where the model itself is unsure, not only through the diffusion's noise. The dropout masks
        are drawn from a seed taken from `generator`, so a seeded run repeats.
        """
        if not mc_dropout:
            return self.image_conditioning(images).repeat_interleave(ensemble, dim=0)
        self.check_mc_dropout()
        dropouts = [m for m in self.unet.modules() if isinstance(m, nn.Dropout)]
        modes = [m.training for m in dropouts]
        dropout_seed = int(torch.randint(2**62, (), generator=generator, device=images.device))
        # the caller's random state is left as it was (manual_seed reseeds every device)
        devices = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(dropout_seed)
                for module in dropouts:
                    module.train()
                return self.image_conditioning(images.repeat_interleave(ensemble, dim=0))
        finally:
            for module, mode in zip(dropouts, modes):
                module.train(mode)

    def network_output(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        conditioning: torch.Tensor,
        x0_estimate: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Raw network output for noisy masks x_t, in float32; `conditioning` is
        image_conditioning(images) of the images they belong to.

        With self-conditioning, `x0_estimate` is the previous estimate of the mask in [-1, 1]
        (None: no estimate yet, given to the network as zeros). With crps_samples, the head also
        reads fresh noise, drawn here (from `generator`, or torch's global one): each call a sample.
        """
        parts = self._head_inputs(x_t, x0_estimate, self.config.crps_samples, generator)
        if self.mask_head is not None:
            return self.mask_head(torch.cat(parts, dim=1), conditioning, t).float()
        x_in = torch.cat([*parts, conditioning], dim=1)
        return self.unet(x_in.to(memory_format=torch.channels_last) if _is_channels_last(self) else x_in, t).float()

    def sampler_draw(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        conditioning: torch.Tensor,
        x0_estimate: torch.Tensor | None,
        mean_x0: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """A sample of the mask in x0's space (float32, unclamped) from the sampler head
        (config.sampler_head), for the same inputs as network_output and the mean head's x0 of
        them, `mean_x0`: that x0 plus the head's residual, which reads fresh noise (drawn from
        `generator`, or torch's global one)."""
        parts = self._head_inputs(x_t, x0_estimate, True, generator)
        parts.append(mean_x0.to(x_t.dtype))
        return mean_x0.float() + self.sampler_head(torch.cat(parts, dim=1), conditioning, t).float()

    def _head_inputs(self, x_t, x0_estimate, with_noise: bool, generator) -> list:
        """What a head reads beside the image's features: x_t, the estimate (self-conditioning;
        zeros when there is none yet) and, for a sampler, a channel of fresh N(0, 1) noise."""
        parts = [x_t]
        if self.config.self_condition:
            parts.append(torch.zeros_like(x_t) if x0_estimate is None else x0_estimate.to(x_t.dtype))
        if with_noise:
            shape = (x_t.shape[0], SAMPLE_NOISE_CHANNELS, *x_t.shape[-2:])
            parts.append(torch.randn(shape, generator=generator, device=x_t.device, dtype=x_t.dtype))
        return parts

    def output_to_x0_eps(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip: bool = True):
        """Turn the network output into (x0, eps) whatever the prediction type.

        x0 is the mask estimate in [-1, 1] (not multiplied by input_scale); eps lives in x_t's space.
        With `clip`, x0 is clamped to [-1, 1] and eps recomputed from it, so the sampler stays on
        the data range (improved-diffusion's `clip_denoised`).
        """
        kind, scale, process = self.config.prediction_type, self.config.input_scale, self.process
        if kind == "eps":
            x0 = process.predict_x0_from_eps(x_t, t, output) / scale
        elif kind == "x0":
            x0 = torch.tanh(output) if self.config.bounded_x0 and not self.config.crps_samples else output
        else:
            x0 = process.predict_x0_from_v(x_t, t, output) / scale
        if clip:
            x0 = x0.clamp(-1, 1)
        if kind == "eps" and not clip:
            return x0, output
        return x0, process.predict_eps_from_x0(x_t, t, x0 * scale)

    # -- training -------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss for a batch: images (B, C, H, W) in [0, 1], masks as in the module doc."""
        return self.training_losses(images, masks, valid=valid)["loss"]

    def training_losses(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        t: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        self_condition: bool | None = None,
        estimate_passes: int | None = None,
    ) -> dict:
        """MSE on the prediction target, plus `dice_weight` x (soft Dice + BCE) on the predicted x0.

        valid: (B, 1, H, W) or (B, H, W) bool, False where a pixel belongs to no class (an ignore
        label, padding): those pixels count in no loss term. None: every pixel counts.
        self_condition: for a self-conditioned model, None tosses training's coin for the batch
        (see _self_condition_estimate); True / False force the branch with / without the estimate
        pass (a step timing that must cover both branches, tests).
        estimate_passes: how many chained passes make the estimate (None: drawn from 1 to the
        config's self_condition_passes; a step timing covers each count).
        """
        self.check_images(images)
        if valid is not None:
            valid = (valid if valid.ndim == 4 else valid.unsqueeze(1)).to(images.device)
            masks = masks.clamp(min=0)  # any class will do under a pixel no loss looks at
        x0 = self.masks_to_x0(masks).to(images.device)
        if valid is not None:
            x0 = x0 * valid  # 0, "no class", under ignored pixels: x_t there holds noise only
        z0 = x0 * self.config.input_scale  # what is noised
        if t is None:
            t = self.training_timesteps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        x_t = self.process.q_sample(z0, t, noise)
        # once per batch: with a mask head, the estimate pass below re-runs the head only
        conditioning = self.image_conditioning(images)
        estimate, first_output = self._self_condition_estimate(x_t, t, conditioning, self_condition, estimate_passes)
        # estimate_pass_loss: the estimate pass is trained too (its loss taken here, on the x_t it
        # saw, before refine_from_estimate may rebuild x_t from the estimate)
        if first_output is not None:
            first_losses = self._losses(first_output, x0, z0, x_t, t, noise, valid)
        if estimate is not None and self.config.refine_from_estimate:
            x_t = self.process.q_sample(estimate * self.config.input_scale, t, noise)
        if self.config.crps_samples:
            losses = self._crps_losses(self._head_draw, (x_t, t, conditioning, estimate), x0, valid)
        else:
            output = self.network_output(x_t, t, conditioning, estimate)
            losses = self._losses(output, x0, z0, x_t, t, noise, valid)
        if self.sampler_head is not None:  # trained on what the mean head saw and made, without gradient
            mean_x0 = self.output_to_x0_eps(output, x_t, t)[0].detach()
            inputs = (x_t, t, conditioning.detach(), estimate, mean_x0)
            sampler = self._crps_losses(self.sampler_draw, inputs, x0, valid)
            losses["crps"] = sampler["crps"]
            if "dice" in sampler:
                losses["sampler_dice"] = sampler["dice"]
            losses["loss"] = losses["loss"] + sampler["loss"]
        if first_output is not None:
            losses["estimate_pass"] = first_losses["loss"]
            losses["loss"] = losses["loss"] + first_losses["loss"]
        return losses

    def training_timesteps(self, batch: int, device) -> torch.Tensor:
        """A batch's training timesteps, P(t <= x) = (x / T)^k for config.train_t_exponent k
        (inverse-CDF draws; k = 1 keeps the uniform randint draw, and so a default run's stream)."""
        k, T = self.config.train_t_exponent, self.num_timesteps
        if k == 1:
            return torch.randint(0, T, (batch,), device=device)
        return (T * torch.rand(batch, device=device) ** (1 / k)).long().clamp(max=T - 1)

    def _losses(self, output, x0, z0, x_t, t, noise, valid) -> dict:
        """The loss terms of one batch's network output (see training_losses)."""
        kind = self.config.prediction_type
        target = {"eps": noise, "x0": x0, "v": None}[kind]
        if target is None:
            target = self.process.predict_v(z0, t, noise)
        logits = 2 * output if kind == "x0" and self.config.bounded_x0 else None
        mse = masked_mean(
            F.mse_loss(torch.tanh(output) if logits is not None else output, target, reduction="none"), valid
        )
        losses = {"mse": mse, "loss": mse}
        if self.config.dice_weight > 0:
            truth = (x0 + 1) / 2
            if logits is not None:
                probs = torch.sigmoid(logits)
                losses["bce"] = bce_on_logits(logits, truth, valid)
            else:
                x0_pred, _ = self.output_to_x0_eps(output, x_t, t, clip=False)
                probs = ((x0_pred + 1) / 2).clamp(1e-4, 1 - 1e-4)
                losses["bce"] = bce_on_probabilities(probs, truth, valid)
            losses["dice"] = soft_dice_loss(probs, truth, valid)
            losses["loss"] = mse + self.config.dice_weight * (losses["dice"] + losses["bce"])
        return losses

    def _head_draw(self, x_t, t, conditioning, estimate) -> torch.Tensor:
        """crps_samples' draw: the head's x0 for fresh noise (its raw output, no tanh)."""
        return self.output_to_x0_eps(self.network_output(x_t, t, conditioning, estimate), x_t, t, clip=False)[0]

    def _crps_losses(self, draw, inputs: tuple, x0, valid) -> dict:
        """A sampler's loss: the fair CRPS (losses.fair_crps) of two samples, two draws of its
        noise in one batched `draw(*inputs)` call (crps_samples: _head_draw; sampler_head:
        sampler_draw), on the same inputs: least when the samples are distributed as the mask is,
        given what the head sees. With crps_dice_weight, plus soft Dice of the two draws' mean."""
        first, second = draw(*(None if x is None else torch.cat([x, x]) for x in inputs)).chunk(2)
        crps = fair_crps(first, second, x0, valid)
        losses = {"crps": crps, "loss": crps}
        if self.config.crps_dice_weight > 0:
            mean = self.x0_to_probabilities((first + second) / 2)
            losses["dice"] = soft_dice_loss(mean, (x0 + 1) / 2, valid)
            losses["loss"] = crps + self.config.crps_dice_weight * losses["dice"]
        return losses

    def _self_condition_estimate(self, x_t, t, conditioning, use: bool | None = None, passes: int | None = None):
        """(estimate, first pass's output): Analog Bits' training rule: on half of the batches,
        first estimate x0 with no estimate given, and feed that (without gradient) back in; on the
        other half, give none (None, None). The network so learns both to segment from scratch (the
        first sampling step) and to refine an estimate (every later step). `use` True / False
        decides the coin's side (None: toss it).

        With config.self_condition_passes N > 1 the estimate is made by `passes` chained passes
        (None: drawn from 1 to N), each handed the mean of the estimates before it, as sampling
        hands them (reverse_process, self_condition_on "mean"), so training also shows the network
        estimates that were already refined: what every sampling step after the second gets.

        With config.estimate_pass_loss the first pass keeps its graph and its raw output is
        returned for the loss; otherwise the output is None. With config.unrolled_estimate the first
        pass keeps its graph and its estimate is handed over with it (the refining pass's loss then
        trains the estimate pass too); otherwise the estimate is handed over without gradient.
        """
        if not self.config.self_condition:
            return None, None
        if use is None:
            use = bool(torch.rand(()) >= 0.5)
        if not use:
            return None, None
        if passes is None:  # no draw at N = 1: a default run's random stream stays as it was
            n = self.config.self_condition_passes
            passes = int(torch.randint(1, n + 1, ())) if n > 1 else 1
        unrolled = self.config.unrolled_estimate
        first_output = None
        if self.config.estimate_pass_loss or unrolled:
            first_output = self.network_output(x_t, t, conditioning, None)
        estimate, estimate_sum = None, 0.0
        for i in range(passes):
            if i == 0 and first_output is not None:
                output = first_output if unrolled else first_output.detach()
            else:
                with torch.no_grad():
                    output = self.network_output(x_t, t, conditioning, estimate)
            x0, _ = self.output_to_x0_eps(output, x_t, t)  # with a graph only where output has one
            estimate_sum = estimate_sum + x0
            estimate = estimate_sum / (i + 1)
        if self.config.perturb_estimate:
            estimate = perturb_estimates(estimate)
        return estimate, (first_output if self.config.estimate_pass_loss else None)

    # -- sampling -------------------------------------------------------------------------------

    def sample_timesteps(self, steps: int, sampler: str = "ddim") -> list:
        """The timesteps the sampler visits, from T-1 down to 0 (see GaussianDiffusion.timesteps_for)."""
        return self.process.timesteps_for(sampler, steps)

    @torch.no_grad()
    def reverse_process(
        self,
        images: torch.Tensor,
        steps: int = 50,
        sampler: str = "ddim",
        eta: float = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        self_condition_on: str = "mean",
        ensemble: int = 1,
        mc_dropout: bool = False,
    ) -> Iterator[ReverseStep]:
        """The reverse process from x_T ~ N(0, I), one ReverseStep per timestep visited.

        sampler "ddim" visits `steps` evenly spaced timesteps (eta = 0: deterministic given the
        starting noise; eta = 1: DDPM's posterior noise at every step, DDIM eq. 16); "ddpm" is
        ancestral sampling over all T timesteps and ignores `steps`. `seed` (or a `generator`)
        makes it reproducible.

        With self-conditioning, each network call is handed an estimate of x0: `self_condition_on`
        "mean", the mean of all estimates so far (the time-ensemble the segmentation is made of),
        or "last", the newest one. Why the mean is the default: training only ever hands the
        network an estimate made without one, so a chain of "last" estimates drifts away from what
        it was trained on, each step firmer than the one before. On images held out of the TRAIN
        split, one sample with the mean scored a higher Dice at 10 and 50 steps and a calibration
        error no higher at any step count (BENCHMARKS.md, seventh round).

        `ensemble` samples each image that many times, rows image-major (row b * ensemble + k is
        sample k of image b); the images are conditioned on once for all of their samples, or with
        with `mc_dropout` once per sample (see member_conditioning).
        """
        self.check_images(images)
        if self_condition_on not in SELF_CONDITION_SOURCES:
            raise ValueError(f"self_condition_on must be one of {SELF_CONDITION_SOURCES}, got {self_condition_on!r}")
        timesteps = self.sample_timesteps(steps, sampler)
        if generator is None and seed is not None:
            generator = torch.Generator(device=images.device).manual_seed(seed)
        conditioning = self.member_conditioning(images, ensemble, mc_dropout, generator)
        shape = (images.shape[0] * ensemble, self.config.mask_channels, *images.shape[-2:])
        step_noise = StepNoise(shape, generator, images.device)  # forks the generator before x_T is drawn
        x_t = torch.randn(shape, generator=generator, device=images.device)
        estimate, estimate_sum = None, 0.0
        for i, step in enumerate(timesteps):
            t = torch.full((shape[0],), step, device=images.device, dtype=torch.long)
            output = self.network_output(x_t, t, conditioning, estimate, generator=generator)
            x0, eps = self.output_to_x0_eps(output, x_t, t)
            shown = x0  # what the step reports as its estimate (with a sampler head, its draw)
            if self.sampler_head is not None:
                shown = self.sampler_draw(x_t, t, conditioning, estimate, x0, generator).clamp(-1, 1)
            estimate_sum = estimate_sum + x0
            estimate = estimate_sum / (i + 1) if self_condition_on == "mean" else x0
            z0 = x0 * self.config.input_scale
            prev_step = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            if sampler == "ddpm":
                x_t = self.process.ddpm_step(z0, x_t, step, step_noise() if step > 0 else None)
            else:
                x_t = self.process.ddim_step(
                    z0, eps, step, prev_step, eta, step_noise() if eta > 0 and prev_step >= 0 else None
                )
            yield ReverseStep(step, x_t, shown)

    def sample(
        self,
        images: torch.Tensor,
        steps: int = 50,
        sampler: str = "ddim",
        eta: float = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        self_condition_on: str = "mean",
    ) -> torch.Tensor:
        """Run the reverse process to its end: the mask estimate x0, (B, K, H, W) float32 in [-1, 1]
        (with a sampler head, where the mean head's trajectory lands; segment() averages the draws)."""
        x_t = None
        for _, x_t, _ in self.reverse_process(images, steps, sampler, eta, seed, generator, self_condition_on):
            pass
        return x_t / self.config.input_scale  # the last step lands on z0 = input_scale * x0

    def segmentation(
        self,
        images: torch.Tensor,
        steps: int = 50,
        ensemble: int = 1,
        threshold: float = 0.5,
        seed: int | None = None,
        sampler: str = "ddim",
        eta: float = 1.0,
        time_ensemble: bool = True,
        self_condition_on: str = "mean",
        mc_dropout: bool = False,
    ) -> SegmentationRun:
        """The ensemble's reverse process for `images`, to iterate step by step (figures of the
        process), or to run to its end with `.run()`; see SegmentationRun and segment()."""
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        return SegmentationRun(  # all members in one network pass per step
            self.reverse_process(
                images,
                steps,
                sampler,
                eta,
                seed,
                self_condition_on=self_condition_on,
                ensemble=ensemble,
                mc_dropout=mc_dropout,
            ),
            batch=images.shape[0],
            ensemble=ensemble,
            to_probabilities=self.x0_to_probabilities,
            input_scale=self.config.input_scale,
            time_ensemble=time_ensemble,
            threshold=threshold,
        )

    @torch.no_grad()
    def segment(
        self,
        images: torch.Tensor,
        steps: int = 50,
        ensemble: int = 1,
        threshold: float = 0.5,
        seed: int | None = None,
        sampler: str = "ddim",
        eta: float = 1.0,
        time_ensemble: bool = True,
        self_condition_on: str = "mean",
        mc_dropout: bool = False,
    ) -> SegmentationOutput:
        """Segment images with an ensemble of `ensemble` samples each (Wolleb et al. 2021).

        A sample's probability map is its final x0, or with `time_ensemble` the mean of the x0
        estimates of all its steps. With eta = 1 (DDIM eq. 16: DDPM's posterior noise at every
        step) each estimate is made under fresh noise, so the mean over more steps is a better
        mask (BENCHMARKS.md, "Making the steps refine"). The soft mask is the mean of the samples'
        probabilities, the hard mask its threshold (binary) or argmax (multi-class), the
        uncertainty the soft mask's predictive entropy (also with one sample), and ensemble_std
        the per-pixel std over the samples (0 when ensemble = 1). `self_condition_on`: which
        estimate each step of a self-conditioned model is handed (see reverse_process).
        `mc_dropout`: each sample encodes the image with dropout active (MC dropout, see
        member_conditioning; off by default: src/inference/predictor.py, PredictorOptions.samples_mc_dropout).
        """
        return self.segmentation(
            images, steps, ensemble, threshold, seed, sampler, eta, time_ensemble, self_condition_on, mc_dropout
        ).run()

    def check_images(self, images: torch.Tensor) -> None:
        """Raise ValueError unless images are (B, in_channels, H, W) at a size the UNet takes."""
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must be (B, {self.config.in_channels}, H, W), got {tuple(images.shape)}")
        self.unet.check_size(images.shape[-2], images.shape[-1])


def _is_channels_last(module: nn.Module) -> bool:
    weight = module.unet.input_conv.weight
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
