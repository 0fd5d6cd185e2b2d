"""Learning rate: linear warm-up, then cosine decay to `min_ratio` of the base rate."""

import math


def learning_rate(step: int, base_lr: float, total_steps: int, warmup_steps: int, min_ratio: float = 0.05) -> float:
    """lr for optimizer step `step` (0-based) of `total_steps`."""
    warmup_steps = min(warmup_steps, max(total_steps // 10, 1))
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
