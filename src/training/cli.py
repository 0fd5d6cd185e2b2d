"""train.py's command line: flags -> (TrainConfig, DiffusionConfig) -> train()."""

import argparse
import sys
from pathlib import Path

from src.checkpoint import CheckpointError
from src.cli import ArgumentParser, image_size_from_parts, size_part
from src.device import PRECISIONS
from src.models import DiffusionConfig
from src.models.config import PREDICTION_TYPES, SCHEDULES
from src.training.config import TrainConfig
from src.training.distributed import DistributedError
from src.training.interrupt import Interrupted
from src.training.trainer import TrainingError, train
from utils.data_utils import RESIZE_MODES
from src.training.tracking import TrackingError
from utils.errors import DatasetError

AUGMENTATION_MODES = ("none", "light", "medium", "heavy")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")

# flag dest -> DiffusionConfig field; everything else goes to TrainConfig
MODEL_FLAGS = {
    "image_size": "image_size", "in_channels": "in_channels", "num_classes": "num_classes",
    "timesteps": "timesteps", "schedule": "schedule", "prediction_type": "prediction_type",
    "dice_weight": "dice_weight", "input_scale": "input_scale", "base_channels": "base_channels", "channel_mults": "channel_mults",
    "num_res_blocks": "num_res_blocks", "attention_resolutions": "attention_resolutions", "dropout": "dropout",
    "patch_size": "patch_size", "bounded_x0": "bounded_x0", "self_condition": "self_condition",
    "refine_from_estimate": "refine_from_estimate",
}


def _int_list(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4,8, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _val_fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be 0 (no validation) or a fraction below 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    d, m = TrainConfig(), DiffusionConfig()
    p = ArgumentParser(prog="train.py", description="Train the diffusion segmentation model.")
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", help="dataset with train/{images,masks} and val/{images,masks}")
    data.add_argument("--image-dir", help="folder of images")
    data.add_argument("--mask-dir", help="folder of masks (same stems, or _mask/_gt suffixes)")
    data.add_argument("--synthetic", action="store_true", help="train on built-in synthetic shapes")
    data.add_argument("--synthetic-samples", type=_positive_int, default=d.synthetic_samples)
    data.add_argument("--val-split", type=_val_fraction, default=None,
                      help="fraction held out for validation (default: 0.1 when there are >= 10 pairs and no val/ folder; 0: none)")
    data.add_argument("--ignore-index", type=int, default=None,
                      help="mask value of pixels that belong to no class (often 255): left out of losses and metrics")
    data.add_argument("--resize", choices=RESIZE_MODES, default=d.resize,
                      help="stretch to --image-size (default), or pad: keep the aspect ratio, letterbox, padding ignored")
    data.add_argument("--augmentation-mode", choices=AUGMENTATION_MODES, default=d.augmentation_mode)
    data.add_argument("--num-workers", type=int, default=d.num_workers)
    run = p.add_argument_group("run")
    run.add_argument("--output-dir", default=d.output_dir)
    run.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    run.add_argument("--epochs", type=_positive_int, default=d.epochs)
    run.add_argument("--lr", type=float, default=d.lr)
    run.add_argument("--weight-decay", type=float, default=d.weight_decay)
    run.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    run.add_argument("--grad-clip", type=float, default=d.grad_clip)
    run.add_argument("--ema-decay", type=float, default=d.ema_decay)
    run.add_argument("--seed", type=int, default=d.seed)
    run.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                     help="auto: bf16 on CPUs with AMX/AVX512-BF16 and on bf16 GPUs, else fp32")
    run.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    run.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many optimizer steps")
    run.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall-clock time")
    run.add_argument("--val-every", type=_positive_int, default=d.val_every, help="validate every N epochs")
    run.add_argument("--val-steps", type=_positive_int, default=d.val_steps, help="DDIM steps when validating")
    run.add_argument("--val-max-images", type=_positive_int, default=None)
    run.add_argument("--save-every", type=_positive_int, default=d.save_every, help="keep checkpoint_epoch_N.pth every N epochs")
    run.add_argument("--wandb", action="store_true", help="log to Weights & Biases (WANDB_MODE=offline works)")
    run.add_argument("--wandb-project", default=d.wandb_project)
    run.add_argument("--resume", help="checkpoint to continue from (its data and model settings are reused)")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --output-dir (its files are removed)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    model = p.add_argument_group("model")
    model.add_argument("--image-size", type=size_part, nargs="+", default=list(m.image_size), metavar="SIZE",
                       help="N, H W or HxW (default: %(default)s), each divisible by patch-size x 2^(levels-1)")
    model.add_argument("--in-channels", type=_positive_int, default=None, help="image channels (default: detected, 1 or 3)")
    model.add_argument("--num-classes", type=_positive_int, default=m.num_classes, help="1 = binary; K > 1: mask values are class ids")
    model.add_argument("--timesteps", type=_positive_int, default=m.timesteps)
    model.add_argument("--schedule", choices=SCHEDULES, default=m.schedule)
    model.add_argument("--prediction-type", choices=PREDICTION_TYPES, default=m.prediction_type)
    model.add_argument("--dice-weight", type=float, default=m.dice_weight, help="weight of Dice+BCE on predicted x0 (0 = MSE only)")
    model.add_argument("--input-scale", type=float, default=m.input_scale,
                       help="masks are multiplied by this before noising; < 1 makes the model read the image (default: %(default)s)")
    model.add_argument("--bounded-x0", action=argparse.BooleanOptionalAction, default=m.bounded_x0,
                       help="x0 target: predict a logit, x0 = tanh(logit), BCE on the logit (default: on)")
    model.add_argument("--self-condition", action=argparse.BooleanOptionalAction, default=m.self_condition,
                       help="the network also sees its previous mask estimate, so sampling steps refine it (default: on)")
    model.add_argument("--refine-from-estimate", action=argparse.BooleanOptionalAction, default=m.refine_from_estimate,
                       help="self-conditioned training also noises the estimate, not the true mask, into x_t (default: off)")
    model.add_argument("--base-channels", type=_positive_int, default=m.base_channels)
    model.add_argument("--channel-mults", type=_int_list, default=m.channel_mults)
    model.add_argument("--num-res-blocks", type=_positive_int, default=m.num_res_blocks)
    model.add_argument("--attention-resolutions", type=_int_list, default=m.attention_resolutions,
                       help="downsampling factors with self-attention, e.g. 8 or 4,8")
    model.add_argument("--dropout", type=float, default=m.dropout)
    model.add_argument("--patch-size", type=_positive_int, default=m.patch_size,
                       help="the UNet runs at 1/patch-size of --image-size (4: ~6.5x faster steps than 1 at 128 px on CPU; default: %(default)s)")
    return p


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set:
    """Destinations the user actually typed (so --resume can keep the checkpoint's other settings)."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
            if action.nargs == 0:
                kwargs["action"] = "store_const"
                kwargs["const"] = True
            else:
                kwargs["nargs"] = action.nargs
            probe.add_argument(*action.option_strings, **kwargs)
    return set(vars(probe.parse_known_args(argv)[0]))


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


def configs_from_args(parser, args, argv) -> tuple:
    values = vars(args)
    explicit = explicit_flags(parser, argv)
    if args.resume:
        from src.checkpoint import load_checkpoint

        try:
            state = load_checkpoint(args.resume)
        except CheckpointError as error:
            parser.error(str(error))
        saved = dict(state.get("train_config") or {})
        if saved.get("val_split") is None and not (state.get("data_split") or {}).get("val", True):
            saved["val_split"] = 0  # saved before validation became the default: keep its split
        for key in MODEL_FLAGS:
            if key in explicit:
                print(f"warning: --{key.replace('_', '-')} is ignored with --resume: the model is rebuilt from {args.resume}")
        train_values = {**saved, **{k: values[k] for k in explicit if k not in MODEL_FLAGS}, "resume": args.resume}
        return TrainConfig.from_dict(train_values), None
    if not args.synthetic and not args.data_dir and not (args.image_dir and args.mask_dir):
        parser.error("give --synthetic, --data-dir, or both --image-dir and --mask-dir")
    if args.synthetic and (args.data_dir or args.image_dir or args.mask_dir):
        parser.error("--synthetic cannot be combined with --data-dir/--image-dir/--mask-dir")
    if args.data_dir and (args.image_dir or args.mask_dir):
        parser.error("--data-dir cannot be combined with --image-dir/--mask-dir")
    for flag in ("data_dir", "image_dir", "mask_dir"):
        if values[flag] and not Path(values[flag]).is_dir():
            parser.error(f"--{flag.replace('_', '-')} {values[flag]}: no such directory")
    if values["in_channels"] is None:
        image_dir = args.image_dir or (Path(args.data_dir) / "train" / "images" if args.data_dir else None)
        values["in_channels"] = detect_in_channels(image_dir) if image_dir and Path(image_dir).is_dir() else 3
    try:
        values["image_size"] = image_size_from_parts(values["image_size"])
    except argparse.ArgumentTypeError as error:
        parser.error(f"--image-size: {error}")
    model_values = {field: values[flag] for flag, field in MODEL_FLAGS.items()}
    try:
        model_config = DiffusionConfig(**model_values)
        _check_image_size(model_config)
    except ValueError as error:
        parser.error(str(error))
    train_values = {k: v for k, v in values.items() if k not in MODEL_FLAGS}
    return TrainConfig.from_dict(train_values), model_config


def _check_image_size(config: DiffusionConfig) -> None:
    multiple = config.size_multiple
    height, width = config.image_size
    if height % multiple or width % multiple:
        raise ValueError(f"--image-size {height}x{width} is not divisible by {multiple} (--patch-size {config.patch_size} x "
                         f"2^(levels-1) for --channel-mults {','.join(map(str, config.channel_mults))})")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        train_config, model_config = configs_from_args(parser, args, argv)
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
