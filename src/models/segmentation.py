"""From reverse-process steps to a segmentation: ensemble and time-ensemble means, hard mask, uncertainty."""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass
class SegmentationOutput:
    """probabilities: (B, K, H, W) mean over the ensemble; mask: (B, H, W) int64 (0/1 or class ids);
    uncertainty: (B, H, W) predictive entropy of `probabilities`, in [0, 1] (0: certain, 1: p = 0.5,
    or all K classes equally likely); ensemble_std: (B, H, W) per-pixel std of the samples'
    probabilities (0 with one sample), None where not computed."""

    probabilities: torch.Tensor
    mask: torch.Tensor
    uncertainty: torch.Tensor
    ensemble_std: torch.Tensor | None = None


PROB_FLOOR = 1e-6  # entropies of p = 0 or 1 are 0; the floor keeps the logs finite there


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -p log2 p - (1-p) log2 (1-p) of probabilities of any shape, in bits (1 at p = 0.5, 0 at p = 0 or 1)."""
    p = p.float().clamp(PROB_FLOOR, 1 - PROB_FLOOR)
    return -(p * p.log2() + (1 - p) * (1 - p).log2())


def predictive_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) probabilities -> (B, H, W) entropy in [0, 1]: binary entropy in bits for K = 1
    (the foreground probability), else the entropy over the K classes divided by log K.

    Why this and not the std over samples: each sample's probability is already a mean over its
    steps' estimates (time-ensembling), so the mean probability carries the model's doubt even for
    one sample, where a std is 0; on images held out of the training split it ranks error pixels
    better than the std (BENCHMARKS.md, "Uncertainty maps (issue 11)")."""
    if probabilities.shape[1] == 1:
        return binary_entropy(probabilities)[:, 0]
    p = probabilities.float().clamp(PROB_FLOOR, 1 - PROB_FLOOR)
    return -(p * p.log()).sum(dim=1) / math.log(p.shape[1])


class SegmentationRun:
    """One segment() call over a batch whose rows are `ensemble` consecutive copies of each image.

    Iterating it runs the reverse process and yields its steps (t, x_t, x0), rows as sampled, while
    it keeps the running mean of the estimates; `output()` then turns the last step (or, with
    `time_ensemble`, that mean) into a SegmentationOutput, and `run()` does both at once.
    """

    def __init__(
        self,
        steps: Iterator,
        batch: int,
        ensemble: int,
        to_probabilities: Callable,
        input_scale: float,
        time_ensemble: bool,
        threshold: float,
    ):
        self.steps, self.batch, self.ensemble = steps, batch, ensemble
        self.to_probabilities, self.input_scale = to_probabilities, input_scale
        self.time_ensemble, self.threshold = time_ensemble, threshold
        self.x0_sum, self.probability_sum, self.count, self.last_x_t = 0.0, 0.0, 0, None

    def __iter__(self):
        for step in self.steps:
            self.x0_sum, self.count, self.last_x_t = self.x0_sum + step.x0, self.count + 1, step.x_t
            if self.time_ensemble:
                self.probability_sum = self.probability_sum + self.to_probabilities(step.x0)
            yield step

    @property
    def mean_x0(self) -> torch.Tensor:
        """The mean of the x0 estimates of the steps run so far, (B * ensemble, K, H, W) in [-1, 1]."""
        return self.x0_sum / self.count

    def run(self) -> SegmentationOutput:
        for _ in self:
            pass
        return self.output()

    def output(self) -> SegmentationOutput:
        if self.count == 0:
            raise RuntimeError("the reverse process has not run: iterate the SegmentationRun first")
        if self.time_ensemble:
            probs = self.probability_sum / self.count
        else:
            probs = self.to_probabilities(self.last_x_t / self.input_scale)
        probs = probs.reshape(self.batch, self.ensemble, *probs.shape[1:])
        mean_probs = probs.mean(dim=1)
        if mean_probs.shape[1] == 1:
            mask = (mean_probs[:, 0] > self.threshold).long()
        else:
            mask = mean_probs.argmax(dim=1)
        return SegmentationOutput(
            probabilities=mean_probs,
            mask=mask,
            uncertainty=predictive_entropy(mean_probs),
            ensemble_std=probs.std(dim=1, unbiased=False).mean(dim=1),
        )
