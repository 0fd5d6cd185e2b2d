"""The bf16 weight copy used for CPU training: in sync with the fp32 masters, gradients handed
back in fp32, and the model (optimizer, EMA, checkpoints) left holding fp32 weights."""

import copy

import torch

from src.training.low_precision import LowPrecisionWeights
from tests.helpers import tiny_model


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 16, 16, generator=generator)
    masks = (torch.rand(2, 1, 16, 16, generator=generator) > 0.5).float()
    return images, masks


def loss_of(forward, images, masks, seed: int = 1):
    torch.manual_seed(seed)  # the same timesteps, noise and self-conditioning coin for every path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return forward(images, masks)


def test_copies_follow_the_masters_after_an_optimizer_step():
    model = tiny_model()
    wrapper = LowPrecisionWeights(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    images, masks = batch()
    before = [c.clone() for c in wrapper.copies]
    loss_of(wrapper, images, masks).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_of(wrapper, images, masks)  # the next step's call refreshes the copies
    assert all(c.dtype == torch.bfloat16 for c in wrapper.copies)
    for master, copy_, old in zip(wrapper.masters, wrapper.copies, before):
        assert torch.equal(copy_, master.detach().to(torch.bfloat16))
    assert any(not torch.equal(c, old) for c, old in zip(wrapper.copies, before)), "the step changed no weight"


def test_gradients_reach_the_fp32_masters_and_match_autocast():
    model = tiny_model()
    reference = copy.deepcopy(model)
    wrapper = LowPrecisionWeights(model)
    images, masks = batch()
    loss = loss_of(wrapper, images, masks)
    reference_loss = loss_of(reference, images, masks)
    loss.backward()
    reference_loss.backward()
    assert all(c.grad is None for c in wrapper.copies)  # handed over, not kept twice
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    flat = torch.cat([g.flatten() for g in grads])
    reference_flat = torch.cat([p.grad.flatten() for p in reference.parameters()])
    assert abs(loss.item() - reference_loss.item()) < 1e-2 * abs(reference_loss.item())
    # bf16 weights round the norms' scales and biases too; autocast kept those in fp32
    assert (flat - reference_flat).norm() < 0.05 * reference_flat.norm()


def test_two_calls_before_a_step_accumulate_gradients():
    model = tiny_model()
    wrapper = LowPrecisionWeights(model)
    images, masks = batch()
    loss_of(wrapper, images, masks).backward()
    once = [p.grad.clone() for p in model.parameters()]
    loss_of(wrapper, images, masks).backward()
    for p, g in zip(model.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g)


def test_model_state_stays_fp32_and_buffers_untouched():
    model = tiny_model()
    schedule = model.process.alphas_cumprod.clone()
    wrapper = LowPrecisionWeights(model)
    images, masks = batch()
    loss_of(wrapper, images, masks).backward()
    assert all(value.dtype == torch.float32 for value in model.state_dict().values())
    assert torch.equal(model.process.alphas_cumprod, schedule) and model.process.alphas_cumprod.dtype == schedule.dtype


def test_cpu_bf16_training_runs_on_the_copy_keeps_fp32_checkpoints_and_resumes_exactly(tmp_path, monkeypatch):
    from src.checkpoint import load_checkpoint
    from src.training import train, trainer
    from tests.helpers import TINY_MODEL
    from tests.test_training import tiny_train_config

    calls = []

    class Counting(LowPrecisionWeights):
        def __call__(self, *args, **kwargs):
            calls.append(1)
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(trainer, "LowPrecisionWeights", Counting)
    options = dict(precision="bf16", device="cpu")
    full = train(tiny_train_config(tmp_path / "full", **options), TINY_MODEL)
    assert len(calls) == full.steps == 8  # one call, so one refresh of the copy, per optimizer step
    first = train(tiny_train_config(tmp_path / "split", max_steps=5, **options), TINY_MODEL)
    resumed = train(tiny_train_config(tmp_path / "split", resume=str(first.last_checkpoint), **options), TINY_MODEL)
    full_state, resumed_state = load_checkpoint(full.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for key in ("model", "ema"):
        for name, value in full_state[key].items():
            assert value.dtype == torch.float32, f"{key}.{name} saved as {value.dtype}"
            assert torch.equal(value, resumed_state[key][name]), f"{key}.{name} differs after resume"
