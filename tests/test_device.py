"""The device/precision helper: the one place that decides where and how the model runs."""

import pytest
import torch

from src.device import Runtime, cpu_supports_bf16, resolve_precision, select_runtime


def test_auto_on_cpu_uses_bf16_only_with_native_support():
    runtime = select_runtime("cpu", "auto")
    assert runtime.device == torch.device("cpu")
    assert runtime.precision == ("bf16" if cpu_supports_bf16() else "fp32")
    assert runtime.channels_last is False  # slow GroupNorm backward on CPU channels_last


def test_explicit_precisions_and_errors():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "fp32") == "fp32"
    assert resolve_precision(cpu, "bf16") == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision(cpu, "fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision(cpu, "int8")


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_runtime("cuda")


def test_autocast_runs_matmul_in_the_chosen_dtype():
    a = torch.randn(4, 4)
    with Runtime(torch.device("cpu"), "bf16").autocast():
        assert (a @ a).dtype == torch.bfloat16
    with Runtime(torch.device("cpu"), "fp32").autocast():
        assert (a @ a).dtype == torch.float32


def test_prepare_model_applies_memory_format():
    conv = torch.nn.Conv2d(3, 8, 3)
    Runtime(torch.device("cpu"), "fp32", channels_last=True).prepare_model(conv)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_fused_optimizer_only_where_the_kernel_exists():
    assert select_runtime("cpu", "fp32").fused_optimizer
    assert not Runtime(torch.device("meta"), "fp32").fused_optimizer


def test_inference_model_stores_weights_in_the_autocast_dtype_and_agrees_with_fp32_weights():
    from tests.helpers import tiny_model

    reference = tiny_model().eval()
    runtime = Runtime(torch.device("cpu"), "bf16")
    model = runtime.prepare_inference_model(tiny_model())
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in model.parameters())
    assert (
        model.process.alphas_cumprod.dtype == reference.process.alphas_cumprod.dtype
    )  # the schedule keeps its precision
    images = torch.rand(2, 3, 16, 16)
    with torch.inference_mode(), runtime.autocast():
        fast = model.segment(images, steps=4, seed=0)
        cast_per_call = reference.segment(images, steps=4, seed=0)
    assert (fast.probabilities - cast_per_call.probabilities).abs().max() < 0.05
    assert (fast.mask == cast_per_call.mask).float().mean() > 0.95
    fp32_model = Runtime(torch.device("cpu"), "fp32").prepare_inference_model(tiny_model())
    assert all(p.dtype == torch.float32 for p in fp32_model.parameters())
