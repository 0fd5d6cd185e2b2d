"""sampler_head: a second mask head beside today's that draws each step's x0 around the first
head's, trained with the fair CRPS on what that head saw and made, without gradient to it."""

import pytest
import torch

from src.models import DiffusionConfig
from src.models.losses import fair_crps, soft_dice_loss
from tests.helpers import tiny_model

IMAGES = torch.rand(2, 3, 16, 16)
MASKS = (torch.rand(2, 1, 16, 16) > 0.5).float()


def with_trained_sampler(model):
    """The sampler head's zero-initialised output layer given weights, as training would."""
    torch.manual_seed(1)
    torch.nn.init.normal_(model.sampler_head.output[-1].weight, std=0.5)
    return model


def test_the_mean_head_and_encoder_start_as_a_model_without_a_sampler():
    plain, model = tiny_model(), tiny_model(sampler_head=True)
    shared = plain.state_dict()
    assert all(torch.equal(model.state_dict()[name], value) for name, value in shared.items())
    assert {name.split(".")[0] for name in model.state_dict()} - {name.split(".")[0] for name in shared} == {
        "sampler_head"
    }
    assert model.sampler_head.input_conv.in_channels == (1 + 1 + 1 + 1) * 4**2  # x_t, estimate, noise, mean x0


def test_a_new_sampler_draws_the_mean_heads_x0_and_a_trained_one_fresh_samples():
    model = tiny_model(sampler_head=True).eval()
    conditioning = model.image_conditioning(IMAGES)
    x_t, t, mean_x0 = torch.randn(2, 1, 16, 16), torch.tensor([999, 10]), torch.rand(2, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(model.sampler_draw(x_t, t, conditioning, None, mean_x0), mean_x0, rtol=0, atol=0)
    with_trained_sampler(model)

    def draw(seed=None):
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return model.sampler_draw(x_t, t, conditioning, None, mean_x0, generator)

    assert not torch.allclose(draw(), draw())  # in eval mode: the noise channel
    torch.testing.assert_close(draw(seed=3), draw(seed=3), rtol=0, atol=0)


def test_training_adds_the_crps_of_two_draws_on_what_the_mean_head_saw_without_gradient_to_it():
    plain, model = tiny_model(), with_trained_sampler(tiny_model(sampler_head=True, crps_dice_weight=0.5))
    draws = []
    original = model.sampler_draw

    def recording(x_t, t, conditioning, x0_estimate, mean_x0, generator=None):
        sample = original(x_t, t, conditioning, x0_estimate, mean_x0, generator)
        draws.append((x_t, t, x0_estimate, mean_x0, conditioning, sample))
        return sample

    model.sampler_draw = recording
    t = torch.tensor([5, 900])
    torch.manual_seed(7)
    expected = plain.training_losses(IMAGES, MASKS, t=t, self_condition=True)
    torch.manual_seed(7)
    losses = model.training_losses(IMAGES, MASKS, t=t, self_condition=True)
    for name in ("mse", "dice", "bce"):  # the mean head's terms, as a model without a sampler has them
        torch.testing.assert_close(losses[name], expected[name])
    (x_t, t_pair, estimate, mean_x0, conditioning, sample) = draws[-1]
    for pair in (x_t, t_pair, estimate, mean_x0):
        torch.testing.assert_close(pair[:2], pair[2:], rtol=0, atol=0)
    assert not mean_x0.requires_grad and not conditioning.requires_grad
    first, second = sample.chunk(2)
    torch.testing.assert_close(losses["crps"], fair_crps(first, second, model.masks_to_x0(MASKS), None))
    mean = ((first + second) / 4 + 0.5).clamp(0, 1)
    torch.testing.assert_close(losses["sampler_dice"], soft_dice_loss(mean, MASKS, None))
    torch.testing.assert_close(losses["loss"], expected["loss"] + losses["crps"] + 0.5 * losses["sampler_dice"])

    (losses["crps"] + losses["sampler_dice"]).backward()  # the sampler's loss trains the sampler only
    assert all(p.grad is None for name, p in model.named_parameters() if not name.startswith("sampler_head"))
    assert model.sampler_head.input_conv.weight.grad.abs().sum() > 0


def test_sampling_follows_the_mean_head_and_reports_the_sampler_draws():
    plain = tiny_model().eval()
    model = with_trained_sampler(tiny_model(sampler_head=True)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("sampler_head")})
    steps = list(model.reverse_process(IMAGES, steps=4, eta=1.0, seed=2, ensemble=2))
    expected = list(plain.reverse_process(IMAGES, steps=4, eta=1.0, seed=2, ensemble=2))
    for step, reference in zip(steps, expected, strict=True):
        torch.testing.assert_close(step.x_t, reference.x_t, rtol=0, atol=0)  # the same trajectory
        assert not torch.allclose(step.x0, reference.x0) and step.x0.abs().max() <= 1  # the draws, clamped
    first = model.segment(IMAGES, steps=3, ensemble=3, seed=4)
    torch.testing.assert_close(first.probabilities, model.segment(IMAGES, steps=3, ensemble=3, seed=4).probabilities)
    assert float(first.ensemble_std.max()) > 0


def test_sampler_head_needs_a_mask_head_and_the_x0_target_and_replaces_crps_samples():
    with pytest.raises(ValueError, match="sampler_head needs a mask head.*mask_head_blocks 0"):
        DiffusionConfig(sampler_head=True, mask_head_blocks=0)
    with pytest.raises(ValueError, match="prediction_type 'v'"):
        DiffusionConfig(sampler_head=True, prediction_type="v")
    with pytest.raises(ValueError, match="crps_samples True"):
        DiffusionConfig(sampler_head=True, crps_samples=True)
    assert DiffusionConfig(sampler_head=True, crps_dice_weight=1.0).crps_dice_weight == 1.0
