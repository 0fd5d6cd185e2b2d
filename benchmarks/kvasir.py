"""Quality on Kvasir-SEG: train on splits/train.txt (880), score on splits/val.txt (120).

Dice and IoU per image at the original mask resolution (mean and std), for
  ours      the project's DiffusionSegmentation (src.training.train), DDIM at several step counts,
            ensembles of 1 and 5, and how well the ensemble's std points at the errors;
  unet      segmentation_models_pytorch.Unet, random-init encoder, Dice + BCE (plain baseline);
  peer      med-seg-diff-pytorch 0.3.3 (lucidrains' MedSegDiff) with its default sampler;
  ablation  short runs of ours over prediction target / schedule / Dice term, scored on a held-out
            part of the TRAIN split (never val).
Every model gets the same data, augmentation (--augmentation, "medium" unless told), resolution,
batch size, optimizer recipe and wall-clock budget. `unet` and `peer` re-run this script under
benchmarks/.peer-venv (made by benchmarks/setup_peer.sh), which holds their packages.

    python -m benchmarks.kvasir --model ours --image-size 128 --minutes 20
    python -m benchmarks.kvasir --model unet --image-size 128 --minutes 20
    python -m benchmarks.kvasir --model peer --image-size 128 --minutes 20
    python -m benchmarks.kvasir --model ablation --image-size 64 --minutes 2.5
    python -m benchmarks.kvasir --smoke            # seconds: tiny models, 4 images
"""

import argparse
import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common
from src.device import select_runtime
from src.models import SegmentationOutput
from src.training import validation
from src.training.config import TrainConfig
from src.training.ema import EMA
from src.training.lr_schedule import LearningRateSchedule
from src.training.optim import build_optimizer
from utils.augmentations import AUGMENTATION_MODES

ENSEMBLE_STEPS = 10  # DDIM steps of the ensemble-of-5 row and the uncertainty statistics
ABLATION_STEPS = (1, 10, 50)  # DDIM steps an ablation variant is scored with: do more steps help?
# the benchmark's recipe unless --lr / --augmentation say otherwise (report.py names a run that
# departs from it by what it changed)
RECIPE_LR = 3e-4
RECIPE_AUGMENTATION = "medium"
ABLATIONS = {  # name -> overrides of the default DiffusionConfig (the results JSON records it)
    "default": {},
    "eps": {"prediction_type": "eps"},
    "v": {"prediction_type": "v"},
    "linear schedule": {"schedule": "linear"},
    "no Dice term": {"dice_weight": 0.0},
    "input scale 1 (none)": {"input_scale": 1.0},
    "input scale 0.5": {"input_scale": 0.5},
    "input scale 0.2": {"input_scale": 0.2},
    "input scale 0.1": {"input_scale": 0.1},
    "linear + input scale 0.5": {"schedule": "linear", "input_scale": 0.5},
    "linear + input scale 0.2": {"schedule": "linear", "input_scale": 0.2},
    "linear + eps": {"schedule": "linear", "prediction_type": "eps"},
    "linear + input scale 0.1": {"schedule": "linear", "input_scale": 0.1},
    "linear + input scale 0.05": {"schedule": "linear", "input_scale": 0.05},
    "linear + input scale 0.02": {"schedule": "linear", "input_scale": 0.02},
    # per wall-clock minute (128 px): a UNet that runs at half resolution makes ~3x the steps
    "patch size 1": {"patch_size": 1},
    "patch size 2": {"patch_size": 2},
    "patch size 2 + base 48": {"patch_size": 2, "base_channels": 48},
    "patch size 2 + 5 levels": {"patch_size": 2, "channel_mults": (1, 2, 4, 8, 8)},
    "patch size 2 + bounded x0": {"patch_size": 2, "bounded_x0": True},
    "patch size 4": {"patch_size": 4},
    "patch size 2 + 1 block per level": {"patch_size": 2, "num_res_blocks": 1},
    "patch size 2 + bounded x0 + 1 block per level": {"patch_size": 2, "bounded_x0": True, "num_res_blocks": 1},
    "patch size 4 + bounded x0": {"patch_size": 4, "bounded_x0": True},
    "patch size 4 + bounded x0 + base 64": {"patch_size": 4, "bounded_x0": True, "base_channels": 64},
    "patch size 8 + bounded x0": {"patch_size": 8, "bounded_x0": True},
    "patch size 4 + bounded x0 + 1 block per level": {"patch_size": 4, "bounded_x0": True, "num_res_blocks": 1},
    "patch size 4 + eps": {"patch_size": 4, "prediction_type": "eps"},
    "patch size 4 + v": {"patch_size": 4, "prediction_type": "v"},
    "patch size 4 + bounded x0 + no Dice term": {"patch_size": 4, "bounded_x0": True, "dice_weight": 0.0},
    # making the reverse steps refine (issue: the diffusion earns its place); the default has self-conditioning
    "no self-conditioning": {"self_condition": False},
    "self-cond + input scale 0.1": {"input_scale": 0.1},
    "self-cond + input scale 0.2": {"input_scale": 0.2},
    "self-cond + 1 block per level": {"num_res_blocks": 1},
    "self-cond + refine from estimate": {"refine_from_estimate": True},
    "self-cond + refine from estimate + input scale 0.2": {"refine_from_estimate": True, "input_scale": 0.2},
    # fourth round (issue 11), at the 10-minute step budget of each variant (step_budget.py --variants):
    # capacity against steps, regularisation, and the refinement rule, on today's defaults
    "refine from estimate": {"refine_from_estimate": True},
    "dropout 0.1": {"dropout": 0.1},
    "base 48": {"base_channels": 48},
    "2 blocks per level": {"num_res_blocks": 2},
    "attention at 4 and 8": {"attention_resolutions": (4, 8)},
    "patch size 2 (today's defaults)": {"patch_size": 2},
    "base 24": {"base_channels": 24},  # capacity lost above: does a cheaper step (more steps) win?
    # fifth round: detail finer than a patch, for a few per cent of a step
    "conv stem 16": {"stem_channels": 16},
    # the same FLOPs per level as the default one level finer: 1/2 resolution at half the width,
    # a fifth level keeping the 256-channel bottom (and its attention) at 1/16
    "patch 2 + base 16 + 5 levels": {
        "patch_size": 2,
        "base_channels": 16,
        "channel_mults": (1, 2, 4, 8, 16),
        "attention_resolutions": (16,),
    },
    # sixth round: depth and context where a ResNet encoder keeps them (low resolution), the
    # time-conditioned blocks unchanged; the gap to the plain UNet is in missed polyps
    "extra encoder blocks at 1/16 and 1/32": {"extra_encoder_blocks": (1, 1)},
    "extra encoder blocks 1-2-2": {"extra_encoder_blocks": (1, 2, 2)},
    "extra encoder block per level": {"extra_encoder_blocks": (1, 1, 1, 1)},
    "5 levels": {"channel_mults": (1, 2, 4, 8, 8)},
    "wide bottom": {"channel_mults": (1, 2, 4, 16)},
    # ... or is it the diffusion's inputs: x_t's noise and the time modulation, random at init.
    # The round ran against the fifth round's default; the winner is today's default, so its
    # "default" rows are what "zero-init off" now names.
    "zero-init x_t input": {"zero_init_noisy_input": True, "zero_init_time_film": False},
    "zero-init x_t input and time FiLM": {"zero_init_noisy_input": True, "zero_init_time_film": True},
    "zero-init off (the fifth round's default)": {"zero_init_noisy_input": False, "zero_init_time_film": False},
    # Seventh round: the self-conditioned pass copies an estimate that is nearly right on training
    # images; trained on a coarsened one, does it learn to correct (and the steps to refine)?
    "perturbed estimate": {"perturb_estimate": True},
    # Eighth round: ours falls from 40 to 60 minutes while the plain UNet rises (it sees each image
    # 170 times): does dropout pay at twice the ablation budget?
    # Fourteenth (seeds 45, 46, CPU) and eighteenth rounds (seeds 47-49, H200): "dropout 0.2" against
    # the twelfth round's default; the winner is today's default, so those rounds' "default" rows are
    # what "dropout 0.1" (fourth round, above) now names.
    "dropout 0.2": {"dropout": 0.2},
    # Twenty-first round: 0 -> 0.1 -> 0.2 each scored higher; does the trend go on? (Three seeds on
    # the CPU: DDIM 10 -0.009, 10 x 5 -0.012 against 0.2; not adopted.)
    "dropout 0.3": {"dropout": 0.3},
    # Twelfth round: "dropout 0.1" (above) on today's default at twice the head's ablation budget,
    # its ensembles also scored with MC dropout in the image branch (evaluate_ours' "_mcdropout"
    # row): do samples that each encode the image afresh disagree where the model errs?
    # The winner is today's default (dropout 0.1, MC dropout for ensembles), so the round's
    # "default" rows are what this now names.
    "no dropout (the eleventh round's default)": {"dropout": 0.0},
    # Ninth round: encode the image once, denoise with a light head (DDP): does the image branch,
    # free of noise and time, segment as well, and do the head's steps refine?
    # The round ran against the eighth round's default; the winner is today's default, so its
    # "default" rows are what "no mask head" now names.
    "mask head 2 blocks": {"mask_head_blocks": 2},
    "mask head 1 block": {"mask_head_blocks": 1},
    "no mask head (the eighth round's default)": {"mask_head_blocks": 0},
    # Tenth round: with the head, steps still add little (the estimate degrades at small t) and the
    # samples differ little. Does a mask the noise hides less (x_t informative, samples diverse),
    # or training the head on its own noised estimate (exposure bias at small t), change that?
    "mask head + input scale 0.1": {"input_scale": 0.1},
    "mask head + input scale 0.2": {"input_scale": 0.2},
    "mask head + input scale 0.5": {"input_scale": 0.5},
    "mask head + refine from estimate": {"refine_from_estimate": True},
    # The round ran against the ninth round's default (input scale 0.05); the winner, 0.2, is
    # today's default ("mask head + input scale 0.2" now equals "default"), so the round's
    # "default" rows are what this now names.
    "input scale 0.05 (the ninth round's default)": {"input_scale": 0.05},
    # Nineteenth round: one estimate pass in training (Analog Bits) teaches one refinement, and
    # sampling's later steps add almost nothing (DDIM 10 - DDIM 1 +0.001 on held-out images). Does
    # training on chains of up to 3 passes (recycling) make each step improve on the last?
    # (three seeds on the CPU: level Dice, the steps +0.004 more than the default's; not adopted)
    "self-cond passes 3": {"self_condition_passes": 3},
    # Twentieth round: the head sees ~52 px of its estimate around each pixel, so a step can only
    # judge it locally; with a view of the whole estimate can the steps fix its shape? (three seeds
    # on the H200: DDIM 10 -0.013, 10 x 5 -0.015, the steps -0.004 against the default's; not adopted)
    "mask head context": {"mask_head_context": True},
    # Twenty-first round: only the half of training without an estimate trains the first sampling
    # step, which makes almost all of the mask; with the estimate pass also taking the loss (with
    # gradient), every batch trains it, for one more head backward. (Three seeds on the CPU: DDIM 10
    # -0.007, 10 x 5 -0.006, DDIM 1 itself -0.006; not adopted.)
    "estimate pass loss": {"estimate_pass_loss": True},
    # Twenty-second round: the refining pass's gradient reaches the estimate pass (unrolled refiner).
    # (Three seeds on the CPU: DDIM 10 -0.002, 10 x 5 -0.004, the steps -0.0003; not adopted.)
    "unrolled estimate": {"unrolled_estimate": True},
    # Twenty-second round: 3/4 of the training t above T / 2, where the image must carry the mask;
    # k = 3 (7/8 above T / 2) asks whether what the steps add keeps rising with k. (Three seeds on
    # the CPU: DDIM 10 -0.001 / -0.007, the steps +0.0028 / +0.0054 as DDIM 1 fell; not adopted.)
    "t density rising": {"train_t_exponent": 2.0},
    "t density rising (k 3)": {"train_t_exponent": 3.0},
    # Twenty-third round: MSE / Dice / BCE teach the head the mask's posterior mean, made at the
    # first step. Trained with the fair CRPS over two draws of a noise channel, each call is a sample
    # and the steps' time-ensemble averages fresh samples: do the steps then help, Dice level? (Three
    # seeds on the CPU: the steps +0.081, ECE 0.006 against 0.031, DDIM 10 -0.045; not adopted.)
    "crps samples": {"crps_samples": True},
    # ... and with soft Dice on the two draws' mean beside the CRPS, as the default's loss has it
    # beside MSE + BCE. (At weight 1: the steps +0.010 as DDIM 1 fell by 0.017, DDIM 10 -0.008, ECE the
    # default's; at 0.3: the steps +0.024, DDIM 10 -0.017, ECE 0.025. Neither adopted.)
    "crps samples + Dice on the mean": {"crps_samples": True, "crps_dice_weight": 1.0},
    "crps samples + Dice on the mean (weight 0.3)": {"crps_samples": True, "crps_dice_weight": 0.3},
    # Twenty-fourth round: today's head kept as it is trains (the mean head), and a second head
    # beside it draws each step's x0 around the first's, trained with the fair CRPS + Dice of the
    # draws' mean on the encoding without gradient: the sampler's steps and calibration without
    # giving up the mean head's mask? (Three seeds on the CPU, 5,571 steps: Dice -0.010 at 10 x 5,
    # the steps +0.001, ECE 0.039 against 0.032; not adopted.)
    "sampler head": {"sampler_head": True, "crps_dice_weight": 1.0},
}


def variant_names(text: str) -> list:
    """--variants' value: comma-separated names of ABLATIONS, each checked (argparse type)."""
    names = text.split(",")
    if unknown := set(names) - set(ABLATIONS):
        raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; choose from {list(ABLATIONS)}")
    return names


def add_variants_argument(parser: argparse.ArgumentParser, help_text: str, default) -> None:
    """The --variants option of every script that trains or times ablation variants."""
    parser.add_argument("--variants", type=variant_names, default=default, help=help_text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("ours", "unet", "peer", "ablation"), default="ours")
    p.add_argument("--data", default=str(common.DEFAULT_DATA), help="Kvasir-SEG folder with images/, masks/, splits/")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget per model")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="a budget in optimizer steps instead of minutes (every model): immune to other load",
    )
    p.add_argument(
        "--augmentation",
        choices=AUGMENTATION_MODES,
        default=RECIPE_AUGMENTATION,
        help="training augmentation of every model (a recipe change binds them all)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=RECIPE_LR)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 because on the shared 2-core machine a 2-thread step stalls up to 10x "
        "whenever another process takes a core (BENCHMARKS.md), while 1 thread degrades gracefully",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="DataLoader workers of ours' training (on a GPU host the augmentation then overlaps the step)",
    )
    p.add_argument(
        "--steps",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 5, 10, 25, 50],
        help="DDIM steps to report (ours)",
    )
    p.add_argument("--ensemble", type=int, default=5, help="ensemble size of the second row (ours)")
    p.add_argument("--eval-images", type=int, default=None, help="score only the first N val images")
    p.add_argument(
        "--peer-eval-images", type=int, default=4, help="val images for the peer's slow default sampler (0: skip it)"
    )
    p.add_argument(
        "--peer-ddim-steps",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10],
        help="DDIM step counts the peer is also scored with, on every val image",
    )
    p.add_argument("--peer-weights", default=None, help="score these saved peer weights instead of training")
    p.add_argument("--ours-checkpoint", default=None, help="score this checkpoint of ours instead of training")
    p.add_argument(
        "--peer-dim", type=int, default=None, help="peer Unet dim (default: closest parameter count to ours)"
    )
    p.add_argument("--ablation-holdout", type=int, default=100, help="train images held out to score ablations")
    p.add_argument(
        "--held-out",
        action="store_true",
        help="unet: train on train minus the ablation's held-out images and score those, not val "
        "(a recipe change binds every model, so the UNet's side of it is chosen on TRAIN images too)",
    )
    add_variants_argument(
        p,
        "ablation variants to run, comma-separated names of ABLATIONS (default: all); with --model ours, "
        "the one variant to train instead of today's default",
        None,
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue each of this command's trainings from its run folder's last.pth (a run cut off, "
        "e.g. by a closed session); the other flags must be the ones it was started with",
    )
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/kvasir_<model>_<size>.json)")
    p.add_argument("--smoke", action="store_true", help="seconds-long run: tiny models, 4 images, 2 steps")
    args = p.parse_args(argv)
    if args.resume and args.model in ("unet", "peer"):
        p.error(
            "--resume continues trainings of ours (--model ours or ablation); the UNet and the peer keep no run folder"
        )
    return _settle(args)


def _settle(args):
    """--smoke's tiny settings, and the default results path."""
    if args.smoke:
        args.image_size, args.minutes, args.batch_size, args.warmup_steps = 32, 0.05, 2, 1
        args.steps, args.ensemble, args.eval_images, args.peer_eval_images, args.ablation_holdout = [1, 2], 2, 2, 2, 2
        args.peer_ddim_steps = [2]
    args.out = Path(
        args.out or common.RESULTS / f"kvasir_{args.model}_{args.image_size}{'_smoke' if args.smoke else ''}.json"
    )
    return args


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def splits(args) -> tuple:
    """(train stems, val stems); the smoke run takes 4 and 2 of them."""
    train, val = common.read_stems(args.data, "train"), common.read_stems(args.data, "val")
    if args.smoke:
        return train[:4], val[:2]
    return train, val


def model_config(args, **overrides):
    from src.models import DiffusionConfig

    size = dict(image_size=(args.image_size, args.image_size))
    if args.smoke:
        size.update(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,), num_heads=1)
    return DiffusionConfig(**size, **overrides)


def ours_overrides(variants) -> dict:
    """--model ours trains today's default, or with --variants the one ablation variant named (a
    variant chosen on held-out TRAIN images, confirmed on val)."""
    if not variants:
        return {}
    if len(variants) > 1:
        raise SystemExit(f"error: --model ours trains one variant, got --variants {', '.join(variants)}")
    return ABLATIONS[variants[0]]


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------------------------


def measure_step_seconds(step, batch, repeats: int = 4) -> float:
    """Fastest of `repeats` timed `step(images, masks)` on random data, after two warm-up steps
    (the fastest, because other processes on the shared machine only ever slow a step down)."""
    images, masks = batch
    step(images, masks)
    step(images, masks)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(images, masks)
        times.append(time.perf_counter() - start)
    return float(np.min(times))


def epochs_for_budget(step_seconds: float, minutes: float, steps_per_epoch: int) -> int:
    """An upper bound on the epochs a wall-clock budget allows: twice what the measured step time
    fits, so that the clock, not the epoch count, ends the run (the lr follows elapsed time, so it
    is annealed when the budget ends however busy the machine was)."""
    return max(1, math.ceil(2 * minutes * 60 / step_seconds / steps_per_epoch))


def random_batch(args, runtime, channels: int = 3):
    size = args.image_size
    images, masks = (
        torch.rand(args.batch_size, channels, size, size),
        (torch.rand(args.batch_size, 1, size, size) > 0.5).float(),
    )
    return runtime.to_device(images), runtime.to_device(masks)


def training_step(module, loss_fn, optimizer, runtime, grad_clip=TrainConfig.grad_clip):
    """One optimizer step of the shared recipe, as `step(images, masks) -> loss`: autocast forward,
    backward, gradient clipping to `grad_clip` (None: none), the optimizer step."""

    def step(images, masks):
        with runtime.autocast():
            loss = loss_fn(module, images, masks)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def estimate_ours_step(args, config, runtime) -> float:
    """Seconds per training step of ours: with self-conditioning, the mean of its two branches.
    Half of the training steps also run the no-grad estimate pass (Analog Bits' coin), so the
    fastest of a few random steps times the cheaper branch alone: this probe did that until
    2026-11-26 and under-timed the average step by ~15 % (BENCHMARKS.md, fourth round)."""
    from src.models import DiffusionSegmentation

    torch.manual_seed(args.seed)
    model = runtime.prepare_model(DiffusionSegmentation(config))
    optimizer = build_optimizer(model.parameters(), args.lr, TrainConfig.weight_decay, runtime)
    batch = random_batch(args, runtime)

    def seconds(branch, passes=None):
        def loss(module, images, masks):
            return module.training_losses(images, masks, self_condition=branch, estimate_passes=passes)["loss"]

        # without the clip, as this probe has always timed ours (step_budget.json's figures included)
        return measure_step_seconds(training_step(model, loss, optimizer, runtime, grad_clip=None), batch)

    if not config.self_condition:
        return seconds(None)
    # the estimate branch at each of its pass counts, equally likely (one unless recycled)
    with_estimate = np.mean([seconds(True, n) for n in range(1, config.self_condition_passes + 1)])
    return float(np.mean([with_estimate, seconds(False)]))


def resumable_run(args, run_dir: Path, config) -> dict | None:
    """With --resume, what run_dir/last.pth holds of a run this same command started (None: start
    fresh, also when there is no last.pth yet, as for a variant the cut-off command never reached).
    A checkpoint of another model or recipe is an error, not a silent fresh start."""
    if not args.resume:
        return None
    from src.checkpoint import CheckpointError, load_checkpoint
    from src.models import DiffusionConfig

    path = run_dir / "last.pth"
    if not path.is_file():
        print(f"[{run_dir.name}] --resume: no {path} yet, starting fresh", flush=True)
        return None
    try:
        state = load_checkpoint(path)
    except CheckpointError as error:  # e.g. cut short while it was written: say so, leave it in place
        raise SystemExit(f"kvasir.py: error: --resume: {error}") from None
    saved = state.get("train_config") or {}
    wanted = dict(  # what makes it the same run (--minutes alone does not: the saved plan is kept)
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        max_steps=args.max_steps,
        augmentation_mode=args.augmentation,
    )
    differ = [f"{key} {saved.get(key)!r} (now {value!r})" for key, value in wanted.items() if saved.get(key) != value]
    if DiffusionConfig.from_dict(dict(state["model_config"])) != config:
        differ.append("the model's settings (another --variants?)")
    if differ:
        raise SystemExit(f"kvasir.py: error: --resume: {path} was trained with other settings: {'; '.join(differ)}")
    print(f"[{run_dir.name}] resuming at step {state['step']} from {path}", flush=True)
    return {"path": path, "step": state["step"], "epochs": saved["epochs"]}


def train_ours(args, train_stems, config, name: str):
    """src.training.train on `train_stems` only (no validation during training). Returns (model, info)."""
    from src.training import train

    runtime = select_runtime()
    steps_per_epoch = math.ceil(len(train_stems) / args.batch_size)
    run_dir = common.CHECKPOINTS / name
    resume = resumable_run(args, run_dir, config)
    if resume:  # the epochs it was planned with (with --minutes, from a step time measured then)
        step_seconds, epochs = None, resume["epochs"]
    elif args.max_steps:
        step_seconds, epochs = None, math.ceil(args.max_steps / steps_per_epoch)
    else:
        step_seconds = estimate_ours_step(args, config, runtime)
        epochs = epochs_for_budget(step_seconds, args.minutes, steps_per_epoch)
    image_dir, mask_dir = common.linked_subset(args.data, train_stems, run_dir / "data")
    if args.max_steps or step_seconds is None:
        budget = f"{args.max_steps} steps" if args.max_steps else f"{args.minutes} min in all"
    else:
        budget = f"{args.minutes} min ({step_seconds:.2f} s/step measured)"
    print(f"[{name}] {epochs} epochs x {steps_per_epoch} steps, budget {budget}", flush=True)
    train_config = TrainConfig(
        image_dir=str(image_dir),
        mask_dir=str(mask_dir),
        val_split=0,
        augmentation_mode=args.augmentation,
        num_workers=args.num_workers,
        output_dir=str(run_dir),
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        max_minutes=None if args.max_steps else args.minutes,
        max_steps=args.max_steps,
        save_every=10_000,
        progress=False,
        overwrite=True,  # a rerun replaces its own run folder
        resume=str(resume["path"]) if resume else None,
    )
    clock = common.Stopwatch()
    result = train(train_config, config)
    info = {
        "train_minutes": clock.minutes(),
        "resumed_from_step": resume["step"] if resume else None,
        "optimizer_steps": result.steps,
        "planned_epochs": epochs,
        "estimated_step_seconds": step_seconds,
        "stopped_by_budget": result.stopped_early,
        "final_loss": next((h["loss"] for h in reversed(result.history) if h.get("loss") is not None), None),
        "checkpoint": str(result.last_checkpoint),
        "parameters": parameter_count(result.model),
        "precision": runtime.describe(),
    }
    return result.model, runtime, info


@torch.no_grad()
def evaluate_ours(
    model,
    dataset,
    runtime,
    steps_list,
    ensemble: int,
    seed: int,
    batch_size: int = 8,
    max_images=None,
    keep_examples: int = 6,
) -> dict:
    """Dice/IoU at every DDIM step count (ensemble 1), and at ENSEMBLE_STEPS with `ensemble`
    samples plus the uncertainty-error statistics of its uncertainty map (for a model trained
    with dropout also that ensemble with MC dropout, "..._mcdropout"), scored by the trainer's
    validation loop (src/training/validation.scored_batches). Sampling time is recorded too. For
    every row also the calibration of its (mean) probability ("calibration") and p(1-p) of it as
    an error detector ("uncertainty_error_pq_rows"; the ensemble row's alone is
    "uncertainty_error_pq"), as run_unet records them for the plain UNet, and for each ensemble
    row the samples' std as one ("uncertainty_error_std_rows")."""
    model.eval()
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    ens_key = f"ddim{ENSEMBLE_STEPS}_ens{ensemble}"
    runs = {f"ddim{s}_ens1": (s, 1, False) for s in steps_list}
    runs.setdefault(ens_key, (ENSEMBLE_STEPS, ensemble, False))  # ensemble 1 at ENSEMBLE_STEPS may already be a row
    if model.can_mc_dropout and ensemble > 1:
        runs[ens_key + common.MC_DROPOUT] = (ENSEMBLE_STEPS, ensemble, True)  # each sample its own dropout draw
    results, calibration, pq, stats = {}, {}, {}, common.UncertaintyErrorStats(upper=1.0)  # entropy: [0, 1]
    std = {key: common.UncertaintyErrorStats() for key, (_, size, _) in runs.items() if size > 1}
    examples = {"images": [], "truths": [], "preds": [], "uncertainty": []}
    for key, (steps, size, mc_dropout) in runs.items():

        def segment(images, first, steps=steps, size=size, mc_dropout=mc_dropout):
            return model.segment(images, steps=steps, ensemble=size, seed=seed + first, mc_dropout=mc_dropout)

        calibration[key] = common.CalibrationStats()
        pq[key] = common.UncertaintyErrorStats(upper=common.UncertaintyErrorStats.PQ_UPPER)
        per_image, seconds = [], 0.0
        for batch in validation.scored_batches(segment, dataset, runtime, batch_size=batch_size, max_images=count):
            per_image.extend(batch.scores)
            seconds += batch.seconds
            for offset, (index, truth) in enumerate(zip(batch.indices, batch.truths)):
                probabilities = batch.output.probabilities[offset]
                calibration[key].add(probabilities, truth)
                pq[key].add_pq(probabilities, truth)
                if key in std:
                    std[key].add(batch.output.ensemble_std[offset], probabilities, truth)
                if key == ens_key:
                    stats.add(batch.output.uncertainty[offset], probabilities, truth)
                    if len(examples["images"]) < keep_examples:
                        _keep_example(examples, batch, offset, dataset[index][1][0])
        results[key] = {
            **common.summarize(per_image),
            "seconds_per_image": seconds / count,
            "per_image_dice": [r["dice"] for r in per_image],
        }
        print(f"  {key}: Dice {results[key]['dice']:.3f} on {count} images", flush=True)
    return {
        "rows": results,
        "uncertainty_error": stats.result(),
        "uncertainty_map": "predictive entropy",
        "ensemble_key": ens_key,
        "uncertainty_error_pq": pq[ens_key].result(),
        "uncertainty_error_pq_rows": {k: v.result() for k, v in pq.items()},
        "uncertainty_error_std_rows": {k: v.result() for k, v in std.items()},  # the ensemble rows' std
        "calibration": {key: c.result() for key, c in calibration.items()},
        "scored_stems": dataset.stems[:count],  # the order of every row's per_image_dice
        "examples": {k: torch.stack(v) for k, v in examples.items() if v},
    }


def _keep_example(examples: dict, batch, offset: int, truth) -> None:
    """Image, truth, predicted mask and uncertainty of one scored image, for the figure."""
    examples["images"].append(batch.images[offset])
    examples["truths"].append(truth)
    examples["preds"].append(batch.output.mask[offset])
    examples["uncertainty"].append(batch.output.uncertainty[offset])


def run_ours(args) -> dict:
    train_stems, val_stems = splits(args)
    config = model_config(args, **ours_overrides(args.variants))
    if args.ours_checkpoint:  # score a finished run again, e.g. with another protocol
        from src.checkpoint import load_checkpoint, load_model

        runtime = select_runtime()
        model = runtime.prepare_model(load_model(args.ours_checkpoint, use_ema=True))
        config = model.config
        state = load_checkpoint(args.ours_checkpoint)
        info = {
            "checkpoint": args.ours_checkpoint,
            "optimizer_steps": state["step"],
            "epoch": state["epoch"],
            "parameters": parameter_count(model),
            "precision": runtime.describe(),
        }
    else:
        model, runtime, info = train_ours(args, train_stems, config, args.out.stem)
    val = common.kvasir_dataset(args.data, val_stems, args.image_size)
    print(f"scoring on {len(val)} val images")
    scores = evaluate_ours(model, val, runtime, args.steps, args.ensemble, seed=args.seed, max_images=args.eval_images)
    examples = scores.pop("examples")
    if examples and not args.smoke:
        from utils.visualization import save_prediction_grid

        path = common.ROOT / "docs" / "images" / "bench_predictions.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_prediction_grid(
            examples["images"],
            examples["truths"],
            examples["preds"],
            path,
            uncertainty=examples["uncertainty"],
            num_classes=1,
        )
        print(f"wrote {path}")
    return {"model": "ours", "config": config.to_dict(), "train": info, **scores}


def run_ablation(args) -> dict:
    """Each variant trained for the same budget on train minus a held-out part, scored on that part."""
    train_stems, _ = splits(args)
    fit, held = common.holdout_split(train_stems, args.ablation_holdout, seed=0)
    held_set = common.kvasir_dataset(args.data, held, args.image_size)
    results = {}
    summary = {
        "model": "ablation",
        "scored_on": f"{len(held)} held-out TRAIN images",
        "ddim_steps": ENSEMBLE_STEPS,
        "default_config": model_config(args).to_dict(),
    }
    for index, (name, overrides) in enumerate(ABLATIONS.items()):
        if args.smoke and index > 1:
            break
        if args.variants and name not in args.variants:
            continue
        config = model_config(args, **overrides)
        seed_tag = common.seed_suffix(args.seed)  # seeds of one variant side by side
        # another recipe's run of a variant keeps the medium run's checkpoint it is paired with
        recipe_tag = "" if args.augmentation == RECIPE_AUGMENTATION else f"_{args.augmentation}"
        model, runtime, info = train_ours(
            args,
            fit,
            config,
            f"ablation_{args.image_size}_{index}{recipe_tag}{seed_tag}{'_smoke' if args.smoke else ''}",
        )
        scores = evaluate_ours(model, held_set, runtime, ABLATION_STEPS, ensemble=args.ensemble, seed=args.seed)
        scores.pop("examples", None)
        row = scores["rows"][f"ddim{ENSEMBLE_STEPS}_ens1"]
        results[name] = {
            "overrides": overrides,
            "train": info,
            "scores": scores,
            "dice": row["dice"],
            "dice_std": row["dice_std"],
            "iou": row["iou"],
            "images": row["images"],
        }
        by_steps = ", ".join(f"{key} {value['dice']:.4f}" for key, value in scores["rows"].items())
        print(f"[ablation] {name}: {by_steps} ({info['optimizer_steps']} steps)", flush=True)
        common.write_json(args.out, {**summary, "variants": results, "machine": common.machine_info()})
    return {**summary, "variants": results}


# ---------------------------------------------------------------------------------------------
# Anchors: a plain UNet and the peer, trained by one shared loop
# ---------------------------------------------------------------------------------------------


def _plan(args, step_seconds: float, steps_per_epoch: int) -> tuple:
    """(epochs, LearningRateSchedule) of a budget in steps (the same for every model, immune to
    load), or in minutes (the schedule then follows the clock)."""
    if args.max_steps:
        return math.ceil(args.max_steps / steps_per_epoch), LearningRateSchedule(
            args.lr, args.max_steps, args.warmup_steps
        )
    epochs = epochs_for_budget(step_seconds, args.minutes, steps_per_epoch)
    schedule = LearningRateSchedule(
        args.lr, epochs * steps_per_epoch, args.warmup_steps, budget_seconds=args.minutes * 60
    )
    return epochs, schedule


def train_loop(args, loss_fn, module, train_set, name: str) -> tuple:
    """The recipe src.training.train gives ours: build_optimizer's AdamW with TrainConfig's weight
    decay, warm-up + cosine lr that follows the wall-clock budget (LearningRateSchedule), bf16
    autocast where the CPU has it, TrainConfig's grad clip and EMA decay. Returns (EMA module, info)."""
    runtime = select_runtime()
    module = runtime.prepare_model(module)
    fresh_state = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = build_optimizer(module.parameters(), args.lr, TrainConfig.weight_decay, runtime)

    step_seconds = measure_step_seconds(training_step(module, loss_fn, optimizer, runtime), random_batch(args, runtime))
    module.load_state_dict(fresh_state)  # the estimate touched the weights: start again from the init
    optimizer = build_optimizer(module.parameters(), args.lr, TrainConfig.weight_decay, runtime)
    step = training_step(module, loss_fn, optimizer, runtime)
    ema = EMA(module, TrainConfig.ema_decay)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(args.seed)
    )
    epochs, schedule = _plan(args, step_seconds, len(loader))
    print(
        f"[{name}] {parameter_count(module) / 1e6:.2f}M parameters, {step_seconds:.2f} s/step -> "
        f"{epochs} epochs x {len(loader)} steps"
    )
    clock, steps, losses, stopped = common.Stopwatch(), 0, [], False
    module.train()
    for epoch in range(epochs):
        for images, masks in loader:
            for group in optimizer.param_groups:
                group["lr"] = schedule(steps, clock.minutes() * 60)
            loss = step(runtime.to_device(images), runtime.to_device(masks))
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"[{name}] loss became {loss.item()} at step {steps}")
            losses.append(loss.item())
            ema.update(module)
            steps += 1
            if steps == args.max_steps or (not args.max_steps and clock.minutes() >= args.minutes):
                stopped = True
                break
        print(
            f"[{name}] epoch {epoch + 1}/{epochs}: "
            f"loss {np.mean(losses[-len(loader) :]):.4f} ({clock.minutes():.1f} min)",
            flush=True,
        )
        if stopped:
            break
    info = {
        "train_minutes": clock.minutes(),
        "optimizer_steps": steps,
        "planned_epochs": epochs,
        "estimated_step_seconds": step_seconds,
        "stopped_by_budget": stopped,
        "final_loss": float(np.mean(losses[-50:])),
        "parameters": parameter_count(module),
        "precision": runtime.describe(),
    }
    return ema.model.eval(), runtime, info


UNET_ENCODER = "resnet18"


def plain_unet():
    """The plain baseline: segmentation_models_pytorch's Unet, random-init ResNet-18 encoder."""
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=UNET_ENCODER, encoder_weights=None, in_channels=3, classes=1)


def unet_loss(module, images, masks):
    """Soft Dice + BCE on the logits: the mask terms of our own loss."""
    import torch.nn.functional as F

    from src.models.losses import soft_dice_loss

    logits = module(images * 2 - 1).float()
    return soft_dice_loss(torch.sigmoid(logits), masks) + F.binary_cross_entropy_with_logits(logits, masks)


def run_unet(args) -> dict:
    train_stems, scored_stems = splits(args)
    if args.held_out:  # the ablation's split (run_ablation), never val
        train_stems, scored_stems = common.holdout_split(train_stems, args.ablation_holdout, seed=0)
    train_set = common.kvasir_dataset(args.data, train_stems, args.image_size, augmentations=args.augmentation)
    encoder = UNET_ENCODER
    torch.manual_seed(args.seed)
    net = plain_unet()
    model, runtime, info = train_loop(args, unet_loss, net, train_set, "unet")
    weights = common.CHECKPOINTS / f"{args.out.stem}.pt"  # to score it again later
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    info["weights"] = str(weights)
    scored = common.kvasir_dataset(args.data, scored_stems, args.image_size)
    count = len(scored) if args.eval_images is None else min(len(scored), args.eval_images)
    # the plain UNet's own uncertainty, p(1-p) of its sigmoid, and its calibration, on the same
    # pixels (original resolution) that ours's statistics use
    stats = {
        "calibration": common.CalibrationStats(),
        "uncertainty_error_pq": common.UncertaintyErrorStats(upper=common.UncertaintyErrorStats.PQ_UPPER),
    }
    row = score_anchor(
        lambda images: torch.sigmoid(model(images * 2 - 1).float()), scored, runtime, count, "unet", stats=stats
    )
    return {
        "model": "unet",
        "encoder": encoder,
        "scored_on": f"{count} held-out TRAIN images" if args.held_out else f"{count} val images",
        "train": info,
        "rows": {"unet": row},
        "calibration": {"unet": stats["calibration"].result()},
        "uncertainty_error_pq": stats["uncertainty_error_pq"].result(),
        "scored_stems": scored.stems[:count],
    }  # the order of per_image_dice


def peer_model(image_size: int, dim: int, smoke: bool = False):
    """MedSegDiff with its defaults (1000 timesteps, eps objective, full ancestral sampler);
    the smoke run uses 10 timesteps so that sampling takes seconds."""
    from med_seg_diff_pytorch import MedSegDiff, Unet

    if smoke:  # two levels, attention at the lower one, as the default's last level has it
        unet = Unet(
            dim=dim,
            image_size=image_size,
            mask_channels=1,
            input_img_channels=3,
            dim_mults=(1, 2),
            full_self_attn=(False, True),
        )
    else:
        unet = Unet(dim=dim, image_size=image_size, mask_channels=1, input_img_channels=3)
    return MedSegDiff(unet, timesteps=10 if smoke else 1000)


def peer_loss(module, images, masks):
    return module(masks, images)  # MedSegDiff.forward(segmentation in [0, 1], conditioning image)


def peer_dim_for(target_params: int, image_size: int) -> int:
    """The Unet `dim` (multiple of 8) whose parameter count is closest to ours."""
    best = None
    for dim in range(16, 97, 8):
        count = parameter_count(peer_model(image_size, dim))
        if best is None or abs(count - target_params) < abs(best[1] - target_params):
            best = (dim, count)
    return best[0]


def run_peer(args) -> dict:
    """Train MedSegDiff (or load --peer-weights), then score it on val twice: DDIM with each of
    --peer-ddim-steps on every val image (the package's own DDIM, switched on after training),
    and its default 1000-step ancestral sampler on the first --peer-eval-images, which is too
    slow for more on this CPU."""
    from src.models import DiffusionSegmentation

    train_stems, val_stems = splits(args)
    ours_params = parameter_count(DiffusionSegmentation(model_config(args)))
    dim = args.peer_dim or (8 if args.smoke else peer_dim_for(ours_params, args.image_size))
    torch.manual_seed(args.seed)
    diffusion = peer_model(args.image_size, dim, args.smoke)
    weights = common.CHECKPOINTS / f"peer_{args.image_size}{'_smoke' if args.smoke else ''}.pt"
    if args.peer_weights:
        runtime = select_runtime()
        model = runtime.prepare_model(diffusion)
        model.load_state_dict(torch.load(args.peer_weights, map_location="cpu", weights_only=True))
        model.eval()
        info = {"loaded": str(args.peer_weights), "parameters": parameter_count(model)}
    else:
        train_set = common.kvasir_dataset(args.data, train_stems, args.image_size, augmentations=args.augmentation)
        model, runtime, info = train_loop(args, peer_loss, diffusion, train_set, "peer")
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), weights)
        info["weights"] = str(weights)
    info.update(unet_dim=dim, ours_parameters=ours_params)
    val = common.kvasir_dataset(args.data, val_stems, args.image_size)
    rows = {}
    for steps in args.peer_ddim_steps:
        model.sampling_timesteps, model.is_ddim_sampling = steps, steps < model.num_timesteps
        rows[f"peer_ddim{steps}"] = score_peer(
            model,
            val,
            runtime,
            len(val) if args.eval_images is None else min(len(val), args.eval_images),
            args.seed,
            f"DDIM {steps} steps",
        )
        common.write_json(args.out, {"model": "peer", "partial": True, "train": info, "rows": rows})
    if args.peer_eval_images:  # 0 skips the default sampler (minutes per image on a CPU)
        model.sampling_timesteps, model.is_ddim_sampling = model.num_timesteps, False
        rows["peer_default"] = score_peer(
            model,
            val,
            runtime,
            min(len(val), args.peer_eval_images),
            args.seed,
            f"default ({model.num_timesteps} steps)",
        )
    return {"model": "peer", "package": "med-seg-diff-pytorch 0.3.3", "train": info, "rows": rows}


def score_peer(model, val, runtime, count: int, seed: int, sampler: str) -> dict:
    torch.manual_seed(seed)  # the package's samplers draw from the global generator
    row = score_anchor(model.sample, val, runtime, count, f"peer, {sampler}")  # sample() gives masks in [0, 1]
    return {**row, "sampler": sampler}


def score_anchor(predict, val, runtime, count: int, label: str, stats=None) -> dict:
    """Dice/IoU on the first `count` val images of `predict(images) -> (B, 1, h, w)` foreground
    probabilities, batch 8, scored by the trainer's validation loop; one row with the time per
    image (predict + scoring: "seconds_per_image"; predict alone: "forward_seconds_per_image").

    `stats`, optional: {name: stats object} filled from the same probabilities and pixels, a
    common.CalibrationStats by add(p, truth), a common.UncertaintyErrorStats by add_pq(p, truth)
    (p(1-p) as the uncertainty); the time they take is left out of both timings."""

    def segment(images, first):
        probabilities = predict(images).float().clamp(0, 1)
        return SegmentationOutput(
            probabilities, (probabilities[:, 0] > 0.5).long(), torch.zeros_like(probabilities[:, 0])
        )

    per_image, began, forward, extra = [], time.perf_counter(), 0.0, 0.0
    for batch in validation.scored_batches(segment, val, runtime, max_images=count):
        per_image.extend(batch.scores)
        forward += batch.seconds
        collected = time.perf_counter()
        for offset, truth in enumerate(batch.truths):
            for collector in (stats or {}).values():
                if isinstance(collector, common.UncertaintyErrorStats):
                    collector.add_pq(batch.output.probabilities[offset], truth)
                else:
                    collector.add(batch.output.probabilities[offset], truth)
        extra += time.perf_counter() - collected
        print(f"  [{label}] scored {batch.indices[-1] + 1}/{count} ({time.perf_counter() - began:.0f} s)", flush=True)
    row = {
        **common.summarize(per_image),
        "seconds_per_image": (time.perf_counter() - began - extra) / count,
        "forward_seconds_per_image": forward / count,
        "per_image_dice": [r["dice"] for r in per_image],
    }
    print(
        f"[{label}] Dice {row['dice']:.4f} +- {row['dice_std']:.4f}, IoU {row['iou']:.4f} "
        f"on the first {count} scored images",
        flush=True,
    )
    return row


# ---------------------------------------------------------------------------------------------


def needs_peer_venv(model: str) -> bool:
    package = {"unet": "segmentation_models_pytorch", "peer": "med_seg_diff_pytorch"}.get(model)
    return package is not None and importlib.util.find_spec(package) is None


def main(argv=None) -> int:
    args = parse_args(argv)
    if needs_peer_venv(args.model):
        if not common.PEER_PYTHON.exists():
            print(f"{args.model} needs {common.PEER_VENV}: run bash benchmarks/setup_peer.sh first", file=sys.stderr)
            return 2
        argv = sys.argv[1:] if argv is None else argv
        command = common.module_command(common.PEER_PYTHON, "kvasir", *argv)
        os.execve(command[0], command, common.module_env())
    if not (Path(args.data) / "splits" / "train.txt").is_file():
        print(f"{args.data}: not a Kvasir-SEG folder with splits/train.txt", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run = {"ours": run_ours, "unet": run_unet, "peer": run_peer, "ablation": run_ablation}[args.model]
    clock = common.Stopwatch()
    result = run(args)
    result.update(
        image_size=args.image_size,
        budget_minutes=args.minutes,
        lr=args.lr,
        batch_size=args.batch_size,
        augmentation=args.augmentation,
        seed=args.seed,
        max_steps=args.max_steps,
        total_minutes=clock.minutes(),
        peak_rss_mib=common.peak_rss_mib(),
        machine=common.machine_info(),
        smoke=args.smoke,
    )
    common.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
