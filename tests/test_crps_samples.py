"""crps_samples: a mask head that reads fresh noise and is trained with the fair CRPS of two draws,
so each call gives a sample of the mask rather than its mean."""

import pytest
import torch

from src.models import DiffusionConfig, DiffusionSegmentation
from src.models.losses import fair_crps, soft_dice_loss
from tests.helpers import tiny_model


def record_calls(model) -> list:
    """Wraps model.network_output; returns the list it fills with (x_t, t, x0_estimate, output) per call."""
    calls, original = [], model.network_output

    def recording(x_t, t, conditioning, x0_estimate=None, generator=None):
        output = original(x_t, t, conditioning, x0_estimate, generator=generator)
        calls.append((x_t, t, x0_estimate, output))
        return output

    model.network_output = recording
    return calls


def test_fair_crps_is_least_for_samples_distributed_as_the_truth():
    """A pixel that is foreground in 30 % of cases alike: samples that are +1 30 % of the time score
    0.42, the mode (-1 always) 0.6 and the mean (-0.4 always, what MSE teaches) 0.84."""
    generator = torch.Generator().manual_seed(0)

    def draws():
        return torch.where(torch.rand(1, 1, 400, 400, generator=generator) < 0.3, 1.0, -1.0)

    truth = draws()
    scores = {
        "samples": fair_crps(draws(), draws(), truth, None),
        "mode": fair_crps(-torch.ones_like(truth), -torch.ones_like(truth), truth, None),
        "mean": fair_crps(torch.full_like(truth, -0.4), torch.full_like(truth, -0.4), truth, None),
    }
    for name, expected in (("samples", 0.42), ("mode", 0.6), ("mean", 0.84)):
        assert abs(float(scores[name]) - expected) < 0.01, (name, float(scores[name]))


def test_fair_crps_leaves_out_the_pixels_no_label_covers():
    truth = torch.tensor([1.0, -1.0]).view(1, 1, 1, 2)
    wrong_where_ignored = torch.tensor([1.0, 1.0]).view(1, 1, 1, 2)
    valid = torch.tensor([True, False]).view(1, 1, 1, 2)
    assert float(fair_crps(wrong_where_ignored, wrong_where_ignored, truth, valid)) == 0.0
    assert float(fair_crps(wrong_where_ignored, wrong_where_ignored, truth, None)) == 1.0


def test_the_head_reads_a_noise_channel_and_has_no_dropout():
    sampler, plain = tiny_model(crps_samples=True, dropout=0.2), tiny_model(dropout=0.2)
    assert sampler.noisy_input_conv.in_channels == (1 + 1 + 1) * 4**2  # x_t, estimate, noise; patch 4
    assert plain.noisy_input_conv.in_channels == (1 + 1) * 4**2
    head_dropouts = {m.p for m in sampler.mask_head.modules() if isinstance(m, torch.nn.Dropout)}
    assert head_dropouts == {0.0}
    assert {m.p for m in sampler.unet.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}  # the encoder keeps it


def test_each_call_is_a_fresh_sample_that_a_generator_repeats():
    model = tiny_model(crps_samples=True).eval()
    images = torch.rand(2, 3, 16, 16)
    conditioning = model.image_conditioning(images)
    x_t, t = torch.randn(2, 1, 16, 16), torch.tensor([999, 999])

    def call(seed=None):
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return model.network_output(x_t, t, conditioning, None, generator=generator)

    assert not torch.allclose(call(), call())  # in eval mode too: the noise, not dropout
    torch.testing.assert_close(call(seed=3), call(seed=3), rtol=0, atol=0)
    x0, _ = model.output_to_x0_eps(torch.full((1, 1, 2, 2), 3.0), torch.zeros(1, 1, 2, 2), t[:1], clip=False)
    assert float(x0.max()) == 3.0  # the raw output, no tanh (the score keeps it in range)


@pytest.mark.parametrize("self_condition", [False, True])
def test_training_scores_two_draws_on_the_same_inputs_with_the_fair_crps(self_condition):
    model = tiny_model(crps_samples=True)
    calls = record_calls(model)
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    losses = model.training_losses(images, masks, t=torch.tensor([5, 900]), self_condition=self_condition)
    assert set(losses) == {"crps", "loss"}
    assert len(calls) == (2 if self_condition else 1)  # the estimate pass, then one call for both draws
    x_t, t, estimate, output = calls[-1]
    for pair in (x_t, t) + ((estimate,) if self_condition else ()):
        torch.testing.assert_close(pair[:2], pair[2:], rtol=0, atol=0)
    first, second = output.chunk(2)
    assert not torch.allclose(first, second)  # two draws of the noise
    torch.testing.assert_close(losses["loss"], fair_crps(first, second, model.masks_to_x0(masks), None))
    losses["loss"].backward()
    noise_weights = model.noisy_input_conv.weight.grad[:, -(4**2) :]  # the noise channel's patch fold
    assert noise_weights.abs().sum() > 0


def test_crps_dice_weight_adds_soft_dice_of_the_two_draws_mean():
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    model = tiny_model(crps_samples=True, crps_dice_weight=0.5)
    calls = record_calls(model)
    losses = model.training_losses(images, masks, t=torch.tensor([5, 900]), self_condition=False)
    first, second = calls[-1][-1].chunk(2)
    mean = ((first + second) / 4 + 0.5).clamp(0, 1)  # the draws' mean as a probability
    torch.testing.assert_close(losses["dice"], soft_dice_loss(mean, masks, None))
    torch.testing.assert_close(losses["loss"], losses["crps"] + 0.5 * losses["dice"])
    with pytest.raises(ValueError, match="must be >= 0 and needs crps_samples or sampler_head, got -1"):
        DiffusionConfig(crps_samples=True, crps_dice_weight=-1)
    with pytest.raises(ValueError, match="needs crps_samples or sampler_head, got 0.5"):
        DiffusionConfig(crps_dice_weight=0.5)


def test_sampling_is_seeded_and_its_ensemble_members_differ():
    model = tiny_model(crps_samples=True).eval()
    images = torch.rand(2, 3, 16, 16)
    first = model.segment(images, steps=3, ensemble=3, seed=4)
    torch.testing.assert_close(first.probabilities, model.segment(images, steps=3, ensemble=3, seed=4).probabilities)
    assert not torch.allclose(first.probabilities, model.segment(images, steps=3, ensemble=3, seed=5).probabilities)
    assert float(first.ensemble_std.max()) > 0


def test_crps_samples_needs_a_mask_head_and_the_x0_target():
    with pytest.raises(ValueError, match="crps_samples needs a mask head and the x0 target.*mask_head_blocks 0"):
        DiffusionConfig(crps_samples=True, mask_head_blocks=0)
    with pytest.raises(ValueError, match="prediction_type 'eps'"):
        DiffusionSegmentation(crps_samples=True, prediction_type="eps")
