"""Seconds per image of ours' sampling settings next to the plain UNet's one forward pass.

128 px, batch 8, bf16 where the CPU has it, 1 torch thread (as the quality runs score), median
over alternated rounds; the weights do not matter for the time, so both models are fresh.

    benchmarks/.peer-venv/bin/python -m benchmarks.sampling_cost
    benchmarks/.peer-venv/bin/python -m benchmarks.sampling_cost --variants "mask head 2 blocks"

`--variants` also times ours with each named kvasir.ABLATIONS override, in the same rounds.

--latency times one image instead, as a user segmenting photos one at a time would run it: 256 px,
batch 1, 10 DDIM steps, 2 torch threads, ours only, with today's inference path (the runtime's
`prepare_inference_model`: bf16 weights, channels_last, inference mode) alternated with the
earlier one (fp32 weights cast by autocast, contiguous, no_grad), plus FLOPs per image and the
bf16 matmul peak of the same run, whose ratio is the time no kernel could beat:

    python -m benchmarks.sampling_cost --latency

--agreement CHECKPOINT segments Kvasir-SEG val images with a trained checkpoint twice, in fp32 and
on the bf16 inference path, and reports both Dice scores and how far the two masks agree:

    python -m benchmarks.sampling_cost --agreement benchmarks/results/checkpoints/kvasir_ours_128/last.pth
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common, kvasir
from src.device import select_runtime
from src.models import DiffusionSegmentation

SETTINGS = [(1, 1), (10, 1), (50, 1), (10, 5)]  # (DDIM steps, ensemble)


def seconds_per_image(run, batch: int) -> float:
    began = time.perf_counter()
    run()
    return (time.perf_counter() - began) / batch


def inference_paths(runtime, fresh, compile: bool) -> dict:
    """Name -> (model, grad mode) of the earlier and today's inference path (and, asked for, the compiled one)."""
    paths = {  # name -> (model, grad mode)
        "before: fp32 weights, autocast casts them, contiguous, no_grad": (
            runtime.prepare_model(copy.deepcopy(fresh)).eval(),
            torch.no_grad,
        ),
        "after: prepare_inference_model (bf16 weights, channels_last), inference_mode": (
            runtime.prepare_inference_model(copy.deepcopy(fresh)),
            torch.inference_mode,
        ),
    }

    if compile:
        # inductor's freezing treats the weights as constants: oneDNN gets them pre-packed once, and
        # GroupNorm + SiLU + FiLM fuse into one loop; inference only (no gradients may flow)
        compiled = runtime.prepare_inference_model(copy.deepcopy(fresh))
        compiled.unet.compile()
        paths["after + torch.compile (inductor freezing)"] = (compiled, torch.inference_mode)
    return paths


def time_paths(args, runtime, paths: dict, images) -> tuple[dict, dict]:
    """Seconds per image of each path: the first (warm-up) call's, and each alternated round's."""

    def run(name):
        model, grad_mode = paths[name]
        # (the config is read when the first call compiles; patched, not set, so nothing else sees it)
        with grad_mode(), runtime.autocast(), torch._inductor.config.patch(freezing="compile" in name):
            return model.segment(images, steps=args.steps, ensemble=1, seed=0)

    times = {name: [] for name in paths}
    first_call_seconds = {}
    for name in paths:
        first_call_seconds[name] = seconds_per_image(lambda: run(name), 1)  # warm-up: kernels chosen, compiled
    for _ in range(args.rounds):
        for name in paths:
            times[name].append(seconds_per_image(lambda: run(name), 1))
    return times, first_call_seconds


def latency(args) -> dict:
    """Seconds per image of segment() at batch 1 for the earlier and today's inference path."""
    import torch._inductor.config  # noqa: F401  (torch._inductor is not loaded before the first compile)
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.speed import matmul_peak

    torch.set_num_threads(args.threads)
    runtime = select_runtime("cpu", "bf16")
    torch.manual_seed(0)
    fresh = DiffusionSegmentation(kvasir.model_config(args))
    images = torch.rand(1, 3, args.image_size, args.image_size)
    paths = inference_paths(runtime, fresh, args.compile)

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fresh.segment(images, steps=args.steps, ensemble=1, seed=0)
    times, first_call_seconds = time_paths(args, runtime, paths, images)
    peak = matmul_peak(256 if args.smoke else 4096, torch.bfloat16)
    flops = counter.get_total_flops()
    medians = {name: float(np.median(values)) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name}: {value * 1000:.1f} ms / image, {flops / value / peak:.0%} of the bf16 matmul peak")
    print(
        f"{flops / 1e9:.1f} GFLOP per image; "
        f"at the bf16 matmul peak ({peak / 1e12:.2f} TFLOP/s) {flops / peak * 1000:.1f} ms"
    )
    return {
        "seconds_per_image": medians,
        "rounds": times,
        "gflop_per_image": flops / 1e9,
        "bf16_matmul_peak_tflops": peak / 1e12,
        "seconds_at_peak": flops / peak,
        "steps": args.steps,
        "threads": args.threads,
        "first_call_seconds": first_call_seconds,
    }


def agreement(args) -> dict:
    """fp32 vs bf16 masks of the same checkpoint, seed and sampler on the first val images."""
    from PIL import Image

    from src.checkpoint import load_checkpoint, model_from_checkpoint
    from src.inference import Predictor, PredictorOptions
    from src.metrics import dice_score

    torch.set_num_threads(args.threads)
    state = load_checkpoint(args.agreement)
    # tile=False: the whole photo resized to the model's size, as the benchmark trains and scores it
    options = PredictorOptions(steps=args.steps, ensemble=1, seed=0, tile=False)
    predictors = {
        precision: Predictor(
            model_from_checkpoint(state, args.agreement),
            select_runtime("cpu", precision),
            options,
            training_options=state.get("train_config"),
        )
        for precision in ("fp32", "bf16")
    }
    rows = []
    for stem in common.read_stems(args.data, "val")[: args.images]:
        image = np.asarray(Image.open(Path(args.data) / "images" / f"{stem}.jpg").convert("RGB"))
        truth = torch.from_numpy(np.asarray(Image.open(Path(args.data) / "masks" / f"{stem}.jpg").convert("L")) > 127)
        masks = {name: torch.from_numpy(p.predict([image])[0].mask > 0) for name, p in predictors.items()}
        rows.append(
            {
                "dice_fp32": float(dice_score(masks["fp32"], truth)),
                "dice_bf16": float(dice_score(masks["bf16"], truth)),
                "pixel_agreement": float((masks["fp32"] == masks["bf16"]).float().mean()),
                "dice_between": float(dice_score(masks["bf16"], masks["fp32"])),
            }
        )
    summary = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    summary.update(
        images=len(rows),
        min_pixel_agreement=min(r["pixel_agreement"] for r in rows),
        min_dice_between=min(r["dice_between"] for r in rows),
    )
    print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    return {"summary": summary, "per_image": rows, "checkpoint": str(args.agreement), "steps": args.steps}


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with --smoke's and the image size's defaults filled in."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=None, help="default 128; 256 with --latency")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    kvasir.add_variants_argument(p, "also time ours with these kvasir.ABLATIONS overrides, comma-separated names", [])
    p.add_argument("--latency", action="store_true", help="batch 1, ours only, before/after (see above)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps of --latency")
    p.add_argument("--threads", type=int, default=2, help="torch threads of --latency")
    p.add_argument("--compile", action="store_true", help="--latency: also time the unet under torch.compile")
    p.add_argument("--agreement", default=None, metavar="CHECKPOINT", help="fp32 vs bf16 masks (see above)")
    p.add_argument("--images", type=int, default=40, help="val images of --agreement")
    p.add_argument("--data", default=str(common.DEFAULT_DATA), help="Kvasir-SEG folder for --agreement")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="--latency in seconds: tiny model, 32 px, 2 steps, 1 round")
    args = p.parse_args(argv)
    if args.smoke:
        args.image_size, args.steps, args.rounds = 32, 2, 1
    args.image_size = args.image_size or (256 if args.latency else 128)
    return args


def sampling_cost(args) -> None:
    """Times ours' SETTINGS next to the plain UNet's forward pass and writes args.out."""
    args.out = args.out or str(common.RESULTS / "sampling_cost.json")
    torch.set_num_threads(1)
    runtime = select_runtime()
    models = {"ours": {}} | {f"ours, {name}": kvasir.ABLATIONS[name] for name in args.variants}
    models = {
        name: runtime.prepare_model(DiffusionSegmentation(kvasir.model_config(args, **overrides))).eval()
        for name, overrides in models.items()
    }
    unet = runtime.prepare_model(kvasir.plain_unet()).eval()
    images = runtime.to_device(torch.rand(args.batch_size, 3, args.image_size, args.image_size))

    def ours_run(model, steps, ensemble):
        return lambda: model.segment(images, steps=steps, ensemble=ensemble, seed=0)

    def unet_run():
        return torch.sigmoid(unet(images * 2 - 1).float())

    runs = {
        f"{name} DDIM {s}, ensemble {e}": ours_run(model, s, e) for name, model in models.items() for s, e in SETTINGS
    }
    runs["plain UNet forward"] = unet_run
    times = {name: [] for name in runs}
    with torch.no_grad(), runtime.autocast():
        for run in runs.values():
            run()  # warm-up
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name].append(seconds_per_image(run, args.batch_size))
    medians = {name: float(np.median(values)) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name}: {value * 1000:.1f} ms / image")
    common.write_json(
        args.out,
        {
            "seconds_per_image": medians,
            "rounds": times,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "precision": runtime.describe(),
            "machine": common.machine_info(),
        },
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.agreement:
        common.write_json(
            args.out or common.RESULTS / "sampling_agreement.json",
            {**agreement(args), "machine": common.machine_info()},
        )
        return 0
    if args.latency:
        result = latency(args)
        common.write_json(
            args.out or common.RESULTS / "sampling_latency.json",
            {**result, "image_size": args.image_size, "machine": common.machine_info()},
        )
        return 0
    sampling_cost(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
