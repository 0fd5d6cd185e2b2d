"""The one place that decides device, precision and memory layout.

Everything else asks for a `Runtime` and uses `runtime.autocast()`, `runtime.prepare_model()` and
`runtime.to_device()`; no other module branches on the kind of device.
"""

import contextlib
import functools
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix units (AMX or AVX512-BF16).

    Without them bf16 autocast on CPU is emulated and slower than fp32, so `auto` keeps fp32.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu; anything else is passed to torch.device and checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available on this machine")
    return device


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """'auto' -> bf16 where the hardware runs it natively, else fp32. fp16 is CUDA only."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (on CPU use bf16 or fp32)")
    return precision


@dataclass(frozen=True)
class Runtime:
    """Device, autocast dtype and memory format, chosen once."""

    device: torch.device
    precision: str  # "bf16", "fp16" or "fp32"
    channels_last: bool = True

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.precision]

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.precision == "fp16"

    @property
    def fused_optimizer(self) -> bool:
        """AdamW's fused kernel exists for CPU and CUDA: one pass over each parameter instead of the
        default loop's several element-wise kernels (BENCHMARKS.md, "Speed" for the step times)."""
        return self.device.type in ("cpu", "cuda")

    @property
    def low_precision_weights(self) -> bool:
        """Whether training runs on a bf16 copy of the weights made once per step
        (src/training/low_precision.py) instead of letting autocast cast each layer's weight. The
        same bytes are cast either way (autocast caches a cast for the step); the copy does it in
        one fused kernel and spares autocast's per-call dispatch, a small gain on CPUs (BENCHMARKS.md,
        issue 14). CUDA keeps autocast: not measured there."""
        return self.device.type == "cpu" and self.precision == "bf16"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def prepare_inference_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """prepare_model for a model that only runs forward (in place, as prepare_model): eval mode,
        no gradients, channels_last, and the parameters stored in the autocast dtype.

        channels_last on every device: what keeps CPU training contiguous is GroupNorm's backward,
        and inference has none, while oneDNN's bf16 convolutions run natively on NHWC. The weights
        in bf16: autocast casts an fp32 weight at every call unless the weight requires grad (only
        then is the cast cached), so a sampler would recast every weight at every step. Buffers (the
        noise schedule) keep their precision."""
        model = self.prepare_model(model).eval().requires_grad_(False).to(memory_format=torch.channels_last)
        if self.amp_dtype is not None:
            for parameter in model.parameters():
                parameter.data = parameter.data.to(self.amp_dtype)
        return model

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous"
        return f"{self.device} {self.precision} {layout}"


def select_runtime(device: str = "auto", precision: str = "auto", channels_last: bool | None = None) -> Runtime:
    """channels_last None = auto: on for CUDA; off on CPU for training, where GroupNorm's backward
    on channels_last bf16 tensors has no fast kernel and costs more than the convolutions gain
    (BENCHMARKS.md, "Speed on the CPU (issue 14)")."""
    resolved = resolve_device(device)
    if channels_last is None:
        channels_last = resolved.type == "cuda"
    return Runtime(resolved, resolve_precision(resolved, precision), channels_last)
