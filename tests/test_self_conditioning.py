"""Self-conditioning: the network sees its previous x0 estimate, in training and in sampling."""

import pytest
import torch

from src.models import DiffusionConfig, DiffusionSegmentation
from tests.helpers import tiny_model


class RecordingNetwork:
    """Wraps model.network_output and records the x0 estimate each call was given."""

    def __init__(self, model: DiffusionSegmentation):
        self.original, self.estimates = model.network_output, []

    def __call__(self, x_t, t, images, x0_estimate=None):
        self.estimates.append(None if x0_estimate is None else x0_estimate.clone())
        return self.original(x_t, t, images, x0_estimate)


def test_unet_takes_the_estimate_as_extra_mask_channels():
    with_estimate, without = tiny_model(num_classes=3), tiny_model(num_classes=3, self_condition=False)
    assert with_estimate.unet.input_conv.in_channels == (3 + 3 + 3) * 4**2  # x_t, estimate, image; patch 4
    assert without.unet.input_conv.in_channels == (3 + 3) * 4**2


def test_each_sampling_step_receives_the_previous_steps_estimate():
    model = tiny_model().eval()
    recorder = RecordingNetwork(model)
    model.network_output = recorder
    trajectory = list(model.reverse_process(torch.rand(2, 3, 16, 16), steps=4, seed=0))
    assert len(recorder.estimates) == 4 and recorder.estimates[0] is None
    for (_, _, x0_before), given in zip(trajectory[:-1], recorder.estimates[1:]):
        torch.testing.assert_close(given, x0_before, rtol=0, atol=0)


def test_the_estimate_changes_the_output():
    model = tiny_model().eval()
    x_t, t, images = torch.randn(1, 1, 16, 16), torch.tensor([500]), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        none = model.network_output(x_t, t, images)
        zeros = model.network_output(x_t, t, images, torch.zeros_like(x_t))
        ones = model.network_output(x_t, t, images, torch.ones_like(x_t))
    torch.testing.assert_close(none, zeros)  # "no estimate yet" is the zero estimate
    assert not torch.allclose(zeros, ones)


def test_training_self_conditions_about_half_of_the_batches_without_gradient_through_the_first_pass():
    model = tiny_model()
    recorder = RecordingNetwork(model)
    model.network_output = recorder
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    torch.manual_seed(0)
    batches = 120
    for _ in range(batches):
        model(images, masks)
    given = [e for e in recorder.estimates if e is not None]
    # a self-conditioned batch calls the network twice: first with no estimate, then with its answer
    assert len(recorder.estimates) == batches + len(given)
    assert 0.35 * batches < len(given) < 0.65 * batches
    assert all(not e.requires_grad and e.abs().max() <= 1 for e in given)


@pytest.mark.parametrize(("branch", "calls"), [(True, 2), (False, 1)])
def test_the_self_conditioning_branch_can_be_forced(branch, calls):
    # step-time probes time both branches (benchmarks.kvasir.estimate_ours_step)
    model = tiny_model()
    recorder = RecordingNetwork(model)
    model.network_output = recorder
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    for seed in range(6):  # whatever the coin would have said
        torch.manual_seed(seed)
        model.training_losses(images, masks, self_condition=branch)
    assert len(recorder.estimates) == 6 * calls
    assert sum(e is not None for e in recorder.estimates) == (6 if branch else 0)
    plain = tiny_model(self_condition=False)
    plain.network_output = RecordingNetwork(plain)
    plain.training_losses(images, masks, self_condition=True)  # nothing to force without self-conditioning
    assert plain.network_output.estimates == [None]


def test_loss_backpropagates_through_the_second_pass_only():
    model = tiny_model()
    torch.manual_seed(1)
    loss = model(torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_old_checkpoint_config_without_self_condition_means_none():
    values = tiny_model().config.to_dict()
    values.pop("self_condition")
    assert DiffusionConfig.from_dict(values).self_condition is False
    assert DiffusionConfig().self_condition is True


@pytest.mark.parametrize("self_condition", [True, False])
def test_sample_and_segment_are_deterministic_given_the_seed(self_condition):
    model = tiny_model(self_condition=self_condition).eval()
    images = torch.rand(2, 3, 16, 16)
    a = model.segment(images, steps=5, ensemble=2, seed=3).probabilities
    b = model.segment(images, steps=5, ensemble=2, seed=3).probabilities
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_train_flags_set_self_conditioning():
    from src.training.cli import build_parser, configs_from_args

    parser = build_parser()
    argv = ["--synthetic", "--no-self-condition"]
    _, config = configs_from_args(parser, parser.parse_args(argv))
    assert config.self_condition is False and config.refine_from_estimate is False
    argv = ["--synthetic", "--refine-from-estimate"]
    _, config = configs_from_args(parser, parser.parse_args(argv))
    assert config.self_condition is True and config.refine_from_estimate is True
