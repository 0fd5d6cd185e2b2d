"""Learning rate: linear warm-up, then cosine decay to `min_ratio` of the base rate.

The cosine follows whichever budget binds first: the planned optimizer steps, or, when a run has
a wall-clock budget, the share of that budget already spent. A `--max-minutes` run thus ends
annealed whatever the machine's speed or load, instead of stopping mid-schedule at its peak rate.
"""

import math
from dataclasses import dataclass


def learning_rate(
    step: int, base_lr: float, total_steps: int, warmup_steps: int, min_ratio: float = 0.05, time_fraction: float = 0.0
) -> float:
    """lr for optimizer step `step` (0-based) of `total_steps`; `time_fraction` is the share of a
    wall-clock budget spent so far (0 without one): the decay follows the further of the two."""
    warmup_steps = min(warmup_steps, max(total_steps // 10, 1))
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, max((step - warmup_steps) / max(1, total_steps - warmup_steps), time_fraction))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class LearningRateSchedule:
    """`schedule(step, elapsed_seconds)` -> lr, for a run of `total_steps` planned optimizer steps
    and an optional wall-clock budget of `budget_seconds` (elapsed_seconds counts training time
    only, carried across resumes)."""

    base_lr: float
    total_steps: int
    warmup_steps: int
    budget_seconds: float | None = None
    min_ratio: float = 0.05

    def __call__(self, step: int, elapsed_seconds: float = 0.0) -> float:
        time_fraction = elapsed_seconds / self.budget_seconds if self.budget_seconds else 0.0
        return learning_rate(step, self.base_lr, self.total_steps, self.warmup_steps, self.min_ratio, time_fraction)
