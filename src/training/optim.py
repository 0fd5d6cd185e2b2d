"""The optimizer of the training recipe, built in one place for train.py and the benchmarks'
baselines, so a comparison gives every model exactly the same AdamW."""

import torch

from src.device import Runtime


def build_optimizer(parameters, lr: float, weight_decay: float, runtime: Runtime) -> torch.optim.Optimizer:
    """AdamW with the given decoupled weight decay; the fused kernel where the runtime has one."""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=runtime.fused_optimizer)
