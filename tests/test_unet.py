"""UNet and blocks: shapes for any channel count and size, clear size errors, attention placement."""

import pytest
import torch

from src.models.blocks import ConvStem, ResnetBlock, SelfAttention, SinusoidalTimeEmbedding
from src.models.unet import UNet


def tiny_unet(**overrides) -> UNet:
    kwargs = dict(
        in_channels=4,
        out_channels=1,
        base_channels=8,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        num_heads=2,
    )
    return UNet(**{**kwargs, **overrides})


@pytest.mark.parametrize("in_channels, out_channels", [(4, 1), (2, 1), (5, 3), (7, 5)])
@pytest.mark.parametrize("size", [(16, 16), (8, 24), (32, 12)])
def test_output_shape_for_any_channels_and_non_square_sizes(in_channels, out_channels, size):
    net = tiny_unet(in_channels=in_channels, out_channels=out_channels)
    out = net(torch.randn(2, in_channels, *size), torch.tensor([0, 999]))
    assert out.shape == (2, out_channels, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(15, 16), (16, 18), (6, 8)])
def test_size_not_divisible_by_downsampling_gives_clear_error(size):
    net = tiny_unet()  # 3 levels -> multiple of 4
    with pytest.raises(ValueError, match=rf"image size {size[0]}x{size[1]} is not divisible by 4"):
        net(torch.randn(1, 4, *size), torch.tensor([1]))


def test_attention_only_at_requested_resolutions_and_middle():
    net = tiny_unet(attention_resolutions=(2,))
    down_attention = [isinstance(level["attention"], SelfAttention) for level in net.down_levels]
    assert down_attention == [False, True, False]
    assert isinstance(net.mid_attention, SelfAttention)


def test_time_embedding_distinguishes_timesteps():
    emb = SinusoidalTimeEmbedding(16)(torch.tensor([0, 1, 500]))
    assert emb.shape == (3, 16)
    assert emb[0, :8].abs().max() == 0 and torch.allclose(emb[0, 8:], torch.ones(8))
    assert not torch.allclose(emb[1], emb[2])


def test_resnet_block_uses_time_embedding():
    block = ResnetBlock(8, 16, time_dim=12)
    torch.nn.init.normal_(block.conv2.weight)  # undo the identity init so the time path is visible
    x = torch.randn(1, 8, 4, 4)
    a = block(x, torch.zeros(1, 12))
    b = block(x, torch.ones(1, 12))
    assert a.shape == (1, 16, 4, 4) and not torch.allclose(a, b)


def test_self_attention_mixes_all_positions():
    attention = SelfAttention(8, num_heads=2)
    torch.nn.init.normal_(attention.to_out.weight)
    x = torch.randn(1, 8, 4, 4)
    y = x.clone()
    y[..., 0, 0] += 1.0  # change one position: every output position should move
    delta = (attention(x) - attention(y)).abs().sum(1)
    assert (delta[0, 1:, 1:] > 0).all()


def test_channels_last_gives_same_output():
    net = tiny_unet().eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([3, 700])
    reference = net(x, t)
    net = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x.to(memory_format=torch.channels_last), t), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(16, 16), (8, 24)])
def test_patch_size_keeps_output_at_input_resolution(size):
    net = tiny_unet(in_channels=5, out_channels=3, channel_mults=(1, 2), attention_resolutions=(2,), patch_size=2)
    out = net(torch.randn(2, 5, *size), torch.tensor([3, 700]))
    assert out.shape == (2, 3, *size) and torch.isfinite(out).all()


def test_patch_size_runs_the_first_level_at_a_fraction_of_the_resolution():
    seen = []
    net = tiny_unet(patch_size=2)
    net.down_levels[0]["blocks"][0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    net(torch.randn(1, 4, 16, 16), torch.tensor([1]))
    assert seen == [(1, 8, 8, 8)]


def test_patch_size_counts_in_the_size_error():
    net = tiny_unet(patch_size=2)  # 2 x 2^2 -> multiple of 8
    with pytest.raises(ValueError, match=r"image size 12x16 is not divisible by 8 \(patch size 2"):
        net(torch.randn(1, 4, 12, 16), torch.tensor([1]))


# -- the convolutional stem beside the patch fold ---------------------------------------------------


def test_conv_stem_reaches_the_first_level_at_its_resolution_and_starts_as_a_no_op():
    torch.manual_seed(0)
    plain = tiny_unet(patch_size=4)
    torch.manual_seed(0)
    stemmed = tiny_unet(patch_size=4, stem_channels=6)
    stemmed.load_state_dict(plain.state_dict(), strict=False)  # every shared weight equal
    x, t = torch.randn(2, 4, 32, 16), torch.tensor([3, 700])
    assert stemmed.stem(x).shape == (2, 8, 8, 4)  # base channels at 1/4 resolution
    torch.testing.assert_close(stemmed(x, t), plain(x, t), rtol=0, atol=0)  # zero-initialised last conv


def test_conv_stem_learns_detail_the_fold_alone_cannot_see():
    """Once trained away from zero, the stem changes the output, and its gradient reaches its
    first convolution (the full-resolution one) through the nonlinearity."""
    stemmed = tiny_unet(patch_size=4, stem_channels=6)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([3, 700])
    stemmed(x, t).square().mean().backward()
    first, last = stemmed.stem.layers[0], stemmed.stem.layers[-1]
    assert first.stride == (2, 2) and first.in_channels == 4 and first.out_channels == 6
    assert last.weight.grad.abs().sum() > 0 and first.weight.grad.abs().sum() == 0  # zero last conv: none yet
    before = stemmed(x, t).detach()
    with torch.no_grad():
        last.weight.normal_(std=0.1)
    stemmed.zero_grad()
    stemmed(x, t).square().mean().backward()
    assert first.weight.grad.abs().sum() > 0 and not torch.allclose(stemmed(x, t), before)


@pytest.mark.parametrize("patch_size", [1, 3, 6])
def test_conv_stem_needs_a_power_of_2_patch(patch_size):
    with pytest.raises(ValueError, match=f"power of 2 .*got {patch_size}"):
        ConvStem(4, 8, 6, patch_size)


# -- extra encoder blocks (depth at low resolution, no skip of their own) --------------------------


def test_extra_encoder_blocks_name_the_deepest_levels_and_add_no_skip():
    from src.models.unet import per_level_counts

    assert per_level_counts((1, 2), 4) == (0, 0, 1, 2)
    assert per_level_counts((), 3) == (0, 0, 0)
    plain, deep = tiny_unet(), tiny_unet(extra_encoder_blocks=(2,))  # two more at the deepest of 3 levels
    assert [len(level["extra_blocks"]) for level in deep.down_levels] == [0, 0, 2]
    assert all(len(level["extra_blocks"]) == 0 for level in plain.down_levels)
    # the decoder is unchanged: as many blocks, reading skips of the same widths
    assert [len(level["blocks"]) for level in deep.up_levels] == [len(level["blocks"]) for level in plain.up_levels]
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([3, 700])
    assert deep(x, t).shape == (2, 1, 16, 16)


def test_a_unet_without_extra_blocks_has_the_state_dict_of_one_built_before_them():
    """The empty per-level lists hold no parameters, so checkpoints saved before load strictly."""
    keys = tiny_unet().state_dict().keys()
    assert not any("extra_blocks" in key for key in keys)
    assert any("extra_blocks" in key for key in tiny_unet(extra_encoder_blocks=(1,)).state_dict())


@pytest.mark.parametrize("counts", [(1, 1, 1, 1), (-1,)])
def test_extra_encoder_blocks_beyond_the_levels_or_negative_are_refused(counts):
    with pytest.raises(ValueError, match=r"must be >= 0, at most one count per level \(3 levels\)"):
        tiny_unet(extra_encoder_blocks=counts)
