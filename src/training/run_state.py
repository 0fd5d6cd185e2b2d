"""What a training checkpoint holds, and how a run is put back from it.

last.pth / best.pth hold everything an exact resume needs (weights, EMA, optimizer, scaler, the
schedule's step and clock, the position in the epoch, history, RNG states, config and data
split); checkpoint_epoch_N.pth holds what inference needs (config and EMA weights).
"""

from dataclasses import dataclass, field

import torch

from src.checkpoint import CheckpointError
from src.training.rng import capture_rng_state


@dataclass
class Progress:
    """Where the run is: saved in every checkpoint."""

    epoch: int = 0  # the epoch being trained (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already trained
    step: int = 0  # optimizer steps over the whole run
    best_val_dice: float | None = None
    history: list = field(default_factory=list)
    epoch_loss_sum: float = 0.0  # over the batches of `epoch` trained so far, so a resumed epoch's mean is exact
    elapsed_seconds: float = 0.0  # wall-clock time of the run so far, over all its resumes (--max-minutes counts it)
    # the state of the data loader's own generator (its shuffle, its workers' seeds) as `epoch` began;
    # None when the loader has none (its order then comes from the per-epoch seeding)
    loader_rng: torch.Tensor | None = None


def resumable_state(trainer) -> dict:
    """The full state of a _Trainer, for --resume."""
    progress = trainer.progress
    return {
        "model_config": trainer.model.config.to_dict(),
        "model": trainer.model.state_dict(),
        "ema": trainer.ema.model.state_dict(),
        "ema_updates": trainer.ema.num_updates,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": {
            "step": progress.step,
            "total_steps": trainer.total_steps,
            "elapsed_seconds": progress.elapsed_seconds,
        },
        "scaler": trainer.scaler.state_dict(),
        "epoch": progress.epoch,
        "batch_in_epoch": progress.batch_in_epoch,
        "step": progress.step,
        "best_val_dice": progress.best_val_dice,
        "epoch_loss_sum": progress.epoch_loss_sum,
        "history": progress.history,
        "rng": capture_rng_state(),
        "loader_rng": progress.loader_rng,
        "train_config": trainer.config.to_dict(),
        "data_split": trainer.data.split,
    }


def weights_state(trainer) -> dict:
    """Inference only: config and EMA weights (as "model"), no raw weights, no optimizer moments;
    `resumable` False."""
    return {
        "model_config": trainer.model.config.to_dict(),
        "model": trainer.ema.model.state_dict(),
        "weights": "ema",
        "resumable": False,
        "epoch": trainer.progress.epoch,
        "step": trainer.progress.step,
        "train_config": trainer.config.to_dict(),
    }


def restore_state(trainer, state: dict) -> None:
    """Put a _Trainer back where `state` (resumable_state) left it; CheckpointError if it cannot."""
    try:
        trainer.model.load_state_dict(state["model"])
        trainer.ema.model.load_state_dict(state["ema"])
        trainer.ema.num_updates = int(state.get("ema_updates", 0))
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scaler.load_state_dict(state["scaler"])
        progress = trainer.progress
        progress.epoch, progress.batch_in_epoch, progress.step = (
            int(state["epoch"]),
            int(state["batch_in_epoch"]),
            int(state["step"]),
        )
        progress.best_val_dice = state.get("best_val_dice")
        progress.history = list(state.get("history", []))
        progress.epoch_loss_sum = float(state.get("epoch_loss_sum", 0.0))
        progress.elapsed_seconds = float(state.get("scheduler", {}).get("elapsed_seconds", 0.0))
        trainer.resume_rng = state["rng"]
        # None in a checkpoint from before it was saved: the trainer then replays the past epochs' draws
        progress.loader_rng = state.get("loader_rng")
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(
            f"{trainer.config.resume}: cannot resume from it: {str(error).splitlines()[0][:200]}"
        ) from None
