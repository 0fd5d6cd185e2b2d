"""DiffusionConfig: everything needed to rebuild a model, saved inside every checkpoint.

Checkpoint compatibility: a checkpoint stores ``config.to_dict()``. A field added later gets an
entry in LEGACY_DEFAULTS holding the value that reproduces how models were trained before it
existed (its first behaviour), so an old checkpoint rebuilds the model it was trained as while new
models get the new default. A field is never renamed or removed: unknown keys are an error.
"""

from dataclasses import asdict, dataclass, fields

from src.fields import option

from .blocks import check_stem
from .schedules import SCHEDULES
from .unet import check_image_size, per_level_counts, size_multiple

PREDICTION_TYPES = ("eps", "x0", "v")

# What a checkpoint without these fields was trained with (see the module docstring).
LEGACY_DEFAULTS = {
    "input_scale": 1.0,
    "patch_size": 1,
    "bounded_x0": False,
    "self_condition": False,
    "refine_from_estimate": False,
    "stem_channels": 0,
    "extra_encoder_blocks": (),
    "zero_init_noisy_input": False,
    "zero_init_time_film": False,
    "perturb_estimate": False,
    "mask_head_blocks": 0,
    "self_condition_passes": 1,
    "mask_head_context": False,
    "estimate_pass_loss": False,
    "unrolled_estimate": False,
    "train_t_exponent": 1.0,
    "crps_samples": False,
    "crps_dice_weight": 0.0,
    "sampler_head": False,
}


@dataclass
class DiffusionConfig:
    """The network, the noise schedule and the training target. Defaults were chosen by the
    Kvasir ablations on images held out of the training split (BENCHMARKS.md, "Ablations")."""

    in_channels: int = option(3, "image channels (train.py default: detected, 1 or 3)")
    num_classes: int = option(1, "1 = binary; K > 1: mask values are class ids")
    image_size: tuple = option((256, 256), "N, H W or HxW, each divisible by patch-size x 2^(levels-1)")
    base_channels: int = option(32, "UNet channels at full resolution")
    channel_mults: tuple = option((1, 2, 4, 8), "channel multiplier per UNet level, e.g. 1,2,4,8")
    # On a CPU budget, optimizer steps per minute matter more than depth (BENCHMARKS.md, ablations).
    num_res_blocks: int = option(1, "ResNet blocks per UNet level")
    # A ResNet encoder's depth sits at low resolution (ResNet-18: two blocks at each of 1/4-1/32),
    # where a block costs the fewest pixels; these blocks deepen the encoder without a skip each.
    extra_encoder_blocks: tuple = option(
        (), "extra encoder blocks per level, deepest last; fewer counts than levels name the deepest"
    )
    attention_resolutions: tuple = option((8,), "downsampling factors with self-attention, e.g. 8 or 4,8")
    # 0.1 since the twelfth round (held-out TRAIN images at twice the ablation budget: +0.005 at
    # DDIM 10 over no dropout, three seeds), 0.2 since the eighteenth (against 0.1, five seeds on
    # two devices: +0.002 at DDIM 10 and at 10 x 5, level; the rule asked for level); 0.3 scored
    # lower (twenty-first round, three seeds: -0.009 at DDIM 10, -0.012 at 10 x 5). With a mask
    # head it lets each ensemble sample encode the image with its own dropout draw (MC dropout).
    # Checkpoints store their dropout, so older models (0.0, 0.1) keep theirs.
    dropout: float = option(0.2, "dropout in the ResNet blocks (with a mask head: each ensemble sample's own draw)")
    num_heads: int = option(4, "self-attention heads")
    # The UNet runs at 1/patch_size of image_size (pixel unshuffle in, pixel shuffle out): the
    # step costs ~patch_size^2 less, and a mask needs less resolution than the image suggests.
    patch_size: int = option(4, "the UNet runs at 1/patch-size of --image-size")
    # Beside the fold, stride-2 convolutions from full resolution give the first features a
    # nonlinear look at detail finer than a patch (src/models/blocks.ConvStem).
    stem_channels: int = option(0, "width of a conv stem beside the patch fold (0: none; patch size a power of 2)")
    # DDP (Ji et al. 2023): the UNet encodes the image once and a light head denoises the mask at
    # every step (mask_head.py), so steps and ensemble members cost a fraction of a UNet pass.
    mask_head_blocks: int = option(
        2, "0: the whole UNet runs at every step; N > 0: it encodes the image once, a head of N blocks runs per step"
    )
    # The head's blocks see ~52 px of the estimate around each pixel; this adds a view of its whole
    # shape (mask_head.GlobalContext: 1/4 of the head's resolution, self-attention) after the first
    # block, so a step can drop a false blob or complete a large polyp the last estimate cut short.
    # Twentieth round (held-out TRAIN images, three seeds on an H200): Dice -0.013 at DDIM 10 and the
    # steps no better (DDIM 10 - DDIM 1 -0.003 against +0.001): not adopted.
    mask_head_context: bool = option(False, "with a mask head: its blocks also see the whole estimate (self-attention)")
    timesteps: int = option(1000, "diffusion timesteps T")
    # Training draws t with P(t <= x) = (x / T)^k. Uniform (k = 1) spends half of training below
    # T / 2, where x_t holds most of the mask and the network learns to read it; sampling's first step
    # (t = T - 1), which makes almost all of the final mask, reads the image alone. k = 2 (a density
    # rising linearly with t) puts 3/4 of the draws above T / 2, where the image must carry the mask.
    # Twenty-second round (held-out TRAIN images, three seeds on the CPU): k = 2 Dice -0.001 at
    # DDIM 10, k = 3 -0.007; the steps (DDIM 10 - DDIM 1) +0.0028 and +0.0054 against +0.0011, but
    # only because the first step got worse (-0.003, -0.011): not adopted.
    train_t_exponent: float = option(1.0, "training draws t with P(t <= x) = (x/T)^k: 1 uniform, > 1 favours high t")
    # linear spends more of its steps at low SNR than cosine, where the image, not x_t, must carry the mask
    schedule: str = option("linear", "noise schedule")
    prediction_type: str = option("x0", "what the network predicts")
    dice_weight: float = option(1.0, "weight of Dice + BCE on the predicted x0 (0: MSE only)")
    # Masks in [-1, 1] are multiplied by this before noising (Chen et al. 2022, Pix2Seq-D; Chen 2023,
    # "On the importance of noise scheduling"). A binary mask is so easy to read through noise that
    # at scale 1 the network learns to denoise x_t and barely looks at the image; < 1 hides the mask
    # at every noise level and forces it to segment the image.
    # 0.2 since the tenth round: with the mask head, held-out TRAIN images scored higher than at 0.05
    # on a GPU (+0.010 at 10 steps x 5 samples, three seeds); a CPU repeat and val found them level.
    input_scale: float = option(0.2, "masks are multiplied by this before noising; < 1 makes the model read the image")
    # With prediction_type "x0": the network's output o is a logit and x0 = tanh(o), so the predicted
    # mask can never leave [-1, 1] and BCE is taken on the logit 2o (p = sigmoid(2o)), whose gradient
    # does not vanish or explode the way BCE on a clamped linear output does.
    bounded_x0: bool = option(True, "x0 target: predict a logit, x0 = tanh(logit), BCE on the logit")
    # Self-conditioning (Chen, Zhang & Hinton 2022, "Analog Bits", sec. 3.3): the UNet also sees its
    # previous x0 estimate. At a low input_scale x_t alone says almost nothing about the mask, so
    # without it every reverse step starts from scratch; with it a step can build on the last
    # step's mask, which the time-ensembled sampler (segment) turns into a gain from more steps.
    self_condition: bool = option(True, "the network also sees its previous mask estimate, so sampling steps refine it")
    # With self-conditioning: Analog Bits hands over the estimate of ONE pass without an estimate,
    # so the network is trained for one refinement while sampling chains ten. N > 1 recycles (as
    # AlphaFold 2 does): the estimate half of training draws 1 to N no-grad passes, each handed the
    # mean of the estimates before it (as sampling hands them), so the network also learns to
    # improve an estimate that was itself refined. At 3 (nineteenth round, held-out TRAIN images,
    # three seeds): level Dice, the steps +0.004 more than at 1, short of the +0.005 asked: not adopted.
    self_condition_passes: int = option(
        1, "self-conditioned training hands over the estimate of 1 to N chained passes (1: Analog Bits)"
    )
    # With self-conditioning: the self-conditioned half of training also noises the estimate, not
    # the true mask, into x_t. Sampling puts the last estimate into x_t (DDIM eq. 12); a network
    # trained only on true masks there trusts the faint mask it finds in x_t and keeps its own
    # errors (exposure bias, Ning et al. 2023). Trained on its estimates, it learns to correct them.
    refine_from_estimate: bool = option(
        False, "self-conditioned training also noises the estimate, not the true mask, into x_t"
    )
    # With self-conditioning: the estimate handed over in training is first coarsened (moved at
    # its boundary, made less sure; estimate_perturbation.py), so the network learns to correct an
    # estimate rather than to copy one that is nearly right on the images it trains on.
    perturb_estimate: bool = option(
        False, "self-conditioned training hands over a coarsened estimate (boundary moved, less sure)"
    )
    # With self-conditioning: Analog Bits makes the estimate without gradient, so only the half of
    # the batches that hands over no estimate trains the first sampling step (which, at a low
    # input scale, makes almost all of the final mask). With this, the estimate half's first pass
    # also takes the loss, with gradient (the estimate is still handed over detached): every batch
    # trains the first step, for one more head backward (the image is encoded once for both).
    # Twenty-first round (held-out TRAIN images, three seeds on the CPU): Dice -0.007 at DDIM 10 and
    # -0.006 at 10 x 5, the first step itself no better (-0.006): not adopted.
    estimate_pass_loss: bool = option(
        False, "self-conditioned training also takes the loss on the estimate pass (with gradient)"
    )
    # With self-conditioning: the estimate is handed over WITH its gradient, so the refining pass's
    # loss also trains the estimate pass through it: the two passes are trained as one unrolled
    # network (a recurrent refiner's training), the first learning to make an estimate the second
    # can improve, not only a mask on its own. Analog Bits stops this gradient to save the backward
    # pass; with the image encoded once, only the head's backward is added. Twenty-second round
    # (held-out TRAIN images, three seeds on the CPU): Dice -0.002 at DDIM 10 and -0.004 at 10 x 5,
    # the steps no better (DDIM 10 - DDIM 1 -0.0003 against +0.0011): not adopted.
    unrolled_estimate: bool = option(
        False, "self-conditioned training passes the refining pass's gradient back through the estimate"
    )
    # With a mask head and the x0 target: MSE, Dice and BCE are scores of a mean, so the head learns
    # the posterior mean of the mask and makes it at the first step; every later step can only
    # repeat it. With this the head also reads a channel of fresh Gaussian noise and is trained with
    # the fair CRPS (Gneiting & Raftery 2007; Ferro 2014) over two draws of that noise sharing the
    # image, x_t, estimate and t: (|X1 - y| + |X2 - y|) / 2 - |X1 - X2| / 2 per pixel, a strictly
    # proper score of samples, in place of MSE + Dice + BCE. Each call then gives a sample of the
    # mask, the steps' time-ensemble averages fresh samples, and the ensemble's spread is the
    # samples' own. x0 is the head's raw output (no tanh: the score keeps it in [-1, 1], and a
    # saturated tanh would stop the gradient of a sample on the wrong side); the head has no dropout
    # (its randomness is the noise channel, in training and sampling alike). Twenty-third round
    # (held-out TRAIN images, three seeds on the CPU): the steps help (DDIM 10 - DDIM 1 +0.081) and the
    # 10 x 5 mean is calibrated (ECE 0.006 against 0.031), but Dice -0.045 at DDIM 10: not adopted.
    crps_samples: bool = option(
        False, "with a mask head: it reads fresh noise and is trained with the fair CRPS, so each step gives a sample"
    )
    # With crps_samples: the CRPS is a proper score, which MSE + BCE are too; the default's loss adds
    # soft Dice, which aims at the metric. This adds soft Dice of the two draws' mean (an estimate
    # of the head's mean mask) at this weight. At 1 (twenty-third round, the same protocol): the steps
    # +0.010 (default +0.001) as DDIM 1 fell by 0.017; DDIM 10 -0.008, ECE the default's. At 0.3: the
    # steps +0.024, DDIM 10 -0.017, ECE 0.025. Not adopted.
    crps_dice_weight: float = option(
        0.0, "with crps_samples or sampler_head: weight of soft Dice on the mean of the two draws"
    )
    # crps_samples made the one head a sampler, and the mean of its samples was a worse mask than
    # a head trained on the mean. This keeps today's head (the mean head: trained as today, it
    # drives the reverse process) and adds a second one beside it, the sampler head, that reads
    # x_t, the estimate, a channel of fresh noise and the mean head's x0, and adds a residual to
    # that x0, trained with the fair CRPS of two draws (plus crps_dice_weight x soft Dice of their
    # mean) on the encoding and x0 without gradient, so the image branch and the mean head learn
    # as today's do. Its output layer starts at zero: a new sampler draws the mean head's x0. Each
    # sampling step's x0 (the time-ensemble, the ensemble, the process figure) is the sampler's
    # draw; one more head pass per step. Twenty-fourth round (held-out TRAIN images, three seeds on
    # the CPU, crps_dice_weight 1, 29 % more time per training step): Dice -0.010 at 10 x 5, the steps
    # no better (+0.001), ECE 0.039 against 0.032, the draws within 0.015 of the mean head's x0 (the
    # Dice term asked for that mask again): not adopted.
    sampler_head: bool = option(
        False, "with a mask head: a second head draws each step's x0 around the first's (fair CRPS)"
    )

    # At a small input_scale (0.05 when this was chosen), x_t is noise at almost every t, and with
    # the default init it makes about half of the first features' mean square: the network must
    # first learn to ignore it. Starting its input weights at zero leaves x_t silent until training
    # finds it useful.
    zero_init_noisy_input: bool = option(True, "new models start with the input weights of x_t at zero")
    # Likewise the per-block time scale and shift start as a random function of t, which at a low
    # input scale carries little information; at zero every block starts time-independent.
    zero_init_time_film: bool = option(True, "new models start with the time scale and shift of every block at zero")

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.num_classes < 1 or self.in_channels < 1 or self.timesteps < 1 or self.patch_size < 1:
            raise ValueError("num_classes, in_channels, timesteps and patch_size must be positive")
        if self.self_condition_passes < 1:
            raise ValueError(f"self_condition_passes must be >= 1, got {self.self_condition_passes}")
        if self.mask_head_blocks < 0:
            raise ValueError(f"mask_head_blocks must be >= 0, got {self.mask_head_blocks}")
        check_stem(self.stem_channels, self.patch_size)
        if self.crps_samples and (self.mask_head_blocks < 1 or self.prediction_type != "x0"):
            raise ValueError(
                "crps_samples needs a mask head and the x0 target (mask_head_blocks > 0, prediction_type x0), "
                f"got mask_head_blocks {self.mask_head_blocks}, prediction_type {self.prediction_type!r}"
            )
        if self.sampler_head and (self.mask_head_blocks < 1 or self.prediction_type != "x0" or self.crps_samples):
            raise ValueError(
                "sampler_head needs a mask head and the x0 target, and replaces crps_samples (mask_head_blocks > 0, "
                f"prediction_type x0, no crps_samples), got mask_head_blocks {self.mask_head_blocks}, "
                f"prediction_type {self.prediction_type!r}, crps_samples {self.crps_samples}"
            )
        if self.crps_dice_weight < 0 or (self.crps_dice_weight > 0 and not (self.crps_samples or self.sampler_head)):
            raise ValueError(
                f"crps_dice_weight must be >= 0 and needs crps_samples or sampler_head, got {self.crps_dice_weight}"
            )
        if not self.train_t_exponent > 0:
            raise ValueError(f"train_t_exponent must be > 0, got {self.train_t_exponent}")
        if not 0 < self.input_scale <= 1:
            raise ValueError(f"input_scale must be in (0, 1], got {self.input_scale}")
        if not 0 <= self.dropout < 1:  # torch's own error would come from deep inside the model
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        self.image_size = tuple(self.image_size)
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)
        self.extra_encoder_blocks = tuple(self.extra_encoder_blocks)
        per_level_counts(self.extra_encoder_blocks, len(self.channel_mults))
        check_image_size(*self.image_size, self.patch_size, len(self.channel_mults))

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
        return cls(**{**LEGACY_DEFAULTS, **values})
