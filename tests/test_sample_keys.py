"""Loaders with worker processes: each sample augmented under its own seed, whatever the worker."""

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from utils.data_utils import SegmentationDataset, load_dataset
from utils.sample_keys import SampleKey, SampleKeySampler, seeded


def epoch_batches(loader, epoch: int) -> list:
    loader.sampler.set_epoch(epoch)
    return [(images.clone(), masks.clone()) for images, masks in loader]


def same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for pa, pb in zip(a, b) for x, y in zip(pa, pb))


def augmented_loader(tiny_dataset, num_workers: int):
    return load_dataset(
        tiny_dataset / "images",
        tiny_dataset / "masks",
        batch_size=2,
        image_size=(24, 32),
        augmentation_mode="heavy",  # flips, crops, rotations, colour: every kind of draw
        num_workers=num_workers,
        seed=5,
    )


def test_the_batches_do_not_depend_on_the_worker_count(tiny_dataset):
    one, two = augmented_loader(tiny_dataset, 1), augmented_loader(tiny_dataset, 2)
    assert isinstance(one.sampler, SampleKeySampler)
    for epoch in (0, 1):
        assert same_batches(epoch_batches(one, epoch), epoch_batches(two, epoch))
    assert not same_batches(epoch_batches(one, 0), epoch_batches(one, 1))  # a new order and new augmentations


def test_a_loader_looped_without_set_epoch_draws_a_new_epoch_each_pass(tiny_dataset):
    # load_dataset's users (the SPEC's "Advanced Configuration") loop over the loader and call nothing
    looped, stepped = augmented_loader(tiny_dataset, 2), augmented_loader(tiny_dataset, 2)
    passes = [[(i.clone(), m.clone()) for i, m in looped] for _ in range(2)]
    assert not same_batches(passes[0], passes[1])
    assert same_batches(passes[0], epoch_batches(stepped, 0))
    assert same_batches(passes[1], epoch_batches(stepped, 1))


def test_a_fresh_loader_set_to_an_epoch_gives_what_a_long_lived_one_gives(tiny_dataset):
    # what a resumed run relies on: its workers are new, the uninterrupted run's have served earlier epochs
    long_lived, fresh = augmented_loader(tiny_dataset, 2), augmented_loader(tiny_dataset, 2)
    for epoch in (0, 1):
        epoch_batches(long_lived, epoch)
    assert same_batches(epoch_batches(long_lived, 2), epoch_batches(fresh, 2))


def test_without_workers_the_loader_draws_from_the_process_stream_as_before(tiny_dataset):
    # a default run (no workers) keeps the shuffle and augmentation stream it always had
    loader = augmented_loader(tiny_dataset, 0)
    assert not isinstance(loader.sampler, SampleKeySampler)
    plain = DataLoader(loader.dataset, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(9)
    ours = [tuple(t.clone() for t in batch) for batch in loader]
    torch.manual_seed(9)
    assert same_batches(ours, list(plain))


def test_a_sample_key_augments_under_its_own_seed_and_leaves_the_callers_stream(tiny_dataset):
    dataset = SegmentationDataset(tiny_dataset / "images", tiny_dataset / "masks", image_size=20, augmentations="heavy")
    torch.manual_seed(0)
    first = dataset[SampleKey(1, 11)]
    after = torch.rand(4)
    torch.manual_seed(0)
    again = dataset[SampleKey(1, 11)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    torch.testing.assert_close(torch.rand(4), after, rtol=0, atol=0)  # the key's draws came from elsewhere
    other = dataset[SampleKey(1, 12)]
    assert not torch.equal(first[0], other[0])
    with seeded(11):
        plain = dataset[1]  # a plain index draws from the caller's stream: here the key's seed
    assert all(torch.equal(a, b) for a, b in zip(first, plain))


def test_keys_of_distributed_ranks_split_the_epoch_and_draw_their_own_seeds():
    keys = []
    for rank in (0, 1):
        sampler = SampleKeySampler(10, True, 3, DistributedSampler(range(10), num_replicas=2, rank=rank, seed=3))
        sampler.set_epoch(4)
        assert sampler.distributed.epoch == 4 and len(sampler) == 5
        keys.append(list(sampler))
        assert sampler.distributed.epoch == 5  # the pass moved both on to the next epoch
    assert sorted(k.index for k in keys[0] + keys[1]) == list(range(10))
    assert {k.seed for k in keys[0]}.isdisjoint(k.seed for k in keys[1])


@pytest.mark.parametrize("shuffle", [True, False])
def test_the_order_and_seeds_are_a_function_of_the_epoch(shuffle):
    sampler = SampleKeySampler(8, shuffle, 1)
    epochs = {}
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        epochs.setdefault(epoch, []).append(list(sampler))
    assert epochs[0][0] == epochs[0][1] and epochs[0][0] != epochs[1][0]
    indices = [k.index for k in epochs[1][0]]
    assert sorted(indices) == list(range(8)) and (indices != list(range(8))) is shuffle


def test_skip_next_leaves_out_the_first_keys_of_one_pass_only():
    sampler = SampleKeySampler(8, True, 1)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2)  # as the trainer does before each epoch
    sampler.skip_next(3)
    assert list(sampler) == whole[3:]
    sampler.set_epoch(2)
    assert list(sampler) == whole
