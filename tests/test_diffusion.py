"""Diffusion math (schedules, q_sample, posterior, conversions), samplers and the training loss."""

import math

import pytest
import torch

from src.models import DiffusionConfig, DiffusionSegmentation
from src.models.losses import soft_dice_loss
from src.models.schedules import cosine_beta_schedule, linear_beta_schedule
from src.models.segmentation import predictive_entropy

# patch_size 1: the diffusion math is checked on 8-16 px images, below what the default patch size 4 allows
TINY = dict(
    base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(2,), num_heads=2, patch_size=1
)


def tiny_model(**overrides) -> DiffusionSegmentation:
    torch.manual_seed(0)
    return DiffusionSegmentation(DiffusionConfig(**{**TINY, **overrides}))


# -- schedules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alphas_cumprod_is_decreasing_from_one_to_near_zero(schedule):
    model = tiny_model(schedule=schedule)
    abar = model.process.alphas_cumprod
    assert abar.shape == (1000,)
    assert torch.all(abar[1:] < abar[:-1])
    assert 0.99 < abar[0] <= 1.0
    assert abar[-1] < 1e-3


def test_linear_schedule_matches_ho_et_al():
    betas = linear_beta_schedule(1000)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    abar = torch.cumprod(1 - betas, 0)
    # closed form of the product at t = 1: (1 - b0)(1 - b1)
    assert abar[1].item() == pytest.approx((1 - betas[0].item()) * (1 - betas[1].item()))


def test_cosine_schedule_matches_closed_form():
    T, s = 1000, 0.008
    abar = torch.cumprod(1 - cosine_beta_schedule(T), 0)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)


def test_q_sample_statistics_match_forward_process():
    model = tiny_model()
    t = torch.full((20000,), 300)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    x_t = model.process.q_sample(x0, t, torch.randn_like(x0))
    abar = model.process.alphas_cumprod[300].item()
    assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.02)
    assert x_t.var().item() == pytest.approx(1 - abar, rel=0.05)


def test_posterior_mean_and_variance_formulas():
    model = tiny_model(schedule="linear")
    betas = model.process.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    t = 400
    x0, x_t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    mean, variance, _ = model.process.q_posterior(x0, x_t, torch.tensor([t, t]))
    # Ho et al. eq. 7
    expected_mean = (abar[t - 1].sqrt() * betas[t] / (1 - abar[t])) * x0 + (
        (1 - betas[t]).sqrt() * (1 - abar[t - 1]) / (1 - abar[t])
    ) * x_t
    expected_var = (1 - abar[t - 1]) / (1 - abar[t]) * betas[t]
    torch.testing.assert_close(mean, expected_mean.float(), rtol=1e-5, atol=1e-6)
    assert variance.flatten()[0].item() == pytest.approx(expected_var.item(), rel=1e-5)


def test_x0_eps_v_conversions_round_trip():
    model = tiny_model()
    x0, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    # x0 from eps divides by sqrt(abar_t) ~ 1e-3 at t = T-1 and eps from x0 by sqrt(1/abar - 1) ~ 1e-2
    # at t = 0: both ill-conditioned in float32 there, which is why x0 and v targets are preferred.
    t = torch.tensor([1, 10, 500, 900])
    x_t = model.process.q_sample(x0, t, eps)
    torch.testing.assert_close(model.process.predict_x0_from_eps(x_t, t, eps), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.process.predict_eps_from_x0(x_t, t, x0), eps, rtol=1e-3, atol=1e-3)
    t = torch.tensor([0, 10, 500, 999])
    x_t = model.process.q_sample(x0, t, eps)
    v = model.process.predict_v(x0, t, eps)
    torch.testing.assert_close(model.process.predict_x0_from_v(x_t, t, v), x0, rtol=1e-4, atol=1e-4)


# -- samplers with an oracle denoiser -------------------------------------------------------------


def oracle_for(model: DiffusionSegmentation, x0: torch.Tensor):
    """A perfect denoiser to put in place of model.network_output: knows the true mask and answers
    in the model's prediction type."""

    z0 = x0 * model.config.input_scale  # the mask as the model noises it

    def predict(x_t, t, images, x0_estimate=None, generator=None):
        eps = model.process.predict_eps_from_x0(x_t, t, z0)
        kind = model.config.prediction_type
        # with bounded_x0 the network answers a logit: 20 is far enough that tanh(20) == 1 in float32
        x0_output = x0 * 20 if model.config.bounded_x0 else x0
        return {"eps": eps, "x0": x0_output, "v": model.process.predict_v(z0, t, eps)}[kind]

    return predict


def random_mask(shape=(2, 1, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) > 0.5).float() * 2 - 1


@pytest.mark.parametrize("input_scale", [1.0, 0.2])
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_with_oracle_recovers_mask_exactly(prediction_type, steps, input_scale):
    model = tiny_model(prediction_type=prediction_type, input_scale=input_scale)
    x0 = random_mask()
    images = torch.rand(2, 3, 16, 16)
    model.network_output = oracle_for(model, x0)
    out = model.sample(images, steps=steps, seed=1)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("input_scale", [1.0, 0.2])
def test_ddpm_with_oracle_recovers_mask(input_scale):
    model = tiny_model(timesteps=200, input_scale=input_scale)
    x0 = random_mask()
    model.network_output = oracle_for(model, x0)
    out = model.sample(torch.rand(2, 3, 16, 16), sampler="ddpm", seed=1)
    assert (out - x0).abs().max().item() < 1e-2


def test_ddim_visits_requested_number_of_steps_and_reports_them():
    model = tiny_model()
    seen = [step.t for step in model.reverse_process(torch.rand(1, 3, 8, 8), steps=7, seed=0)]
    assert len(seen) == 7 and seen[0] == 999 and seen[-1] == 0
    assert model.sample_timesteps(1) == [999]
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        model.sample_timesteps(0)


def test_same_seed_gives_same_sample_and_other_seed_differs():
    model = tiny_model(zero_init_noisy_input=False).eval()  # hears x_t, as a trained model does
    images = torch.rand(2, 3, 16, 16)
    a = model.sample(images, steps=5, seed=123)
    b = model.sample(images, steps=5, seed=123)
    c = model.sample(images, steps=5, seed=124)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    d = model.sample(images, sampler="ddim", steps=5, eta=1.0, seed=7)
    e = model.sample(images, sampler="ddim", steps=5, eta=1.0, seed=7)
    torch.testing.assert_close(d, e, rtol=0, atol=0)


# -- losses and segment ---------------------------------------------------------------------------


def test_soft_dice_loss_is_zero_for_perfect_and_one_for_disjoint():
    truth = torch.zeros(1, 1, 4, 4)
    truth[..., :2, :] = 1
    assert soft_dice_loss(truth, truth, eps=0).item() == pytest.approx(0.0)
    assert soft_dice_loss(1 - truth, truth, eps=0).item() == pytest.approx(1.0)


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("dice_weight", [0.0, 1.0])
def test_training_loss_is_finite_and_has_gradients(prediction_type, dice_weight):
    model = tiny_model(prediction_type=prediction_type, dice_weight=dice_weight)
    loss = model(torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_multiclass_masks_are_one_hot_in_minus_one_one():
    model = tiny_model(num_classes=3)
    ids = torch.tensor([[[0, 1], [2, 1]]])
    x0 = model.masks_to_x0(ids)
    assert x0.shape == (1, 3, 2, 2)
    assert x0[0, :, 1, 0].tolist() == [-1.0, -1.0, 1.0]
    probs = model.x0_to_probabilities(x0)
    assert probs.argmax(1).tolist() == ids.tolist()


@pytest.mark.parametrize("num_classes", [1, 4])
def test_segment_shapes_and_uncertainty(num_classes):
    model = tiny_model(num_classes=num_classes).eval()
    out = model.segment(torch.rand(2, 3, 8, 12), steps=3, ensemble=3, seed=0)
    assert out.probabilities.shape == (2, num_classes, 8, 12)
    assert out.mask.shape == (2, 8, 12) and out.mask.dtype == torch.long
    assert out.mask.max() < max(num_classes, 2)
    assert out.uncertainty.shape == out.ensemble_std.shape == (2, 8, 12)
    assert (out.uncertainty >= 0).all() and (out.uncertainty <= 1).all() and (out.ensemble_std >= 0).all()
    torch.testing.assert_close(out.uncertainty, predictive_entropy(out.probabilities))
    single = model.segment(torch.rand(1, 3, 8, 8), steps=2, ensemble=1, seed=0)
    assert single.ensemble_std.abs().max() == 0  # one sample: no spread, but still an entropy
    torch.testing.assert_close(single.uncertainty, predictive_entropy(single.probabilities))


def test_predictive_entropy_is_one_at_even_odds_and_zero_when_certain():
    binary = torch.tensor([0.5, 1.0, 0.0, 0.1]).reshape(1, 1, 1, 4)
    expected = torch.tensor([1.0, 0.0, 0.0, -(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9))])
    torch.testing.assert_close(predictive_entropy(binary)[0, 0], expected, atol=1e-4, rtol=0)
    classes = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
    torch.testing.assert_close(predictive_entropy(classes)[0, 0], torch.tensor([1.0, 0.0]), atol=1e-4, rtol=0)


def test_bad_config_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionConfig(prediction_type="noise")
    with pytest.raises(ValueError, match="schedule"):
        DiffusionConfig(schedule="quadratic")
    model = tiny_model()
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        model.sample(torch.rand(1, 1, 8, 8), steps=2)
    with pytest.raises(ValueError, match="not divisible by 2"):
        model.sample(torch.rand(1, 3, 9, 8), steps=2)


def test_config_round_trips_through_dict():
    config = DiffusionConfig(**TINY, num_classes=3, image_size=64)
    assert DiffusionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown model config keys"):
        DiffusionConfig.from_dict({**config.to_dict(), "bogus": 1})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_loss_runs_under_cuda_autocast(dtype):
    # CUDA autocast refuses F.binary_cross_entropy outright; the BCE term must run outside it.
    model = tiny_model(dice_weight=1.0).cuda()
    images = torch.rand(2, 3, 16, 16, device="cuda")
    masks = (torch.rand(2, 1, 16, 16, device="cuda") > 0.5).float()
    with torch.autocast("cuda", dtype=dtype):
        losses = model.training_losses(images, masks)
    assert losses["bce"].dtype == torch.float32
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()


def test_input_scale_shrinks_the_noised_mask_and_the_loss_target_stays_the_mask():
    model = tiny_model(input_scale=0.25, prediction_type="x0", bounded_x0=False)
    masks = (torch.rand(2, 1, 16, 16) > 0.5).float()
    t = torch.zeros(2, dtype=torch.long)  # abar_0 ~ 1: x_t ~ the scaled mask
    seen = {}
    model.network_output = lambda x_t, t, images, x0_estimate=None: (
        seen.setdefault("x_t", x_t) * 0 + model.masks_to_x0(masks)
    )
    losses = model.training_losses(torch.rand(2, 3, 16, 16), masks, t=t)
    assert seen["x_t"].abs().max() < 0.3  # the mask at 0.25, plus the tiny noise of t = 0
    assert losses["mse"].item() < 1e-8  # predicting the unscaled mask is exactly right


def test_old_checkpoint_config_without_input_scale_means_no_scaling():
    values = tiny_model().config.to_dict()
    values.pop("input_scale")
    assert DiffusionConfig.from_dict(values).input_scale == 1.0
    with pytest.raises(ValueError, match="input_scale"):
        DiffusionConfig(input_scale=0)


def test_train_t_exponent_moves_the_training_timesteps_up_and_keeps_the_uniform_stream():
    from src.training.cli import build_parser, configs_from_args

    uniform, rising = tiny_model(), tiny_model(train_t_exponent=2.0)
    torch.manual_seed(5)
    drawn = uniform.training_timesteps(64, "cpu")
    torch.manual_seed(5)
    torch.testing.assert_close(drawn, torch.randint(0, 1000, (64,)), rtol=0, atol=0)  # k = 1: randint's draws
    t = rising.training_timesteps(40_000, "cpu")
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    assert (t >= 500).float().mean().item() == pytest.approx(0.75, abs=0.01)  # P(t <= x) = (x / T)^2
    assert (t < 100).float().mean().item() == pytest.approx(0.01, abs=0.003)
    parser = build_parser()
    _, config = configs_from_args(parser, parser.parse_args(["--synthetic", "--train-t-exponent", "2"]))
    assert config.train_t_exponent == 2.0
    values = uniform.config.to_dict()
    values.pop("train_t_exponent")
    assert DiffusionConfig.from_dict(values).train_t_exponent == 1.0  # an old checkpoint trained uniform
    with pytest.raises(ValueError, match="train_t_exponent must be > 0, got 0"):
        DiffusionConfig(train_t_exponent=0)


def test_bounded_x0_keeps_the_mask_in_range_and_takes_bce_on_the_logit():
    model = tiny_model(prediction_type="x0", bounded_x0=True)
    masks = (torch.rand(2, 1, 16, 16) > 0.5).float()
    logit = torch.full((2, 1, 16, 16), 30.0, requires_grad=True)  # far past the range of a clamped output
    model.network_output = lambda x_t, t, images, x0_estimate=None: logit
    x0, _ = model.output_to_x0_eps(logit, torch.zeros_like(logit), torch.zeros(2, dtype=torch.long), clip=False)
    assert x0.max() <= 1 and x0.min() >= -1
    losses = model.training_losses(torch.rand(2, 3, 16, 16), masks)
    expected_bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.full_like(masks, 60.0), masks)
    assert losses["bce"].item() == pytest.approx(expected_bce.item(), rel=1e-5)
    losses["loss"].backward()
    # a saturated logit still gets a finite gradient that pulls the background pixels down
    background = masks == 0
    assert torch.isfinite(logit.grad).all() and (logit.grad[background] > 0).all()


def test_train_defaults_to_dropout_0_2_and_a_checkpoint_keeps_the_dropout_it_was_trained_with(tmp_path):
    """0.2 since the eighteenth round; a model trained with the twelfth round's 0.1 (or none) must
    come back with its own rate, or its MC-dropout ensembles would sample another network."""
    from src.inference import Predictor, PredictorOptions
    from src.training.cli import build_parser, configs_from_args
    from tests.helpers import write_checkpoint

    parser = build_parser()
    _, config = configs_from_args(parser, parser.parse_args(["--synthetic"]))
    assert config.dropout == 0.2 == DiffusionConfig().dropout
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got"):
            DiffusionConfig(dropout=bad)
    for rate in (0.1, 0.0):
        checkpoint = write_checkpoint(tiny_model(dropout=rate, mask_head_blocks=1), tmp_path / f"{rate}.pth")
        predictor = Predictor.from_checkpoint(checkpoint, device="cpu", options=PredictorOptions(steps=2))
        rates = {module.p for module in predictor.model.modules() if isinstance(module, torch.nn.Dropout)}
        assert predictor.model.config.dropout == rate and rates == {rate}


def test_old_checkpoint_config_without_patch_size_or_bounded_x0_means_neither():
    values = tiny_model().config.to_dict()
    values.pop("patch_size"), values.pop("bounded_x0")
    config = DiffusionConfig.from_dict(values)
    assert config.patch_size == 1 and config.bounded_x0 is False


def test_old_checkpoint_config_without_stem_channels_has_no_stem():
    values = tiny_model().config.to_dict()
    values.pop("stem_channels")
    model = DiffusionSegmentation(DiffusionConfig.from_dict(values))
    assert model.config.stem_channels == 0 and model.unet.stem is None


@pytest.mark.parametrize("stem_channels, patch_size", [(-1, 4), (8, 3), (8, 1)])
def test_stem_channels_are_checked_against_the_patch_size(stem_channels, patch_size):
    with pytest.raises(ValueError, match="stem_channels must be >= 0"):
        DiffusionConfig(image_size=48, patch_size=patch_size, stem_channels=stem_channels, channel_mults=(1, 2))


def test_train_flag_adds_the_stem():
    from src.training.cli import build_parser, configs_from_args

    parser = build_parser()
    _, config = configs_from_args(parser, parser.parse_args(["--synthetic", "--stem-channels", "16"]))
    model = DiffusionSegmentation(config)
    assert config.stem_channels == 16 and model.unet.stem.layers[0].out_channels == 16


def test_old_checkpoint_config_has_no_extra_blocks_and_its_init_was_not_zeroed():
    values = tiny_model().config.to_dict()
    for key in ("extra_encoder_blocks", "zero_init_noisy_input", "zero_init_time_film"):
        values.pop(key)
    config = DiffusionConfig.from_dict(values)
    assert config.extra_encoder_blocks == () and not config.zero_init_noisy_input and not config.zero_init_time_film


# -- zero-initialised diffusion inputs (the default since the sixth ablation round) ---------------


@pytest.mark.parametrize("mask_head_blocks", [0, 2])
def test_a_new_model_starts_deaf_to_the_noise_in_x_t_and_to_the_timestep(mask_head_blocks):
    """At input_scale 0.05 x_t is noise at almost every t: a new model's output must not move with
    it (or with t) until training finds it useful, while the image and the estimate still count."""
    model = tiny_model(patch_size=2, mask_head_blocks=mask_head_blocks)
    images, t = torch.rand(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        images_in = model.image_conditioning(images)
        out = model.network_output(torch.randn(2, 1, 16, 16), t, images_in)
        torch.testing.assert_close(model.network_output(torch.randn(2, 1, 16, 16), t, images_in), out)
        torch.testing.assert_close(model.network_output(torch.randn(2, 1, 16, 16), t.flip(0), images_in), out)
        other_images = model.image_conditioning(torch.rand(2, 3, 16, 16))
        assert not torch.allclose(model.network_output(torch.randn(2, 1, 16, 16), t, other_images), out)
        estimate = torch.ones(2, 1, 16, 16)
        assert not torch.allclose(model.network_output(torch.randn(2, 1, 16, 16), t, images_in, estimate), out)
    for block in (m for m in model.modules() if hasattr(m, "time_proj")):
        assert block.time_proj[-1].weight.abs().sum() == 0
    # the old init heard both: x_t's noise moved the output
    old_init = dict(zero_init_noisy_input=False, zero_init_time_film=False)
    old = tiny_model(patch_size=2, mask_head_blocks=mask_head_blocks, **old_init)
    with torch.no_grad():
        images_in = old.image_conditioning(images)
        a = old.network_output(torch.randn(2, 1, 16, 16), t, images_in)
        assert not torch.allclose(old.network_output(torch.randn(2, 1, 16, 16), t, images_in), a)


@pytest.mark.parametrize("mask_head_blocks", [0, 2])
def test_zeroed_x_t_weights_still_learn(mask_head_blocks):
    """Zero weights, not a cut connection: a training step gives them a gradient."""
    model = tiny_model(patch_size=2, mask_head_blocks=mask_head_blocks)
    patch_inputs = model.config.patch_size**2  # x_t's channels after the patch fold
    assert model.noisy_input_conv.weight[:, :patch_inputs].abs().sum() == 0
    model.training_losses(torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float(), t=torch.tensor([0, 1]))[
        "loss"
    ].backward()
    assert model.noisy_input_conv.weight.grad[:, :patch_inputs].abs().sum() > 0


def test_train_flags_set_the_extra_blocks_and_the_old_init():
    from src.training.cli import build_parser, configs_from_args

    parser = build_parser()
    argv = ["--synthetic", "--extra-encoder-blocks", "1,1", "--no-zero-init-noisy-input", "--no-zero-init-time-film"]
    _, config = configs_from_args(parser, parser.parse_args(argv))
    assert config.extra_encoder_blocks == (1, 1)
    assert not config.zero_init_noisy_input and not config.zero_init_time_film
    with pytest.raises(SystemExit):
        configs_from_args(parser, parser.parse_args(["--synthetic", "--extra-encoder-blocks", "1,1,1,1,1"]))


# -- ignored pixels (an ignore label, letterbox padding) --------------------------------------------


def test_ignored_pixels_change_no_loss_term():
    """Whatever the network predicts under pixels marked invalid, and whatever class sits there,
    MSE, BCE and soft Dice are unchanged; without the mask they do change."""
    model = tiny_model(num_classes=3)
    images = torch.rand(2, 3, 16, 16)
    masks = torch.randint(0, 3, (2, 16, 16))
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[:, :5] = False
    other_masks = masks.clone()
    other_masks[:, :5] = -1  # what the dataset hands over for ignored pixels
    out_a = torch.randn(2, 3, 16, 16)
    out_b = out_a.clone()
    out_b[:, :, :5] = torch.randn(2, 3, 5, 16) * 5  # a wild prediction under the ignored rows only
    t = torch.tensor([10, 700])

    def losses(output, mask_batch, valid_mask):
        model.network_output = lambda *inputs: output
        torch.manual_seed(0)
        return model.training_losses(images, mask_batch, t=t, valid=valid_mask)

    a, b = losses(out_a, masks, valid), losses(out_b, other_masks, valid)
    for term in ("mse", "bce", "dice", "loss"):
        torch.testing.assert_close(a[term], b[term], rtol=0, atol=0, msg=term)
    unmasked_a, unmasked_b = losses(out_a, masks, None), losses(out_b, masks, None)
    assert not torch.allclose(unmasked_a["loss"], unmasked_b["loss"])
