"""Time-ensembled sampling: a sample is the mean of its steps' x0 estimates, under fresh noise per step."""

import numpy as np
import pytest
import torch

from src.device import select_runtime
from src.inference import Predictor, PredictorOptions
from src.inference.cli import build_parser
from tests.helpers import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_time_ensembled_probability_is_the_mean_of_the_step_estimates():
    model = tiny_model().eval()
    images = torch.rand(2, 3, 16, 16)
    run = model.segmentation(images, steps=6, seed=4, eta=1.0, time_ensemble=True)
    estimates = [model.x0_to_probabilities(step.x0) for step in run]
    output = run.output()
    assert len(estimates) == 6
    torch.testing.assert_close(output.probabilities, torch.stack(estimates).mean(0))
    last_only = model.segment(images, steps=6, seed=4, eta=1.0, time_ensemble=False)
    final = model.sample(images, steps=6, seed=4, eta=1.0)
    torch.testing.assert_close(last_only.probabilities, model.x0_to_probabilities(final))


def test_eta_one_draws_fresh_noise_and_eta_zero_does_not():
    model = tiny_model().eval()
    images = torch.rand(1, 3, 16, 16)
    deterministic = [x_t for _, x_t, _ in model.reverse_process(images, steps=4, eta=0.0, seed=1)]
    noisy = [x_t for _, x_t, _ in model.reverse_process(images, steps=4, eta=1.0, seed=1)]
    assert not torch.allclose(deterministic[0], noisy[0])
    again = [x_t for _, x_t, _ in model.reverse_process(images, steps=4, eta=1.0, seed=1)]
    torch.testing.assert_close(noisy[-1], again[-1], rtol=0, atol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_rows_sample_does_not_depend_on_how_many_rows_are_sampled_with_it(eta):
    model = tiny_model().eval()
    images = torch.rand(5, 3, 16, 16)
    alone = model.segment(images[:1], steps=5, seed=9, eta=eta).probabilities
    together = model.segment(images, steps=5, seed=9, eta=eta).probabilities[:1]
    torch.testing.assert_close(alone, together)


def test_process_trace_records_the_running_mean_that_becomes_the_result():
    model = tiny_model()
    predictor = Predictor(model, select_runtime("cpu", "fp32"), PredictorOptions(steps=5, process_frames=5))
    image = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    prediction = predictor.predict([image], record_process=True)[0]
    trace = prediction.process
    assert trace.mean.shape == trace.x0.shape == (5, 1, 16, 16)
    torch.testing.assert_close(trace.mean[0], trace.x0[0])  # after one step the mean is that step's estimate
    torch.testing.assert_close(trace.mean[-1], trace.x0.mean(0))  # every step kept: the mean of all five
    final_probability = (trace.mean[-1][0] + 1) / 2
    np.testing.assert_allclose(prediction.probabilities[0], final_probability.numpy(), atol=1e-5)
    without = Predictor(model, select_runtime("cpu", "fp32"), PredictorOptions(steps=5, time_ensemble=False))
    assert without.predict([image], record_process=True)[0].process.mean is None


def test_inference_flags_reach_the_sampler():
    args = build_parser().parse_args(["--checkpoint", "c.pth", "--input", "x.png", "--eta", "0", "--no-time-ensemble"])
    assert args.eta == 0.0 and args.time_ensemble is False
    defaults = build_parser().parse_args(["--checkpoint", "c.pth", "--input", "x.png"])
    assert defaults.eta == 1.0 and defaults.time_ensemble is True


@pytest.mark.parametrize("mask_head_blocks", [0, 2])
def test_an_ensemble_is_one_batched_network_call_per_step(mask_head_blocks):
    model = tiny_model(mask_head_blocks=mask_head_blocks).eval()
    calls = []
    per_step = model.mask_head if mask_head_blocks else model.unet  # what runs at every step
    per_step.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    model.segment(torch.rand(2, 3, 16, 16), steps=3, ensemble=4, seed=0)
    assert calls == [2 * 4] * 3
