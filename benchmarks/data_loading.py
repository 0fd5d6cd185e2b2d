"""Data loading time on Kvasir-SEG train (880 images): the first epoch against later ones.

load_dataset decodes, resizes and caches every sample before the first step (reported as the
first epoch together with its pass over the data); later epochs cost only augmentation. The
uncached loader (cache=False) decodes every JPEG in every epoch, for comparison.

    python -m benchmarks.data_loading                  # about 2 minutes on 2 cores
    python -m benchmarks.data_loading --smoke          # seconds: 32 px, two batches per epoch
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks import common
from utils.data_utils import load_dataset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(common.DEFAULT_DATA), help="Kvasir-SEG folder with images/, masks/, splits/")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[128, 256])
    p.add_argument("--epochs", type=int, default=3, help="epochs timed per loader (the first includes the preload)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--augmentation-mode", default="medium")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-batches", type=int, default=None, help="stop each epoch after this many batches")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.epochs, args.max_batches = [32], 2, 2
    args.out = Path(args.out or common.RESULTS / f"data_loading{'_smoke' if args.smoke else ''}.json")
    return args


def time_epochs(args, size: int, cache: bool) -> list:
    """Seconds of each epoch; the first also holds load_dataset (pairing, decoding, caching)."""
    start = time.perf_counter()
    train_loader, _ = load_dataset(
        data_dir=args.data,
        image_size=size,
        batch_size=args.batch_size,
        augmentation_mode=args.augmentation_mode,
        cache=cache,
        seed=0,
    )
    seconds = []
    for _ in range(args.epochs):
        for index, _batch in enumerate(train_loader):
            if args.max_batches is not None and index + 1 >= args.max_batches:
                break
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (Path(args.data) / "splits" / "train.txt").is_file():
        print(f"{args.data}: not a Kvasir-SEG folder with splits/train.txt", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        for cache in (True,) if args.smoke else (True, False):
            seconds = time_epochs(args, size, cache)
            rows.append({"size": size, "cache": cache, "epoch_seconds": seconds})
            later = ", ".join(f"{s:.1f}" for s in seconds[1:])
            print(
                f"{size} px, cache {'on' if cache else 'off'}: first epoch {seconds[0]:.1f} s, later epochs {later} s",
                flush=True,
            )
    common.write_json(
        args.out,
        {
            "images": "Kvasir-SEG splits/train.txt",
            "batch_size": args.batch_size,
            "augmentation_mode": args.augmentation_mode,
            "rows": rows,
            "machine": common.machine_info(),
            "smoke": args.smoke,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
