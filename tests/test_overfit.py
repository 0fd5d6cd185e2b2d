"""A tiny model must be able to memorise one small batch: the end-to-end learning signal works."""

import numpy as np
import torch

from src.models import DiffusionConfig, DiffusionSegmentation
from utils.synthetic import make_synthetic_pair


def dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    pred, truth = pred.bool(), truth.bool()
    return (2 * (pred & truth).sum() / (pred.sum() + truth.sum()).clamp(min=1)).item()


def test_tiny_model_overfits_one_batch_to_dice_above_0_9():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pairs = [make_synthetic_pair(rng, (32, 32)) for _ in range(4)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs]))
    masks = torch.from_numpy(np.stack([p[1] for p in pairs]))

    config = DiffusionConfig(
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(2,),
        num_heads=2,
        timesteps=1000,
        prediction_type="x0",
        dice_weight=1.0,
    )
    model = DiffusionSegmentation(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)  # speed is a benchmark's business, not this test's
    for _ in range(300):
        loss = model(images, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    result = model.segment(images, steps=10, seed=0)
    scores = [dice(result.mask[i], masks[i, 0]) for i in range(len(images))]
    assert min(scores) > 0.9, scores
