"""A bf16 copy of the weights for the forward and backward pass; fp32 master weights for the
optimizer, the EMA, gradient clipping and checkpoints.

Under autocast each convolution and linear layer casts its fp32 weight (and bias) to bf16 at its
first use in a step (autocast caches the cast until the context exits), and the backward casts
each weight gradient back: one copy kernel per tensor each way, plus autocast's cast dispatch and
cache lookup on every call. Here the forward cast is a single `torch._foreach_copy_` over all
weights when the wrapper is called (once per optimizer step), the layers find their weights
already in bf16, and each gradient is cast back into the master's `.grad` as soon as autograd has
accumulated it. The bytes cast are the same, so the gain is small (BENCHMARKS.md, issue 14).
"""

from functools import partial

import torch
from torch import nn
from torch.func import functional_call


class LowPrecisionWeights:
    """Calls `model` with bf16 (or `dtype`) copies of its floating-point parameters.

    The model keeps its fp32 parameters (so `model.state_dict()`, the optimizer and the EMA see
    fp32 values); the copies are refreshed from them at every call, so they are never more than
    one optimizer step behind, and after `loss.backward()` every master has its gradient in its
    own dtype. Buffers (the noise schedule) are not touched. Use inside the runtime's autocast:
    activations still need casting, weights no longer do.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.model = model
        named = [(name, p) for name, p in model.named_parameters() if p.is_floating_point()]
        self.names = [name for name, _ in named]
        self.masters = [p for _, p in named]
        self.copies = [p.detach().to(dtype).requires_grad_(p.requires_grad) for p in self.masters]
        for master, copy in zip(self.masters, self.copies):
            if copy.requires_grad:
                copy.register_post_accumulate_grad_hook(partial(_hand_gradient_to, master))

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the master weights into the low-precision copies (one fused kernel launch)."""
        torch._foreach_copy_(self.copies, self.masters)

    def __call__(self, *args, **kwargs):
        self.refresh()
        return functional_call(self.model, dict(zip(self.names, self.copies)), args, kwargs, strict=False)


def _hand_gradient_to(master: torch.Tensor, copy: torch.Tensor) -> None:
    """Backward hook of a copy: move its (bf16) gradient into the master's .grad, in fp32."""
    gradient = copy.grad.to(master.dtype)
    if master.grad is None:
        master.grad = gradient
    else:  # gradient accumulation over several calls before one optimizer step
        master.grad.add_(gradient)
    copy.grad = None
