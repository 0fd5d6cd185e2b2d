"""Golden numbers: a fixed-seed tiny model's samples, segmentation and training loss, pinned, so a
refactor of the diffusion process cannot change outputs silently. If a change is meant to alter
them, say so in the commit and update the numbers from the new code's run."""

import pytest
import torch

from src.models import DiffusionConfig, DiffusionSegmentation

TINY = dict(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,), num_heads=2, image_size=(16, 16))
# The numbers pin the process's math, which a network that hears x_t and t exercises fully: the
# model keeps the init they were made with, from before zero-initialised inputs became the default.
TINY.update(zero_init_noisy_input=False, zero_init_time_film=False)
# ... and the whole UNet at every step, as before the ninth round; the mask head (the default
# since) has its own numbers below.
TINY.update(mask_head_blocks=0)
# All of them were made at input scale 0.05, the default before the tenth round, and without
# dropout, the default before the twelfth (MC dropout for ensembles has its own numbers below).
TINY.update(input_scale=0.05, dropout=0.0)
# The numbers were made when each sampling step was handed the last estimate; the mean of the
# estimates so far (the default since the seventh round) has its own numbers below.
LAST = dict(self_condition_on="last")
CLOSE = dict(rel=1e-4, abs=1e-4)  # float rounding differs a little between CPU kernels, a real change does not


def tiny(**overrides) -> DiffusionSegmentation:
    torch.manual_seed(0)
    return DiffusionSegmentation(DiffusionConfig(**{**TINY, **overrides})).eval()


@pytest.fixture
def images():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_ddim_sample(images):
    x = tiny().sample(images, steps=5, seed=3, **LAST)
    assert x.sum().item() == pytest.approx(-6.465662, **CLOSE)
    assert x[0, 0, 3, :4].tolist() == pytest.approx([0.244547, -0.096526, -0.113578, -0.120926], **CLOSE)
    assert tiny().sample(images, steps=7, eta=1.0, seed=5, **LAST).sum().item() == pytest.approx(-7.384354, **CLOSE)


def test_sampling_hands_each_step_the_mean_of_the_estimates_by_default(images):
    x = tiny().sample(images, steps=5, seed=3)
    assert x.sum().item() == pytest.approx(-6.684147, **CLOSE)
    assert x[0, 0, 3, :4].tolist() == pytest.approx([0.256289, -0.099122, -0.115831, -0.116348], **CLOSE)
    out = tiny().segment(images, steps=4, ensemble=2, seed=4)
    assert out.probabilities.sum().item() == pytest.approx(252.193390, **CLOSE)
    assert out.ensemble_std.sum().item() == pytest.approx(11.754495, **CLOSE)
    assert out.mask.sum().item() == 245
    multi = tiny(num_classes=3).segment(images, steps=3, ensemble=2, seed=8)
    assert multi.probabilities[:, 1].sum().item() == pytest.approx(168.211487, **CLOSE)


def test_ddpm_sample(images):
    assert tiny(timesteps=20).sample(images, sampler="ddpm", seed=6, **LAST).sum().item() == pytest.approx(
        -7.193667, **CLOSE
    )


def test_segment_binary_and_multiclass(images):
    out = tiny().segment(images, steps=4, ensemble=2, seed=4, **LAST)
    assert out.probabilities.sum().item() == pytest.approx(252.262909, **CLOSE)
    assert out.ensemble_std.sum().item() == pytest.approx(11.661495, **CLOSE)
    assert out.uncertainty.sum().item() == pytest.approx(492.889893, **CLOSE)  # predictive entropy (since issue 11)
    assert out.mask.sum().item() == 249
    assert out.probabilities[1, 0, 5, :3].tolist() == pytest.approx([0.633380, 0.575614, 0.543507], **CLOSE)
    multi = tiny(num_classes=3).segment(images, steps=3, ensemble=2, seed=8, **LAST)
    assert multi.probabilities[:, 1].sum().item() == pytest.approx(168.144714, **CLOSE)
    assert multi.ensemble_std.sum().item() == pytest.approx(9.073611, **CLOSE)
    assert multi.uncertainty.sum().item() == pytest.approx(505.221924, **CLOSE)
    assert multi.mask.sum().item() == 483


def test_training_losses(images):
    model = tiny().train()
    masks = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    torch.manual_seed(7)  # the noise and the self-conditioning coin
    losses = model.training_losses(images, masks, t=torch.tensor([10, 900]))
    expected = {"bce": 0.720907, "dice": 0.506158, "loss": 2.278052, "mse": 1.050987}
    assert {name: value.item() for name, value in losses.items()} == pytest.approx(expected, **CLOSE)


def test_mask_head_sample_segment_and_loss(images):
    """The default since the ninth round: the UNet encodes the image once, a head runs per step."""
    x = tiny(mask_head_blocks=2).sample(images, steps=5, seed=3)
    assert x.sum().item() == pytest.approx(-21.964325, **CLOSE)
    assert x[0, 0, 3, :4].tolist() == pytest.approx([0.094694, 0.078624, 0.004513, -0.041650], **CLOSE)
    out = tiny(mask_head_blocks=2).segment(images, steps=4, ensemble=2, seed=4)
    assert out.probabilities.sum().item() == pytest.approx(245.676880, **CLOSE)
    assert out.ensemble_std.sum().item() == pytest.approx(19.355589, **CLOSE)
    assert out.mask.sum().item() == 216
    model = tiny(mask_head_blocks=2).train()
    masks = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    torch.manual_seed(7)
    losses = model.training_losses(images, masks, t=torch.tensor([10, 900]))
    expected = {"bce": 0.726696, "dice": 0.513094, "loss": 2.296553, "mse": 1.056763}
    assert {name: value.item() for name, value in losses.items()} == pytest.approx(expected, **CLOSE)


def test_mc_dropout_ensemble(images):
    """Dropout 0.1 (the default since the twelfth round) and MC dropout (asked for since the
    thirteenth): each ensemble sample its own dropout draw of the image features (the draw's seed
    comes from the sampling generator, before x_T)."""
    model = tiny(mask_head_blocks=2, dropout=0.1)
    with torch.no_grad():  # a new block's last convolution starts at zero, which would hide its dropout
        for index, parameter in enumerate(model.parameters()):
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(index)))
    out = model.segment(images, steps=4, ensemble=2, seed=4, mc_dropout=True)
    assert out.probabilities.sum().item() == pytest.approx(250.676682, **CLOSE)
    assert out.ensemble_std.sum().item() == pytest.approx(19.299747, **CLOSE)
