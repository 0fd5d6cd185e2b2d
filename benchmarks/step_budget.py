"""Optimizer steps that ours, the plain UNet and the peer make in N minutes on one idle core of this CPU.

The quality runs of benchmarks/kvasir.py then train each model for its own step count
(`--max-steps`): the same wall-clock budget as if each had the core to itself, but immune to
whatever else the shared machine runs meanwhile (a wall-clock budget on a busy 2-core machine
measures the load as much as the model). Step times: batch 8, bf16 where the CPU has it,
1 torch thread, median over alternated rounds of the fastest of 4 timed steps.

    benchmarks/.peer-venv/bin/python -m benchmarks.step_budget --minutes 20 40
    benchmarks/.peer-venv/bin/python -m benchmarks.step_budget --models peer --minutes 20 40 60
    python -m benchmarks.step_budget --models ours --variants "base 48,2 blocks per level" --minutes 20

`--variants` also times ours with each named kvasir.ABLATIONS override (a variant that changes the
network's cost trains for its own step count in the ablations: the same minutes, not the same steps).
"""

import argparse
import math
import sys

import numpy as np
import torch

from benchmarks import common, kvasir
from src.device import select_runtime
from src.training.config import TrainConfig
from src.training.optim import build_optimizer


def anchor_step_seconds(args, runtime) -> float:
    module = runtime.prepare_model(kvasir.plain_unet())
    optimizer = build_optimizer(module.parameters(), args.lr, TrainConfig.weight_decay, runtime)
    step = kvasir.training_step(module, kvasir.unet_loss, optimizer, runtime)
    return kvasir.measure_step_seconds(step, kvasir.random_batch(args, runtime))


def peer_step_seconds(args, runtime) -> float:
    """MedSegDiff at the size kvasir.run_peer trains it (the Unet dim closest to ours in parameters)."""
    from src.models import DiffusionSegmentation

    dim = kvasir.peer_dim_for(kvasir.parameter_count(DiffusionSegmentation(kvasir.model_config(args))), args.image_size)
    torch.manual_seed(args.seed)
    module = runtime.prepare_model(kvasir.peer_model(args.image_size, dim))
    optimizer = build_optimizer(module.parameters(), args.lr, TrainConfig.weight_decay, runtime)
    step = kvasir.training_step(module, kvasir.peer_loss, optimizer, runtime)
    return kvasir.measure_step_seconds(step, kvasir.random_batch(args, runtime))


PROBES = {
    "ours": lambda args, runtime: kvasir.estimate_ours_step(args, kvasir.model_config(args), runtime),
    "unet": anchor_step_seconds,
    "peer": peer_step_seconds,
}


def variant_probe(name: str):
    """Ours with kvasir.ABLATIONS[name]'s overrides."""
    overrides = kvasir.ABLATIONS[name]
    return lambda args, runtime: kvasir.estimate_ours_step(args, kvasir.model_config(args, **overrides), runtime)


def default_out(models, variants=()):
    """results/step_budget.json for ours + the UNet (the budgets the quality runs use), else
    step_budget_<models>.json (step_budget_variants.json with --variants), so that timing other
    models never overwrites those budgets."""
    if variants:
        return common.RESULTS / "step_budget_variants.json"
    suffix = "" if list(models) == ["ours", "unet"] else "_" + "_".join(models)
    return common.RESULTS / f"step_budget{suffix}.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, nargs="+", default=[20.0, 40.0])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--models", nargs="+", choices=tuple(PROBES), default=["ours", "unet"])
    kvasir.add_variants_argument(p, "also time ours with these kvasir.ABLATIONS overrides, comma-separated names", [])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None, help="default results/step_budget.json, or step_budget_<models>.json")
    args = p.parse_args(argv)
    args.out = args.out or str(default_out(args.models, args.variants))
    args.smoke = False
    torch.set_num_threads(1)
    runtime = select_runtime()
    probes = {name: PROBES[name] for name in args.models} | {name: variant_probe(name) for name in args.variants}
    times = {name: [] for name in probes}
    for round_index in range(args.rounds):  # alternated, so that a burst of load hits every model alike
        for name, probe in probes.items():
            times[name].append(probe(args, runtime))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {t[-1]:.3f} s/step" for n, t in times.items()), flush=True)
    seconds = {name: float(np.median(values)) for name, values in times.items()}
    budgets = {
        f"{minutes:g}": {name: math.floor(minutes * 60 / value) for name, value in seconds.items()}
        for minutes in args.minutes
    }
    for minutes, steps in budgets.items():
        print(f"{minutes} min: " + ", ".join(f"{name} {count} steps" for name, count in steps.items()))
    common.write_json(
        args.out,
        {
            "seconds_per_step": seconds,
            "rounds": times,
            "steps_for_minutes": budgets,
            "precision": runtime.describe(),
            "config": kvasir.model_config(args).to_dict(),
            "machine": common.machine_info(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
