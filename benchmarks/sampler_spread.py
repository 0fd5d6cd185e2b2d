"""How far a sampler head's draws lie from the mean head's x0 (DiffusionConfig.sampler_head), on
the ablations' 100 images held out of the TRAIN split: the mean |draw - x0| over every step and
pixel, the share of pixels whose draw lies on the other side of 0 (the other class), and the Dice
of the two time-ensembles, the draws' (what segment() gives) and the mean head's own.

    python -m benchmarks.sampler_spread \
        --checkpoint benchmarks/results/checkpoints/ablation_128_74_seed45/last.pth \
        --out benchmarks/results/sampler_spread_round24_seed45.json
"""

import argparse
import json
import sys

import numpy as np
import torch

from benchmarks import common
from benchmarks.sampler_ablation import batches, held_out_set
from src.checkpoint import load_model


@torch.no_grad()
def draw_spread(model, dataset, steps: int = 10, seed: int = 42) -> dict:
    """The module doc's figures for `model` (with a sampler head) on `dataset`, DDIM `steps`, eta 1."""
    if model.sampler_head is None:
        raise ValueError("the model has no sampler head (it was not trained with --sampler-head)")
    pairs, draw = [], model.sampler_draw

    def recording(x_t, t, conditioning, estimate, mean_x0, generator=None):
        sample = draw(x_t, t, conditioning, estimate, mean_x0, generator)
        pairs.append((mean_x0.float(), sample.clamp(-1, 1)))  # as reverse_process reports it
        return sample

    model.sampler_draw = recording
    distance, other_side, dice = [], [], {"draws": [], "mean head": []}
    try:
        for start, indices, images in batches(dataset):
            pairs.clear()
            for _ in model.reverse_process(images, steps, eta=1.0, seed=seed + start):
                pass
            means, draws = (torch.stack(side) for side in zip(*pairs))
            distance.append(float((draws - means).abs().mean()))
            other_side.append(float(((draws > 0) != (means > 0)).float().mean()))
            for name, estimates in (("draws", draws), ("mean head", means)):
                probabilities = model.x0_to_probabilities(estimates.mean(dim=0))
                dice[name].extend(
                    common.score_probabilities(probabilities[k], dataset.load_original_mask(i))["dice"]
                    for k, i in enumerate(indices)
                )
    finally:
        del model.sampler_draw  # the bound method again
    return {
        "steps": steps,
        "mean_abs_draw_minus_x0": float(np.mean(distance)),
        "other_side_share": float(np.mean(other_side)),
        "dice_draws": float(np.mean(dice["draws"])),
        "dice_mean_head": float(np.mean(dice["mean head"])),
        "images": len(dataset),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--data", default=str(common.DEFAULT_DATA))
    p.add_argument("--holdout", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.checkpoint, use_ema=True).eval()
    dataset = held_out_set(args.data, args.holdout, model.config.image_size[0])
    result = {"checkpoint": args.checkpoint, **draw_spread(model, dataset, args.steps, args.seed)}
    result["machine"] = common.machine_info()
    print(json.dumps(result, indent=2))
    common.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
