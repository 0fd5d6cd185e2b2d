"""inference.py's command line: flags -> Predictor -> single, batch or interactive mode.

Every expected problem (missing or foreign checkpoint, missing input, unreadable image, bad flag
combination, impossible size) ends the program with `error: <message>` on stderr and exit code 2,
like argparse's own errors, and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.checkpoint import CheckpointError
from src.cli import ArgumentParser, config_flag, image_size_from_parts, number_in, positive_int, size_part
from src.device import PRECISIONS
from src.inference.batch import run_batch
from src.inference.interactive import run_interactive
from src.inference.outputs import OutputOptions, check_output_dir, format_written
from src.inference.predictor import RESIZE_MODES, InferenceError, Predictor, PredictorOptions
from src.inference.single import segment_file
from src.models.diffusion_model import SELF_CONDITION_SOURCES
from utils.errors import DatasetError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="inference.py",
        description="Segment images with a trained diffusion segmentation checkpoint.",
        epilog="Outputs per image, at its original size: <stem>.png (mask: 0/255, or class ids plus <stem>_color.png), "
        "<stem>_overlay.png; with the options above <stem>_prob.png/.npy, <stem>_uncertainty.png, "
        "<stem>_process.png/.gif. Batch mode adds summary.json (and metrics.csv with --mask-dir).",
    )
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint (.pth) written by train.py; the model is rebuilt from it"
    )
    p.add_argument("--input", help="an image file, or a folder of images (batch mode)")
    p.add_argument("--output", default="./inference_results", help="output folder (default: %(default)s)")
    _add_mode_flags(p.add_argument_group("modes"))
    _add_sampling_flags(p.add_argument_group("sampling"))
    _add_runtime_flags(p.add_argument_group("runtime"))
    _add_output_flags(p.add_argument_group("outputs"))
    return p


def _add_mode_flags(mode) -> None:
    mode.add_argument("--batch", action="store_true", help="segment every image of the --input folder")
    mode.add_argument("--interactive", action="store_true", help="prompt for image paths, one at a time")
    mode.add_argument(
        "--mask-dir",
        help="batch mode: ground-truth masks (a.png, a_mask.png or a_gt.png for a.jpg) to score against: "
        "metrics.csv with Dice and IoU",
    )
    mode.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="with --mask-dir: mask value left out of the scores (default: the checkpoint's --ignore-index)",
    )
    mode.add_argument(
        "--batch-size", type=positive_int, default=8, help="images (or tiles) per forward pass (default: %(default)s)"
    )


def _add_sampling_flags(sampling) -> None:
    """The sampling flags: one per PredictorOptions field, help and default from the field."""
    for name in ("steps", "ensemble"):
        config_flag(sampling, PredictorOptions, name, type=positive_int, typed_only=False)
    config_flag(sampling, PredictorOptions, "eta", type=number_in(0, 1), typed_only=False)
    for name in ("time_ensemble", "mc_dropout", "tile"):
        config_flag(sampling, PredictorOptions, name, action=argparse.BooleanOptionalAction, typed_only=False)
    config_flag(sampling, PredictorOptions, "self_condition_on", choices=SELF_CONDITION_SOURCES, typed_only=False)
    probability = number_in(0, 1, low_inclusive=False, high_inclusive=False)
    config_flag(sampling, PredictorOptions, "threshold", type=probability, typed_only=False)
    config_flag(sampling, PredictorOptions, "seed", type=int, typed_only=False)
    sampling.add_argument(
        "--image-size",
        type=size_part,
        nargs="+",
        default=None,
        metavar="SIZE",
        help="model input size: N, H W or HxW, multiples of the UNet's downsampling (default: the checkpoint's own)",
    )
    config_flag(sampling, PredictorOptions, "resize", choices=RESIZE_MODES, typed_only=False)
    overlap = number_in(0, 1, high_inclusive=False)
    config_flag(sampling, PredictorOptions, "tile_overlap", type=overlap, typed_only=False)


def _add_runtime_flags(runtime) -> None:
    runtime.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    runtime.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="autocast precision; auto = bf16 where the hardware runs it natively (default: %(default)s)",
    )
    runtime.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar in batch mode")


def _add_output_flags(outputs) -> None:
    outputs.add_argument(
        "--overlay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="save <stem>_overlay.png, the mask over the image (default: on)",
    )
    outputs.add_argument("--save-probs", action="store_true", help="save <stem>_prob.png and <stem>_prob.npy")
    outputs.add_argument(
        "--visualize-process",
        action="store_true",
        help="save <stem>_process.png and .gif: x_t and predicted x0 through the reverse diffusion",
    )


def resolve_mode(args) -> str:
    """'single', 'batch' or 'interactive' from the flags; InferenceError for impossible combinations."""
    if args.interactive:
        if args.input or args.batch:
            raise InferenceError("--interactive reads image paths at its prompt: drop --input/--batch")
        if args.mask_dir:
            raise InferenceError("--mask-dir works in batch mode only")
        return "interactive"
    if not args.input:
        raise InferenceError("give --input (an image or a folder) or --interactive")
    source = Path(args.input)
    if not source.exists():
        raise InferenceError(f"--input {source}: no such file or folder")
    if source.is_dir():
        return "batch"  # a folder means batch mode, with or without --batch
    if args.batch:
        raise InferenceError(f"--batch needs a folder as --input, got the file {source}")
    if args.mask_dir:
        raise InferenceError("--mask-dir works in batch mode only (give a folder as --input)")
    return "single"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (CheckpointError, InferenceError, DatasetError) as error:
        # user errors whose message names the file or flag: no traceback, argparse's exit code
        print(f"error: {str(error).strip()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def run(args) -> int:
    mode = resolve_mode(args)
    try:
        image_size = image_size_from_parts(args.image_size) if args.image_size else None
    except argparse.ArgumentTypeError as error:
        raise InferenceError(f"--image-size: {error}") from None
    options = PredictorOptions(
        steps=args.steps,
        ensemble=args.ensemble,
        threshold=args.threshold,
        seed=args.seed,
        resize=args.resize,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        tile_batch=args.batch_size,
        progress=args.progress,
        eta=args.eta,
        time_ensemble=args.time_ensemble,
        self_condition_on=args.self_condition_on,
        mc_dropout=args.mc_dropout,
    )
    predictor = Predictor.from_checkpoint(
        args.checkpoint, device=args.device, precision=args.precision, options=options, image_size=image_size
    )
    check_output_dir(args.output)  # a bad --output stops here, before any image is segmented
    outputs = OutputOptions(
        overlay=args.overlay, save_probs=args.save_probs, uncertainty=args.ensemble > 1, process=args.visualize_process
    )
    config = predictor.config
    print(
        f"model: {config.num_classes} class(es), {config.in_channels} channel(s), runs at "
        f"{predictor.image_size[0]}x{predictor.image_size[1]} ({predictor.options.resize}) "
        f"on {predictor.runtime.describe()}; "
        f"{args.steps} DDIM steps, ensemble {args.ensemble}"
        f"{' (MC dropout)' if options.samples_mc_dropout else ''}, "
        f"seed {args.seed}"
    )

    if mode == "interactive":
        run_interactive(predictor, args.output, outputs)
        return 0
    if mode == "single":
        result = segment_file(predictor, args.input, args.output, outputs)
        print(f"segmented {result.source} in {result.seconds:.2f} s; saved {format_written(result.written)}")
        return 0
    ignore_index = (
        args.ignore_index if args.ignore_index is not None else predictor.training_options.get("ignore_index")
    )
    return _report_batch(
        run_batch(
            predictor,
            args.input,
            args.output,
            outputs,
            batch_size=args.batch_size,
            mask_dir=args.mask_dir,
            progress=args.progress,
            ignore_index=ignore_index,
        )
    )


def _report_batch(summary) -> int:
    """Print the batch summary; exit code 1 when no image at all could be segmented."""
    per_image = f", {summary.seconds_per_image:.3f} s per image" if summary.seconds_per_image else ""
    print(f"segmented {summary.count} image(s) in {summary.total_seconds:.1f} s{per_image} -> {summary.output_dir}")
    if summary.failures:
        print(f"skipped {len(summary.failures)} problem file(s):")
        for failure in summary.failures:
            print(f"  {failure['reason']}")
    if summary.metrics_path:
        if summary.mean_dice is not None:
            print(
                f"mean Dice {summary.mean_dice:.4f}, mean IoU {summary.mean_iou:.4f} over {summary.scored} image(s) "
                f"-> {summary.metrics_path}"
            )
            if summary.miou is not None:
                per_class = ", ".join("-" if v is None else f"{v:.3f}" for v in summary.per_class_iou)
                print(f"mIoU {summary.miou:.4f} (per class: {per_class})")
        else:
            print(f"no prediction could be scored (no matching masks) -> {summary.metrics_path}")
    print(f"summary -> {summary.summary_path}")
    return 0 if summary.count else 1
