"""train.py's command line: flags -> (TrainConfig, DiffusionConfig) -> train()."""

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from src.checkpoint import CheckpointError
from src.cli import ArgumentParser, config_flag, image_size_from_parts, int_list, number_in, positive_int, size_part
from src.device import PRECISIONS
from src.models import DiffusionConfig
from src.models.config import PREDICTION_TYPES, SCHEDULES
from src.training.config import TrainConfig
from src.training.distributed import DistributedError
from src.training.interrupt import Interrupted
from src.training.tracking import TrackingError
from src.training.trainer import TrainingError, train
from utils.augmentations import AUGMENTATION_MODES
from utils.errors import DatasetError
from utils.resize import RESIZE_MODES

GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
MODEL_FLAGS = {f.name for f in fields(DiffusionConfig)}  # every other flag is a TrainConfig field


def build_parser() -> argparse.ArgumentParser:
    """train.py's flags: one per TrainConfig / DiffusionConfig field, help and default from the field."""
    p = ArgumentParser(prog="train.py", description="Train the diffusion segmentation model.")
    data = p.add_argument_group("data")
    for name in ("data_dir", "image_dir", "mask_dir"):
        config_flag(data, TrainConfig, name)
    config_flag(data, TrainConfig, "synthetic", action="store_true")
    config_flag(data, TrainConfig, "synthetic_samples", type=positive_int)
    config_flag(data, TrainConfig, "val_split", type=number_in(0, 1, high_inclusive=False, hint=" (0: no validation)"))
    config_flag(data, TrainConfig, "ignore_index", type=int)
    config_flag(data, TrainConfig, "resize", choices=RESIZE_MODES)
    config_flag(data, TrainConfig, "augmentation_mode", choices=AUGMENTATION_MODES)
    config_flag(data, TrainConfig, "num_workers", type=int)
    run = p.add_argument_group("run")
    config_flag(run, TrainConfig, "output_dir")
    for name in ("batch_size", "epochs", "max_steps", "val_every", "val_steps", "val_max_images", "save_every"):
        config_flag(run, TrainConfig, name, type=positive_int)
    for name in ("lr", "weight_decay", "grad_clip", "ema_decay", "max_minutes"):
        config_flag(run, TrainConfig, name, type=float)
    config_flag(run, TrainConfig, "warmup_steps", type=int)
    config_flag(run, TrainConfig, "seed", type=int)
    config_flag(run, TrainConfig, "precision", choices=PRECISIONS)
    for name in ("device", "wandb_project", "resume"):
        config_flag(run, TrainConfig, name)
    for name in ("compile", "wandb", "overwrite"):
        config_flag(run, TrainConfig, name, action="store_true")
    config_flag(run, TrainConfig, "progress", "--no-progress", action="store_false", help="no progress bars")
    model = p.add_argument_group("model")
    config_flag(model, DiffusionConfig, "image_size", type=size_part, nargs="+", metavar="SIZE")
    for name in (
        "in_channels",
        "num_classes",
        "timesteps",
        "base_channels",
        "num_res_blocks",
        "num_heads",
        "patch_size",
        "self_condition_passes",
    ):
        config_flag(model, DiffusionConfig, name, type=positive_int)
    for name in ("stem_channels", "mask_head_blocks"):
        config_flag(model, DiffusionConfig, name, type=int)
    config_flag(model, DiffusionConfig, "schedule", choices=SCHEDULES)
    config_flag(model, DiffusionConfig, "prediction_type", choices=PREDICTION_TYPES)
    for name in ("dice_weight", "input_scale", "dropout", "train_t_exponent", "crps_dice_weight"):
        config_flag(model, DiffusionConfig, name, type=float)
    switches = (
        "bounded_x0",
        "self_condition",
        "refine_from_estimate",
        "perturb_estimate",
        "estimate_pass_loss",
        "unrolled_estimate",
        "crps_samples",
        "sampler_head",
        "mask_head_context",
        "zero_init_noisy_input",
        "zero_init_time_film",
    )
    for name in switches:
        config_flag(model, DiffusionConfig, name, action=argparse.BooleanOptionalAction)
    for name in ("channel_mults", "attention_resolutions", "extra_encoder_blocks"):
        config_flag(model, DiffusionConfig, name, type=int_list)
    return p


def detect_in_channels(image_dir) -> int:
    """1 when the first images are grayscale, else 3."""
    from utils.image_io import is_image_file, open_image

    def is_grayscale(path) -> bool:
        try:
            with open_image(path) as image:
                return image.mode in GRAYSCALE_MODES
        except DatasetError:
            return False  # the data loader reports unreadable files properly

    images = sorted(p for p in Path(image_dir).iterdir() if is_image_file(p))[:8]
    return 1 if images and all(is_grayscale(p) for p in images) else 3


def configs_from_args(parser, args) -> tuple:
    """(TrainConfig, DiffusionConfig) from the parsed flags; (TrainConfig, None) with --resume,
    whose model is rebuilt from the checkpoint. The namespace holds only the flags the user typed."""
    given = vars(args)
    model_values = {k: v for k, v in given.items() if k in MODEL_FLAGS}
    train_values = {k: v for k, v in given.items() if k not in MODEL_FLAGS}
    if given.get("resume"):
        return _resumed_config(parser, given["resume"], train_values, model_values), None
    _check_data_flags(parser, given)
    if "in_channels" not in model_values:
        image_dir = given.get("image_dir") or (
            Path(given["data_dir"]) / "train" / "images" if given.get("data_dir") else None
        )
        model_values["in_channels"] = detect_in_channels(image_dir) if image_dir and Path(image_dir).is_dir() else 3
    try:
        if "image_size" in model_values:
            model_values["image_size"] = image_size_from_parts(model_values["image_size"])
        model_config = DiffusionConfig(**model_values)
        return TrainConfig(**train_values), model_config
    except (ValueError, argparse.ArgumentTypeError) as error:
        parser.error(str(error))


def _resumed_config(parser, checkpoint: str, train_values: dict, model_values: dict) -> TrainConfig:
    """The checkpoint's training options, overridden by the flags typed now."""
    from src.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(checkpoint)
    except CheckpointError as error:
        parser.error(str(error))
    saved = dict(state.get("train_config") or {})
    if saved.get("val_split") is None and not (state.get("data_split") or {}).get("val", True):
        saved["val_split"] = 0  # saved before validation became the default: keep its split
    for key in model_values:
        print(f"warning: --{key.replace('_', '-')} is ignored with --resume: the model is rebuilt from {checkpoint}")
    try:
        return TrainConfig.from_dict({**saved, **train_values})
    except ValueError as error:
        parser.error(str(error))


def _check_data_flags(parser, given: dict) -> None:
    """Exactly one data source, and its folders exist."""
    folders = [flag for flag in ("data_dir", "image_dir", "mask_dir") if given.get(flag)]
    if not given.get("synthetic") and "data_dir" not in folders and not {"image_dir", "mask_dir"} <= set(folders):
        parser.error("give --synthetic, --data-dir, or both --image-dir and --mask-dir")
    if given.get("synthetic") and folders:
        parser.error("--synthetic cannot be combined with --data-dir/--image-dir/--mask-dir")
    if "data_dir" in folders and len(folders) > 1:
        parser.error("--data-dir cannot be combined with --image-dir/--mask-dir")
    for flag in folders:
        if not Path(given[flag]).is_dir():
            parser.error(f"--{flag.replace('_', '-')} {given[flag]}: no such directory")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        train_config, model_config = configs_from_args(parser, args)
        result = train(train_config, model_config)
    except (CheckpointError, TrainingError, TrackingError, DatasetError, DistributedError) as error:
        # DatasetError: bad data found before the first step; its message names every bad file
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        print(f"\n{stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # before training was set up to save anything
        print("\ninterrupted before training started: nothing saved", file=sys.stderr)
        return 130
    _report(result)
    return 0


def _report(result) -> None:
    print(f"done: {result.steps} steps; outputs in {result.output_dir}")
    if result.best_checkpoint:
        print(f"best validation Dice {result.best_val_dice:.4f}: {result.best_checkpoint}")
    if result.last_checkpoint:
        print(f"last checkpoint: {result.last_checkpoint}")
