"""Samples that carry their own augmentation seed, for loaders with worker processes.

Without workers the trainer seeds the process once per epoch and every augmentation draws from
that stream, so a resumed run repeats them. Worker processes each keep their own stream, seeded
once when they start, so which draws a sample gets depends on which worker loaded it and on how
long that worker has lived: a resumed run (fresh workers) augments differently, and so does a run
with another number of workers. Here the sampler hands each sample of an epoch a SampleKey, its
index and a seed that depend only on (seed, epoch, rank, position in the epoch), and the dataset
augments under that seed: any worker, any worker count, a resumed run or not, the same batches.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch.utils.data import DistributedSampler, Sampler


class SampleKey(NamedTuple):
    """What a SampleKeySampler yields: a dataset index and the seed of its augmentation."""

    index: int
    seed: int


def split_key(key) -> tuple:
    """(index, augmentation seed or None) of a plain index or a SampleKey."""
    if isinstance(key, SampleKey):
        return key.index, key.seed
    return key, None


@contextmanager
def seeded(seed: int | None):
    """Torch's CPU random numbers from `seed` inside, the caller's stream as it was after (None:
    nothing changes, draws continue the caller's stream)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class SampleKeySampler(Sampler):
    """One epoch's indices as SampleKeys. The order is a seeded shuffle of (seed, epoch) (or, with
    `distributed`, this rank's share from the DistributedSampler it wraps, itself a function of
    seed and epoch), the keys' seeds a function of (seed, epoch, rank): nothing depends on what an
    earlier epoch drew, so `set_epoch(k)` alone puts a fresh loader where a long-lived one is. Each
    pass moves on to the next epoch by itself, as a plain shuffling loader draws a new order."""

    def __init__(self, num_samples: int, shuffle: bool, seed: int, distributed: DistributedSampler | None = None):
        self.num_samples, self.shuffle, self.seed, self.distributed = num_samples, shuffle, seed, distributed
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.distributed is not None:
            self.distributed.set_epoch(epoch)

    def skip_next(self, count: int) -> None:
        """The next pass over the epoch leaves out its first `count` keys: a run resumed mid-epoch
        starts past the batches it trained before the cut without loading them again."""
        self._skip = count

    def __len__(self) -> int:
        return len(self.distributed) if self.distributed is not None else self.num_samples

    def __iter__(self) -> Iterator[SampleKey]:
        rank = self.distributed.rank if self.distributed is not None else 0
        # the mix of src/training/rng.epoch_seed (utils imports nothing from src)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 9_973 + rank * 101)
        if self.distributed is not None:
            order = list(self.distributed)
        elif self.shuffle:
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        seeds = torch.randint(2**62, (len(order),), generator=generator).tolist()
        skip, self._skip = self._skip, 0
        # a loop that never calls set_epoch (load_dataset's own users) still gets a new epoch each pass
        self.set_epoch(self.epoch + 1)
        return iter([SampleKey(index, seed) for index, seed in zip(order, seeds)][skip:])
