"""Flip test-time augmentation across ensemble members (benchmarks/flips.py)."""

import pytest
import torch

from benchmarks.flips import MEMBER_FLIPS, flip_averaged, flip_members


def test_each_member_is_flipped_by_its_entry_and_flipping_twice_restores_the_rows():
    images = torch.arange(2 * 16, dtype=torch.float32).reshape(1, 1, 4, 8).repeat(2, 1, 1, 1)
    rows = images.repeat_interleave(5, dim=0)  # 2 images x 5 members, image-major
    flipped = flip_members(rows, 5)
    for image in range(2):
        for member in range(5):
            dims = MEMBER_FLIPS[member % 4]
            expected = images[image].flip(dims) if dims else images[image]
            torch.testing.assert_close(flipped[image * 5 + member], expected)
    assert torch.equal(flipped[0], rows[0]) and not torch.equal(flipped[1], rows[1])
    assert torch.equal(flipped[4], rows[4])  # member 4 wraps around to "no flip"
    torch.testing.assert_close(flip_members(flipped, 5), rows, rtol=0, atol=0)
    with pytest.raises(ValueError, match="whole number of ensembles"):
        flip_members(rows[:7], 5)


def test_flip_averaged_undoes_each_flip_before_averaging():
    images = torch.rand(2, 3, 6, 6)
    # a position-dependent "model": the flips only cancel if each output is flipped back
    ramp = torch.linspace(0, 1, 6).view(1, 1, 1, 6)
    averaged = flip_averaged(lambda x: x * ramp, images)
    expected = (images * ramp + images * ramp.flip(-1) + images * ramp + images * ramp.flip(-1)) / 4
    torch.testing.assert_close(averaged, expected)
    torch.testing.assert_close(flip_averaged(lambda x: x * 2, images), images * 2)  # equivariant model: unchanged
