"""Speed on a CUDA GPU: training step time per precision/layout, and DDIM sampling time.

The default model, batch 8 (or --batch-sizes), random data already on the GPU (so no data loading
is timed), train.py's optimizer (build_optimizer with TrainConfig's lr and weight decay); each
configuration warms up for 5 steps, then 20 steps are timed between synchronisations. Prints one
line per configuration (BENCHMARKS.md quotes them).

    python -m benchmarks.speed_cuda
    python -m benchmarks.speed_cuda --sizes 128 --batch-sizes 8 32 64 --no-sampling
"""

import argparse
import sys
import time

import torch

from src.device import select_runtime
from src.models import DiffusionConfig, DiffusionSegmentation
from src.training.config import TrainConfig
from src.training.optim import build_optimizer

CONFIGS = (("fp32", False), ("bf16", False), ("bf16", True), ("fp16", True))  # (precision, channels_last)


def time_training(size: int, precision: str, channels_last: bool, batch: int = 8, steps: int = 20) -> None:
    runtime = select_runtime("cuda", precision, channels_last)
    torch.manual_seed(0)
    model = runtime.prepare_model(DiffusionSegmentation(DiffusionConfig(image_size=(size, size))))
    optimizer = build_optimizer(model.parameters(), TrainConfig.lr, TrainConfig.weight_decay, runtime)  # as train.py
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.needs_grad_scaler)
    images = torch.rand(batch, 3, size, size, device="cuda")
    masks = (torch.rand(batch, 1, size, size, device="cuda") > 0.5).float()

    def step():
        with runtime.autocast():
            loss = model(images, masks)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    print(
        f"train {size}px b{batch} {runtime.describe()}: {seconds * 1000:.1f} ms/step, {batch / seconds:.0f} img/s, "
        f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB",
        flush=True,
    )


@torch.no_grad()
def time_sampling(size: int = 256, repeats: int = 3) -> None:
    runtime = select_runtime("cuda")
    model = runtime.prepare_model(DiffusionSegmentation(DiffusionConfig(image_size=(size, size)))).eval()
    for batch in (1, 8):
        images = torch.rand(batch, 3, size, size, device="cuda")
        for steps in (10, 50):
            with runtime.autocast():
                model.segment(images, steps=steps, seed=0)
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(repeats):
                    model.segment(images, steps=steps, seed=0)
                torch.cuda.synchronize()
            per_image = (time.perf_counter() - start) / repeats / batch
            print(
                f"sample {size}px batch {batch} {steps} DDIM steps {runtime.describe()}: "
                f"{per_image * 1000:.1f} ms/image",
                flush=True,
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    p.add_argument("--no-sampling", action="store_true", help="time training only")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("speed_cuda.py needs a CUDA GPU (use benchmarks/speed.py on the CPU)", file=sys.stderr)
        return 2
    print(torch.__version__, torch.cuda.get_device_name())
    for size in args.sizes:
        for batch in args.batch_sizes:
            for precision, channels_last in CONFIGS:
                time_training(size, precision, channels_last, batch)
    if not args.no_sampling:
        time_sampling()
    return 0


if __name__ == "__main__":
    sys.exit(main())
