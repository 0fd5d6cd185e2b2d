"""Self-conditioning: the network sees its previous x0 estimate, in training and in sampling."""

import pytest
import torch

from src.models import DiffusionConfig, DiffusionSegmentation
from tests.helpers import tiny_model


class RecordingNetwork:
    """Wraps model.network_output and records the x0 estimate each call was given (a copy, or with
    `keep=True` the tensor itself, so a test can take gradients with respect to it)."""

    def __init__(self, model: DiffusionSegmentation, keep: bool = False):
        self.original, self.estimates, self.calls, self.keep = model.network_output, [], [], keep

    def __call__(self, x_t, t, images, x0_estimate=None, generator=None):
        kept = x0_estimate if self.keep or x0_estimate is None else x0_estimate.clone()
        self.estimates.append(kept)
        self.calls.append((x_t, t, images))
        return self.original(x_t, t, images, x0_estimate, generator=generator)


@pytest.mark.parametrize("mask_head_blocks, image_channels", [(0, 3), (2, 0)])
def test_the_network_takes_the_estimate_as_extra_mask_channels(mask_head_blocks, image_channels):
    """Beside x_t and (without a head) the image; with a head the UNet reads the image alone."""
    with_estimate = tiny_model(num_classes=3, mask_head_blocks=mask_head_blocks)
    without = tiny_model(num_classes=3, self_condition=False, mask_head_blocks=mask_head_blocks)
    assert with_estimate.noisy_input_conv.in_channels == (3 + 3 + image_channels) * 4**2  # x_t, estimate; patch 4
    assert without.noisy_input_conv.in_channels == (3 + image_channels) * 4**2
    assert with_estimate.unet.input_conv.in_channels == (3 if mask_head_blocks else 9) * 4**2


def test_each_sampling_step_receives_the_mean_of_the_estimates_so_far_by_default():
    model = tiny_model().eval()
    recorder = RecordingNetwork(model)
    model.network_output = recorder
    trajectory = list(model.reverse_process(torch.rand(2, 3, 16, 16), steps=4, seed=0, eta=1.0))
    assert len(recorder.estimates) == 4 and recorder.estimates[0] is None
    estimates = torch.stack([step.x0 for step in trajectory])
    for i, given in enumerate(recorder.estimates[1:], start=1):
        torch.testing.assert_close(given, estimates[:i].mean(0))
    assert not torch.allclose(recorder.estimates[2], estimates[1])  # a mean of two, not the last one


def test_with_last_each_sampling_step_receives_the_previous_steps_estimate():
    model = tiny_model().eval()
    recorder = RecordingNetwork(model)
    model.network_output = recorder
    trajectory = list(model.reverse_process(torch.rand(2, 3, 16, 16), steps=4, seed=0, self_condition_on="last"))
    assert len(recorder.estimates) == 4 and recorder.estimates[0] is None
    for (_, _, x0_before), given in zip(trajectory[:-1], recorder.estimates[1:]):
        torch.testing.assert_close(given, x0_before, rtol=0, atol=0)


def test_the_source_of_the_estimate_reaches_segment_and_changes_its_result():
    model = tiny_model().eval()
    images = torch.rand(2, 3, 16, 16)
    mean = model.segment(images, steps=4, ensemble=2, seed=1).probabilities
    last = model.segment(images, steps=4, ensemble=2, seed=1, self_condition_on="last").probabilities
    assert not torch.allclose(mean, last)
    torch.testing.assert_close(
        mean, model.segment(images, steps=4, ensemble=2, seed=1, self_condition_on="mean").probabilities
    )
    with pytest.raises(ValueError, match="self_condition_on must be one of"):
        model.segment(images, steps=4, self_condition_on="first")


def test_inference_self_condition_flag_reaches_the_sampler():
    import numpy as np

    from src.device import select_runtime
    from src.inference.cli import build_parser
    from src.inference.predictor import Predictor, PredictorOptions

    parser = build_parser()
    assert parser.parse_args(["--checkpoint", "c.pth", "--input", "x.png"]).self_condition_on == "mean"
    args = parser.parse_args(["--checkpoint", "c.pth", "--input", "x.png", "--self-condition-on", "last"])
    assert args.self_condition_on == "last"
    with pytest.raises(SystemExit):
        parser.parse_args(["--checkpoint", "c.pth", "--input", "x.png", "--self-condition-on", "first"])
    model = tiny_model().eval()
    image = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    runtime = select_runtime("cpu", "fp32")
    predictions = {
        source: Predictor(model, runtime, PredictorOptions(steps=4, self_condition_on=source)).predict([image])[0]
        for source in ("mean", "last")
    }
    expected = model.segment(
        torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, steps=4, seed=0, self_condition_on="last"
    )
    np.testing.assert_allclose(predictions["last"].probabilities, expected.probabilities[0].numpy(), atol=1e-5)
    assert not np.allclose(predictions["mean"].probabilities, predictions["last"].probabilities)


def test_the_estimate_changes_the_output():
    model = tiny_model().eval()
    x_t, t = torch.randn(1, 1, 16, 16), torch.tensor([500])
    with torch.no_grad():
        images = model.image_conditioning(torch.rand(1, 3, 16, 16))
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


def test_recycled_training_chains_its_estimate_passes_handing_each_the_mean_of_those_before():
    model = tiny_model(self_condition_passes=3)
    recorder = RecordingNetwork(model)
    model.network_output = recorder
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    torch.manual_seed(0)
    model.training_losses(images, masks, self_condition=True, estimate_passes=3)
    first, second, third, graded = recorder.estimates
    assert first is None and not third.requires_grad and not graded.requires_grad
    # rebuild each pass's estimate from the one before: pass 2 got pass 1's, pass 3 the mean of 1 and 2
    x_t, t, conditioning = recorder.calls[0]

    def x0_given(estimate):
        return model.output_to_x0_eps(recorder.original(x_t, t, conditioning, estimate), x_t, t)[0]

    outputs = [x0_given(e) for e in (first, second, third)]
    torch.testing.assert_close(second, outputs[0])
    torch.testing.assert_close(third, (outputs[0] + outputs[1]) / 2)
    torch.testing.assert_close(graded, (outputs[0] + outputs[1] + outputs[2]) / 3)
    # drawn, the pass counts cover 1 to 3: 2, 3 or 4 network calls per estimate batch
    counts = set()
    for seed in range(30):
        recorder.estimates.clear()
        torch.manual_seed(seed)
        model.training_losses(images, masks, self_condition=True)
        counts.add(len(recorder.estimates))
    assert counts == {2, 3, 4}


def test_one_estimate_pass_leaves_the_default_training_stream_as_it_was():
    # the pass count is drawn only when there is a choice, so a default run draws what it drew
    # before recycling existed (its losses and every later random number)
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    for passes, same in ((1, True), (3, False)):
        model = tiny_model(self_condition_passes=passes)
        torch.manual_seed(5)
        drawn = model.training_losses(images, masks, self_condition=True)["loss"]
        after_drawn = torch.rand(3)
        torch.manual_seed(5)
        forced = model.training_losses(images, masks, self_condition=True, estimate_passes=1)["loss"]
        after_forced = torch.rand(3)
        assert torch.equal(after_drawn, after_forced) is same
        if same:
            torch.testing.assert_close(drawn, forced, rtol=0, atol=0)


def test_self_condition_passes_flag_validation_and_old_checkpoints():
    from src.training.cli import build_parser, configs_from_args

    parser = build_parser()
    _, config = configs_from_args(parser, parser.parse_args(["--synthetic", "--self-condition-passes", "3"]))
    assert config.self_condition_passes == 3
    values = tiny_model().config.to_dict()
    values.pop("self_condition_passes")
    assert DiffusionConfig.from_dict(values).self_condition_passes == 1
    with pytest.raises(ValueError, match="self_condition_passes must be >= 1, got 0"):
        DiffusionConfig(self_condition_passes=0)


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


def test_perturbed_estimates_move_the_boundary_and_lower_the_confidence():
    from src.models.estimate_perturbation import MAX_RADIUS, MIN_CONFIDENCE, perturb_estimates

    x0 = -torch.ones(64, 1, 24, 24)
    x0[:, :, 8:16, 8:16] = 1  # an 8 x 8 square
    out = perturb_estimates(x0, torch.Generator().manual_seed(0))
    assert out.shape == x0.shape and out.abs().max() <= 1
    for sample in out:
        confidence = sample.abs().max()
        assert MIN_CONFIDENCE - 1e-6 <= confidence <= 1
        side = (sample[0] > 0).sum().float().sqrt()  # still a square, grown or shrunk by 0..MAX_RADIUS per side
        assert (sample[0] > 0).sum() == 0 or abs(side - 8) <= 2 * MAX_RADIUS
        torch.testing.assert_close(sample[sample != 0].abs(), torch.full_like(sample[sample != 0], confidence))
    sides = {int((s[0] > 0).sum()) for s in out}
    assert {64, 100, 36}.issubset(sides)  # unchanged, dilated by 1, eroded by 1 among 64 draws
    again = perturb_estimates(x0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again, rtol=0, atol=0)


def test_perturb_estimate_changes_only_the_training_estimate():
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    given = {}
    for perturb in (False, True):
        model = tiny_model(perturb_estimate=perturb)
        model.load_state_dict(tiny_model().state_dict())  # the same weights either way
        recorder = RecordingNetwork(model)
        model.network_output = recorder
        torch.manual_seed(0)
        model.training_losses(images, masks, self_condition=True)
        given[perturb] = recorder.estimates[1]
    assert not torch.allclose(given[True], given[False])
    assert given[True].abs().max() <= given[False].abs().max() + 1e-6
    model = tiny_model(perturb_estimate=True).eval()
    plain = tiny_model().eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(  # sampling hands over the estimates unperturbed
        model.segment(images, steps=3, seed=0).probabilities, plain.segment(images, steps=3, seed=0).probabilities
    )


@pytest.mark.parametrize(
    "field", ["perturb_estimate", "estimate_pass_loss", "unrolled_estimate", "crps_samples", "sampler_head"]
)
def test_training_switches_of_the_estimate_and_old_checkpoints(field):
    from src.training.cli import build_parser, configs_from_args

    parser = build_parser()
    flag = "--" + field.replace("_", "-")
    _, config = configs_from_args(parser, parser.parse_args(["--synthetic", flag]))
    assert getattr(config, field) is True
    _, config = configs_from_args(parser, parser.parse_args(["--synthetic"]))
    assert getattr(config, field) is False
    values = tiny_model().config.to_dict()
    values.pop(field)
    assert getattr(DiffusionConfig.from_dict(values), field) is False


def test_crps_dice_weight_flag_and_old_checkpoints():
    from src.training.cli import build_parser, configs_from_args

    parser = build_parser()
    _, config = configs_from_args(
        parser, parser.parse_args(["--synthetic", "--crps-samples", "--crps-dice-weight", "1"])
    )
    assert config.crps_samples is True and config.crps_dice_weight == 1.0
    values = tiny_model().config.to_dict()
    values.pop("crps_dice_weight")
    assert DiffusionConfig.from_dict(values).crps_dice_weight == 0.0


def _grads(model) -> list:
    return [p.grad.clone() for p in model.parameters()]


def test_estimate_pass_loss_trains_the_first_pass_as_the_no_estimate_branch_does():
    """Its estimate batch's loss is the plain estimate batch's plus the no-estimate batch's, on the
    same draws, and so is its gradient: the first pass is trained, its estimate still handed over
    detached (the refining pass's gradient is the plain model's)."""
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    t = torch.tensor([3, 700])
    flagged, plain = tiny_model(estimate_pass_loss=True), tiny_model()
    assert all(torch.equal(a, b) for a, b in zip(flagged.state_dict().values(), plain.state_dict().values()))
    terms = {}
    for name, model, branch in (("both", flagged, True), ("refine", plain, True), ("first", plain, False)):
        model.zero_grad()
        torch.manual_seed(7)
        losses = model.training_losses(images, masks, t=t, self_condition=branch)
        losses["loss"].backward()
        terms[name] = (losses, _grads(model))
    both, refine, first = terms["both"][0], terms["refine"][0], terms["first"][0]
    torch.testing.assert_close(both["estimate_pass"], first["loss"])
    torch.testing.assert_close(both["loss"], refine["loss"] + first["loss"])
    assert "estimate_pass" not in refine
    for g_both, g_refine, g_first in zip(terms["both"][1], terms["refine"][1], terms["first"][1]):
        torch.testing.assert_close(g_both, g_refine + g_first)
    assert any(not torch.allclose(a, b) for a, b in zip(terms["both"][1], terms["refine"][1]))


def test_estimate_pass_loss_leaves_the_no_estimate_branch_and_the_estimate_as_they_were():
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    flagged, plain = tiny_model(estimate_pass_loss=True), tiny_model()
    given = {}
    for name, model in (("flagged", flagged), ("plain", plain)):
        recorder = RecordingNetwork(model)
        model.network_output = recorder
        torch.manual_seed(3)
        losses = model.training_losses(images, masks, self_condition=False)
        assert set(losses) == {"mse", "bce", "dice", "loss"}
        torch.manual_seed(3)
        model.training_losses(images, masks, self_condition=True)
        given[name] = recorder.estimates[-1]
        after = torch.rand(3)  # the same draws as the plain model's
        given[name + " after"] = after
    assert not given["flagged"].requires_grad
    torch.testing.assert_close(given["flagged"], given["plain"], rtol=0, atol=0)
    torch.testing.assert_close(given["flagged after"], given["plain after"], rtol=0, atol=0)


def test_unrolled_estimate_trains_the_estimate_pass_through_the_estimate():
    """Same draws, same loss as Analog Bits' detached estimate; the gradient is the plain one plus
    the refining loss's gradient carried back through the estimate into the pass that made it."""
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    t = torch.tensor([3, 700])
    unrolled, plain = tiny_model(unrolled_estimate=True), tiny_model()
    params = list(unrolled.parameters())
    recorder = RecordingNetwork(unrolled, keep=True)
    unrolled.network_output = recorder
    torch.manual_seed(7)
    losses = unrolled.training_losses(images, masks, t=t, self_condition=True)
    loss, estimate = losses["loss"], recorder.estimates[-1]
    assert estimate.requires_grad and "estimate_pass" not in losses  # no loss of its own on the first pass
    through_estimate = torch.autograd.grad(loss, estimate, retain_graph=True)[0]
    via_estimate = torch.autograd.grad(estimate, params, through_estimate, retain_graph=True, allow_unused=True)
    unrolled_grads = torch.autograd.grad(loss, params, allow_unused=True)
    torch.manual_seed(7)
    plain_loss = plain.training_losses(images, masks, t=t, self_condition=True)["loss"]
    plain_grads = torch.autograd.grad(plain_loss, list(plain.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    for total, direct, extra, param in zip(unrolled_grads, plain_grads, via_estimate, params):
        zero = torch.zeros_like(param)  # a parameter no path reaches (allow_unused gives None)
        torch.testing.assert_close(
            zero if total is None else total, (zero if direct is None else direct) + (zero if extra is None else extra)
        )
    assert any(g is not None and g.abs().sum() > 0 for g in via_estimate)
