"""Sampler settings of one trained checkpoint, scored on the ablations' 100 images held out of the
TRAIN split (never val): do more steps help, with and without fresh noise per step (eta) and
time-ensembling (a sample is the mean of its steps' estimates), and with each step handed the
mean of the estimates so far or the last one (`--self-condition-on`)? Each row gives the Dice and
the calibration error (ECE, 15 bins, per-image bin sums kept for a paired image bootstrap). Also
the Dice of every step's own x0 estimate along a deterministic 10-step trajectory, which shows
where the estimate gets better or worse.

    python -m benchmarks.sampler_ablation --checkpoint benchmarks/results/checkpoints/ablation_128_33/last.pth
    python -m benchmarks.sampler_ablation --settings sources --self-condition-on mean,last \
        --checkpoint benchmarks/results/checkpoints/round6_cpu/ablation_128_51/last.pth
"""

import argparse
import sys

import numpy as np
import torch

from benchmarks import common
from src.checkpoint import load_model
from src.device import select_runtime
from src.models.diffusion_model import SELF_CONDITION_SOURCES
from src.training import validation

# (DDIM steps, eta, time_ensemble, ensemble)
SAMPLERS = [
    (1, 0.0, False, 1),
    (10, 0.0, False, 1),
    (50, 0.0, False, 1),
    (10, 1.0, False, 1),
    (10, 0.0, True, 1),
    (5, 1.0, True, 1),
    (10, 1.0, True, 1),
    (50, 1.0, True, 1),
    (10, 0.0, False, 5),
    (10, 1.0, True, 5),
]
# segment()'s defaults (eta 1, time-ensembled) at the step counts and ensemble benchmarks/kvasir.py scores
SOURCES = [(1, 1.0, True, 1), (5, 1.0, True, 1), (10, 1.0, True, 1), (50, 1.0, True, 1), (10, 1.0, True, 5)]
SETTINGS = {"samplers": SAMPLERS, "sources": SOURCES}


def held_out_set(data, holdout: int, image_size: int):
    train = common.read_stems(data, "train")
    _, held = common.holdout_split(train, holdout, seed=0)
    return common.kvasir_dataset(data, held, image_size)


def batches(dataset, size: int = 8):
    for start in range(0, len(dataset), size):
        indices = list(range(start, min(start + size, len(dataset))))
        yield start, indices, torch.stack([dataset[i][0] for i in indices])


def score_setting(model, dataset, runtime, setting: tuple, source: str, seed: int) -> tuple[list, list]:
    """Per-image Dice of one sampler setting, scored by the trainer's validation loop, and per-image
    calibration bins (count, sum of p, sum of truths; CalibrationStats at the original resolution)."""
    steps, eta, time_ensemble, ensemble = setting

    def segment(images, first):
        return model.segment(
            images,
            steps=steps,
            ensemble=ensemble,
            seed=seed + first,
            eta=eta,
            time_ensemble=time_ensemble,
            self_condition_on=source,
        )

    dice, bins = [], []
    for batch in validation.scored_batches(segment, dataset, runtime):
        for offset, (score, truth) in enumerate(zip(batch.scores, batch.truths)):
            calibration = common.CalibrationStats()
            calibration.add(batch.output.probabilities[offset], truth)
            dice.append(score["dice"])
            bins.append([calibration.count.tolist(), calibration.sum_p.tolist(), calibration.sum_y.tolist()])
    return dice, bins


@torch.no_grad()
def trajectory_dice(model, dataset, runtime, steps: int, seed: int) -> dict:
    """Mean Dice of each step's own x0 estimate along deterministic DDIM (eta 0), keyed by t."""
    per_step = {}
    for start, indices, images in batches(dataset):
        with runtime.autocast():
            for t, _, x0 in model.reverse_process(runtime.to_device(images), steps, eta=0.0, seed=seed + start):
                probabilities = model.x0_to_probabilities(x0).float().cpu()
                per_step.setdefault(t, []).extend(
                    common.score_probabilities(probabilities[k], dataset.load_original_mask(i))["dice"]
                    for k, i in enumerate(indices)
                )
    return {str(t): float(np.mean(v)) for t, v in per_step.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--settings",
        choices=tuple(SETTINGS),
        default="samplers",
        help="samplers: DDIM steps x eta x time-ensembling x samples; sources: segment()'s defaults at 1-50 steps",
    )
    p.add_argument(
        "--self-condition-on",
        default="mean",
        help="comma-separated estimates handed to each step (mean, last): every setting of more than one step "
        "runs with each",
    )
    p.add_argument("--data", default=str(common.DEFAULT_DATA))
    p.add_argument("--holdout", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(common.RESULTS / "sampler_ablation.json"))
    args = p.parse_args(argv)
    sources = [name.strip() for name in args.self_condition_on.split(",")]
    if unknown := set(sources) - set(SELF_CONDITION_SOURCES):
        p.error(f"--self-condition-on: unknown {', '.join(sorted(unknown))} (choose from {SELF_CONDITION_SOURCES})")
    torch.set_num_threads(args.threads)
    runtime = select_runtime()
    model = runtime.prepare_model(load_model(args.checkpoint, use_ema=True)).eval()
    dataset = held_out_set(args.data, args.holdout, model.config.image_size[0])
    rows = []
    for setting in SETTINGS[args.settings]:
        steps, eta, time_ensemble, ensemble = setting
        for source in sources if steps > 1 else sources[:1]:  # one step hands no estimate on
            per_image, bins = score_setting(model, dataset, runtime, setting, source, args.seed)
            rows.append(
                {
                    "steps": steps,
                    "eta": eta,
                    "time_ensemble": time_ensemble,
                    "ensemble": ensemble,
                    "self_condition_on": source if steps > 1 else None,
                    "dice": float(np.mean(per_image)),
                    "ece": common.pooled_ece(bins),
                    "per_image_dice": per_image,
                    "per_image_calibration_bins": bins,
                }
            )
            print(
                f"DDIM {steps}, eta {eta:g}, time ensemble {time_ensemble}, ensemble {ensemble}, "
                f"self-condition on {rows[-1]['self_condition_on']}: Dice {rows[-1]['dice']:.4f}, "
                f"ECE {rows[-1]['ece']:.4f}",
                flush=True,
            )
    trajectory = trajectory_dice(model, dataset, runtime, 10, args.seed)
    print("per-step estimate along DDIM 10 (eta 0): " + ", ".join(f"t={t} {d:.4f}" for t, d in trajectory.items()))
    common.write_json(
        args.out,
        {
            "checkpoint": args.checkpoint,
            "config": model.config.to_dict(),
            "scored_on": f"{len(dataset)} held-out TRAIN images",
            "rows": rows,
            "trajectory_ddim10": trajectory,
            "machine": common.machine_info(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
