"""Encode the image once, denoise with a light head (DiffusionConfig.mask_head_blocks, DDP)."""

import pytest
import torch

from src.checkpoint import load_model, save_checkpoint
from src.models import DiffusionConfig, DiffusionSegmentation
from src.models.config import LEGACY_DEFAULTS

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(2,), num_heads=2)


def tiny_model(**overrides) -> DiffusionSegmentation:
    torch.manual_seed(0)
    return DiffusionSegmentation(DiffusionConfig(**{**TINY, "patch_size": 2, **overrides}))


def count_calls(module: torch.nn.Module) -> list:
    """A list that grows by one entry (the batch size) at each forward call of `module`."""
    calls = []
    module.register_forward_hook(lambda _module, inputs, _output: calls.append(inputs[0].shape[0]))
    return calls


def test_sampling_encodes_each_image_once_whatever_the_steps_and_samples():
    model = tiny_model(mask_head_blocks=2, dropout=0.0).eval()
    unet_calls, head_calls = count_calls(model.unet), count_calls(model.mask_head)
    out = model.segment(torch.rand(3, 3, 16, 16), steps=4, ensemble=5, seed=0)
    assert unet_calls == [3]  # one pass over the three images, not one per step or sample
    assert head_calls == [15] * 4  # every step runs the head on all 3 x 5 samples
    assert out.probabilities.shape == (3, 1, 16, 16) and out.mask.shape == (3, 16, 16)
    assert 0 <= out.probabilities.min() and out.probabilities.max() <= 1
    assert out.ensemble_std.shape == (3, 16, 16)


def test_without_a_head_the_unet_runs_at_every_step():
    model = tiny_model(mask_head_blocks=0).eval()
    assert model.mask_head is None
    unet_calls = count_calls(model.unet)
    model.segment(torch.rand(2, 3, 16, 16), steps=3, ensemble=2, seed=0)
    assert unet_calls == [4] * 3


@pytest.mark.parametrize("mask_head_blocks", [0, 2])
def test_an_ensemble_samples_as_the_repeated_images_would(mask_head_blocks):
    """Conditioning once per image changes no sample: the same seed gives the same estimates as
    sampling each image repeated ensemble times, so old results stay reproducible."""
    model = tiny_model(mask_head_blocks=mask_head_blocks).eval()
    images = torch.rand(2, 3, 16, 16)
    together = [
        step.x0 for step in model.reverse_process(images, steps=3, eta=1.0, seed=7, ensemble=3, mc_dropout=False)
    ]
    repeated = images.repeat_interleave(3, dim=0)
    apart = [step.x0 for step in model.reverse_process(repeated, steps=3, eta=1.0, seed=7)]
    for a, b in zip(together, apart):
        torch.testing.assert_close(a, b)


def test_the_estimate_pass_of_training_reruns_the_head_only():
    model = tiny_model(mask_head_blocks=1)
    unet_calls, head_calls = count_calls(model.unet), count_calls(model.mask_head)
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    model.training_losses(images, masks, self_condition=True)["loss"].backward()
    assert unet_calls == [2] and head_calls == [2, 2]
    for part in (model.unet, model.mask_head):  # the loss reaches both the image branch and the head
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert model.unet.output is None  # the image branch ends in features, no unused output layer


def test_a_head_model_learns_a_batch(tmp_path):
    """Trained on two images, a head model segments them, and its checkpoint rebuilds the same model."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16)
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, 2:9, 3:12], masks[1, :, 8:15, 1:7] = 1, 1
    images = images * 0.3 + masks * 0.7  # the mask is visible in the image
    model = tiny_model(mask_head_blocks=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(images, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    out = model.segment(images, steps=5, seed=0)
    assert (out.mask == masks[:, 0].long()).float().mean() > 0.95
    path = save_checkpoint({"model_config": model.config.to_dict(), "model": model.state_dict()}, tmp_path / "m.pth")
    loaded = load_model(path)
    assert loaded.config.mask_head_blocks == 2
    torch.testing.assert_close(loaded.segment(images, steps=5, seed=0).probabilities, out.probabilities)


def test_new_models_have_a_head_old_checkpoints_none_and_bad_counts_are_refused():
    assert DiffusionConfig().mask_head_blocks == 2 and LEGACY_DEFAULTS["mask_head_blocks"] == 0
    legacy = {k: v for k, v in DiffusionConfig(**TINY).to_dict().items() if k != "mask_head_blocks"}
    assert DiffusionConfig.from_dict(legacy).mask_head_blocks == 0
    with pytest.raises(ValueError, match="mask_head_blocks"):
        DiffusionConfig(mask_head_blocks=-1)


def test_train_flag_sets_the_head():
    from src.training.cli import build_parser, configs_from_args

    parser = build_parser()
    _, config = configs_from_args(parser, parser.parse_args(["--synthetic", "--mask-head-blocks", "2"]))
    assert config.mask_head_blocks == 2


def test_an_ensemble_shares_one_encoding_by_default_and_encodes_each_sample_with_mc_dropout():
    model = tiny_model(mask_head_blocks=2, dropout=0.1).eval()
    unet_calls, head_calls = count_calls(model.unet), count_calls(model.mask_head)
    model.segment(torch.rand(3, 3, 16, 16), steps=4, ensemble=5, seed=0)
    assert unet_calls == [3] and head_calls == [15] * 4  # one encoding per image, the head per sample and step
    model.segment(torch.rand(3, 3, 16, 16), steps=4, ensemble=5, seed=0, mc_dropout=True)
    assert unet_calls[1:] == [15]  # each of the 3 x 5 samples its own dropout draw, in one pass


def test_mc_dropout_gives_each_sample_its_own_encoding_and_repeats_with_its_seed():
    model = tiny_model(mask_head_blocks=2, dropout=0.3).eval()
    with torch.no_grad():  # a new block's last convolution starts at zero, which would hide its dropout
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    images = torch.rand(2, 3, 16, 16)
    unet_calls = count_calls(model.unet)
    shared = model.member_conditioning(images, ensemble=3)
    torch.testing.assert_close(shared[0], shared[2])  # without MC dropout the samples share one encoding
    generator = torch.Generator().manual_seed(5)
    drawn = model.member_conditioning(images, 3, mc_dropout=True, generator=generator)
    assert unet_calls == [2, 6]  # one pass over the images, then one over each image's 3 samples
    assert drawn.shape == shared.shape
    assert not torch.allclose(drawn[0], drawn[1])  # two samples of image 0: two dropout draws
    assert all(not m.training for m in model.modules())  # dropout is off again afterwards
    again = model.member_conditioning(images, 3, mc_dropout=True, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(drawn, again)
    out = model.segment(images, steps=2, ensemble=3, seed=0, mc_dropout=True)
    torch.testing.assert_close(out.probabilities, model.segment(images, 2, 3, seed=0, mc_dropout=True).probabilities)
    assert out.ensemble_std.shape == (2, 16, 16)


def test_mc_dropout_leaves_the_callers_random_state_alone():
    model = tiny_model(mask_head_blocks=1, dropout=0.2).eval()
    images = torch.rand(1, 3, 16, 16)
    torch.manual_seed(3)
    model.member_conditioning(images, 2, mc_dropout=True, generator=torch.Generator().manual_seed(0))
    after = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(4), after)  # dropout drew from its own seed, not the caller's stream


@pytest.mark.parametrize("overrides", [dict(mask_head_blocks=2, dropout=0.0), dict(mask_head_blocks=0, dropout=0.1)])
def test_mc_dropout_is_refused_without_dropout_or_without_a_head(overrides):
    model = tiny_model(**overrides).eval()
    with pytest.raises(ValueError, match="MC dropout needs a model that encodes its image once"):
        model.segment(torch.rand(1, 3, 16, 16), steps=2, ensemble=2, seed=0, mc_dropout=True)


def test_a_context_head_starts_as_the_plain_head_and_then_sees_the_whole_estimate():
    from src.models.mask_head import MaskHead

    def head(global_context):
        torch.manual_seed(0)
        return MaskHead(2, 1, width=8, num_blocks=2, patch_size=2, global_context=global_context).eval()

    plain, context = head(False), head(True)
    masks, features, t = torch.zeros(1, 2, 64, 64), torch.randn(1, 8, 32, 32), torch.tensor([10])
    # the modules both have draw the same weights, and the context's way back starts at zero
    assert all(torch.equal(value, context.state_dict()[name]) for name, value in plain.state_dict().items())
    torch.testing.assert_close(context(masks, features, t), plain(masks, features, t))


def test_the_global_context_carries_a_change_in_one_corner_to_the_opposite_one():
    from src.models.mask_head import GlobalContext

    torch.manual_seed(0)
    context = GlobalContext(8).eval()
    h = torch.randn(1, 8, 32, 32)
    moved = h.clone()
    # the corner's values mirrored: every group's mean and variance stay the same, so GroupNorm
    # carries nothing to the far corner, and the strided convolutions reach 10 positions at most
    moved[..., :8, :8] = h[..., :8, :8].flip(-1)

    def far_change():
        return (context(moved) - context(h))[..., -8:, -8:].abs().max()

    torch.nn.init.normal_(context.up.weight)
    assert far_change() < 1e-5  # the attention's way out still at zero: local only
    torch.nn.init.normal_(context.attention.to_out.weight)  # as training makes it
    assert far_change() > 1e-2


def test_the_context_head_is_a_flag_and_older_checkpoints_have_none():
    from src.training.cli import build_parser, configs_from_args

    assert DiffusionConfig().mask_head_context is False and LEGACY_DEFAULTS["mask_head_context"] is False
    parser = build_parser()
    _, config = configs_from_args(parser, parser.parse_args(["--synthetic", "--mask-head-context"]))
    assert config.mask_head_context is True
    model = tiny_model(mask_head_blocks=2, mask_head_context=True).eval()
    images = torch.rand(2, 3, 32, 32)
    assert model.segment(images, steps=3, ensemble=2, seed=0).probabilities.shape == (2, 1, 32, 32)
