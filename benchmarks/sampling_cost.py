"""Seconds per image of ours' sampling settings next to the plain UNet's one forward pass.

128 px, batch 8, bf16 where the CPU has it, 1 torch thread (as the quality runs score), median
over alternated rounds; the weights do not matter for the time, so both models are fresh.

    benchmarks/.peer-venv/bin/python -m benchmarks.sampling_cost
"""

import argparse
import sys
import time

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(common.RESULTS / "sampling_cost.json"))
    args = p.parse_args(argv)
    args.smoke = False
    torch.set_num_threads(1)
    runtime = select_runtime()
    ours = runtime.prepare_model(DiffusionSegmentation(kvasir.model_config(args))).eval()
    unet = runtime.prepare_model(kvasir.plain_unet()).eval()
    images = runtime.to_device(torch.rand(args.batch_size, 3, args.image_size, args.image_size))

    def ours_run(steps, ensemble):
        return lambda: ours.segment(images, steps=steps, ensemble=ensemble, seed=0)

    def unet_run():
        return torch.sigmoid(unet(images * 2 - 1).float())

    runs = {f"ours DDIM {s}, ensemble {e}": ours_run(s, e) for s, e in SETTINGS}
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
