"""The training loop: AdamW with warm-up + cosine lr, autocast, EMA, validation Dice, exact resume.

`train(TrainConfig, DiffusionConfig)` runs everything; `train.py` only turns flags into these two.
Files in `output_dir`: last.pth (every epoch, and when a budget or a signal stops the run: the
full resumable state), best.pth (highest validation Dice), checkpoint_epoch_N.pth (every
`save_every` epochs and the last one: the EMA weights and config only, what inference needs),
history.json, training_curves.png and val_predictions.png after each validation.
The folder is claimed first (src/training/run_folder.py): no run starts over another's files.
SIGTERM/SIGINT save last.pth after the current step and raise Interrupted (src/training/interrupt.py).
"""

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from src.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from src.device import select_runtime
from src.models import DiffusionConfig, DiffusionSegmentation
from src.training.config import TrainConfig
from src.training.data import build_training_data
from src.training.distributed import cleanup_distributed, distributed_device, setup_distributed
from src.training.ema import EMA
from src.training.interrupt import Interrupted, StopSignals
from src.training.low_precision import LowPrecisionWeights
from src.training.lr_schedule import LearningRateSchedule
from src.training.optim import build_optimizer
from src.training.rng import epoch_seed, restore_rng_state, seed_everything
from src.training.run_folder import RunFolderError, check_writable, claim_output_dir
from src.training.run_state import Progress, restore_state, resumable_state, weights_state
from src.training.tracking import NullTracker, WandbTracker
from src.training.validation import evaluate
from utils.sample_keys import SampleKeySampler


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad resume); the message says why."""


@dataclass
class TrainResult:
    output_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_val_dice: float | None
    history: list = field(default_factory=list)
    steps: int = 0
    stopped_early: bool = False
    model: DiffusionSegmentation | None = None  # the EMA model, in eval mode


def train(config: TrainConfig, model_config: DiffusionConfig | None = None) -> TrainResult:
    """Train (or resume, with config.resume) and return where the results went."""
    resume_state = load_checkpoint(config.resume) if config.resume else None
    if resume_state is not None:
        if resume_state.get("resumable") is False:
            raise CheckpointError(
                f"{config.resume}: holds the weights for inference only (a periodic checkpoint); "
                f"resume from last.pth of the same run"
            )
        model_config = DiffusionConfig.from_dict(dict(resume_state["model_config"]))
    model_config = model_config or DiffusionConfig()

    context = setup_distributed(config.device)
    trainer = None
    try:
        with (
            StopSignals() as signals,
            claim_output_dir(
                config.output_dir, resume=bool(config.resume), overwrite=config.overwrite, enabled=context.is_main
            ),
        ):
            try:
                trainer = _Trainer(config, model_config, context, resume_state, signals)
                return trainer.run()
            except KeyboardInterrupt:  # a signal before the loop, or a second one: stop now
                saved = trainer.last_saved if trainer is not None else (None, None)
                raise Interrupted(signals.signum or signal.SIGINT, *saved) from None
    except RunFolderError as error:
        raise TrainingError(str(error)) from None
    finally:
        cleanup_distributed(context)


class _Trainer:
    def __init__(self, config: TrainConfig, model_config: DiffusionConfig, context, resume_state, signals=None):
        self.config = config
        self.signals = signals or StopSignals()
        self.last_saved = (None, None)  # (path of last.pth written by this run, its step)
        self.context = context
        self.output_dir = Path(config.output_dir)
        self.runtime = select_runtime(distributed_device(context, config.device), config.precision)
        seed_everything(config.seed)  # the same initial weights on every rank and every run

        self.model = self.runtime.prepare_model(DiffusionSegmentation(model_config))
        self.ema = EMA(self.model, config.ema_decay)
        if config.compile:
            self.model.unet.compile()
        self.train_model = self.model
        if context.enabled:
            device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        elif self.runtime.low_precision_weights:  # fp32 masters stay in self.model (optimizer, EMA, checkpoints)
            self.train_model = LowPrecisionWeights(self.model, self.runtime.amp_dtype)
        self.optimizer = build_optimizer(self.model.parameters(), config.lr, config.weight_decay, self.runtime)
        self.scaler = torch.amp.GradScaler(self.runtime.device.type, enabled=self.runtime.needs_grad_scaler)

        self.data = build_training_data(config, model_config, context.world_size)
        self.steps_per_epoch = len(self.data.train_loader)
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"no training batches: {len(self.data.train_loader.dataset)} samples, batch size {config.batch_size}"
            )
        self.total_steps = config.epochs * self.steps_per_epoch
        budget_seconds = config.max_minutes * 60 if config.max_minutes else None
        self.lr_schedule = LearningRateSchedule(config.lr, self.total_steps, config.warmup_steps, budget_seconds)
        self.progress = Progress()
        self.resume_rng = None
        if resume_state is not None:
            self._restore(resume_state)
        self.tracker = NullTracker()
        if config.wandb and context.is_main:
            self.tracker = WandbTracker(
                config.wandb_project, {**config.to_dict(), **model_config.to_dict()}, self.output_dir
            )

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        config, progress = self.config, self.progress
        if self.context.is_main:
            check_writable(self.output_dir)
            params = sum(p.numel() for p in self.model.parameters())
            print(
                f"training on {self.runtime.describe()} x{self.context.world_size}: {params / 1e6:.2f}M parameters, "
                f"{len(self.data.train_loader.dataset)} train / {len(self.data.val_dataset or [])} val samples, "
                f"{self.steps_per_epoch} steps per epoch"
            )
            for note in self.data.notes:
                print(note)
        self.start_time = time.monotonic() - progress.elapsed_seconds  # a resumed run's clock goes on
        stopped_early = False
        last_path = None
        self.signals.deferring = True  # from here a signal stops the run cleanly after the current step
        try:
            while progress.epoch < config.epochs and not stopped_early:
                epoch_loss, stopped_early = self._train_epoch()
                if stopped_early:
                    last_path = self._save("last.pth")
                    if self.stop_signal is not None:
                        raise Interrupted(self.stop_signal, last_path, progress.step)
                    break
                progress.epoch += 1
                progress.batch_in_epoch = 0
                self._end_of_epoch(epoch_loss)
                last_path = self.output_dir / "last.pth"
        finally:
            self.signals.deferring = False
            self.tracker.finish()
        if self.context.is_main and stopped_early:
            print(
                f"stopped by budget at step {progress.step} (epoch {progress.epoch + 1}); "
                f"resume with --resume {last_path}"
            )
        best = self.output_dir / "best.pth"
        return TrainResult(
            output_dir=self.output_dir,
            last_checkpoint=last_path,
            best_checkpoint=best if best.exists() else None,
            best_val_dice=progress.best_val_dice,
            history=progress.history,
            steps=progress.step,
            stopped_early=stopped_early,
            model=self.ema.model,
        )

    def _train_epoch(self):
        """Train the rest of the current epoch; returns (mean loss, whether a budget stopped it)."""
        config, progress, loader = self.config, self.progress, self.data.train_loader
        if self.resume_rng is not None:  # the first epoch of a resumed run (before the seeding: a replay draws)
            self._restore_loader_generator()
        if loader.generator is not None:
            progress.loader_rng = loader.generator.get_state()
        seed_everything(epoch_seed(config.seed, progress.epoch, self.context.rank))
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(progress.epoch)
        skipped = 0
        if progress.batch_in_epoch and isinstance(loader.sampler, SampleKeySampler):
            # with workers the keys are a function of the epoch: start past the trained batches
            skipped = progress.batch_in_epoch
            loader.sampler.skip_next(skipped * loader.batch_size)
        batches = iter(loader)
        if progress.batch_in_epoch:  # resumed mid-epoch: replay the shuffle, then the saved RNG
            for _ in range(progress.batch_in_epoch - skipped):
                next(batches)
            # the state saved after those batches: the next augmentation and noise draws match
            restore_rng_state(self.resume_rng)
        self.resume_rng = None
        if self._budget_reached():  # e.g. resumed with the budget already spent
            return None, True

        self.model.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=progress.batch_in_epoch,
            desc=f"epoch {progress.epoch + 1}/{config.epochs}",
            disable=not (config.progress and self.context.is_main),
            dynamic_ncols=True,
            leave=False,
        )
        seen, epoch_start = 0, time.monotonic()
        if progress.batch_in_epoch == 0:
            progress.epoch_loss_sum = 0.0
        for images, masks in batches:
            loss = self._train_step(images, masks)
            progress.epoch_loss_sum += loss
            seen += images.shape[0] * self.context.world_size
            progress.batch_in_epoch += 1
            images_per_second = seen / max(time.monotonic() - epoch_start, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.1f}")
            bar.update(1)
            if self._signalled() or self._budget_reached():
                bar.close()
                return None, True
        bar.close()
        self.last_images_per_second = seen / max(time.monotonic() - epoch_start, 1e-9)
        return progress.epoch_loss_sum / progress.batch_in_epoch, False

    def _restore_loader_generator(self) -> None:
        """The loader's own generator where an uninterrupted run has it as this epoch begins: the
        per-epoch seeding does not reach it, and each epoch draws its shuffle and its workers' seeds
        from it, so a fresh one would repeat epoch 1's order."""
        loader, progress = self.data.train_loader, self.progress
        if loader.generator is None:
            return
        if progress.loader_rng is not None:
            loader.generator.set_state(progress.loader_rng)
            return
        if isinstance(loader.sampler, SampleKeySampler):
            return  # with workers the order is a function of the epoch: the generator only seeds workers
        # a checkpoint from before the state was saved: draw what each past epoch drew (without
        # workers: the base seed, then the sampler's shuffle and its empty remainder), indexing a
        # range through the same batch sampler instead of loading the data
        shadow = DataLoader(range(len(loader.dataset)), batch_sampler=loader.batch_sampler, generator=loader.generator)
        for _ in range(progress.epoch):
            for _ in shadow:
                pass

    def _train_step(self, images: torch.Tensor, masks: torch.Tensor) -> float:
        config, progress = self.config, self.progress
        elapsed = 0.0
        if self.lr_schedule.budget_seconds:  # ranks must agree on the lr: one clock for all of them
            elapsed = self.context.mean(time.monotonic() - self.start_time)
        lr = self.lr_schedule(progress.step, elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        valid = masks >= 0 if (masks < 0).any() else None  # -1: a pixel of no class (ignore label, padding)
        images = self.runtime.to_device(images)
        masks = self.runtime.to_device(masks)
        with self.runtime.autocast():
            loss = self.train_model(images, masks, valid)
        loss_value = loss.item()
        if not math.isfinite(self.context.mean(loss_value)):
            raise TrainingError(
                f"loss became {loss_value} at step {progress.step} (epoch {progress.epoch + 1}); "
                f"stopping with the last good checkpoint kept in {self.output_dir} — "
                "try a lower --lr or --precision fp32"
            )
        self.scaler.scale(loss).backward()
        if config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        progress.step += 1
        return loss_value

    stop_signal = None  # the signal all ranks agreed to stop on

    def _signalled(self) -> bool:
        """Whether any rank got SIGTERM/SIGINT (every rank must stop at the same step)."""
        if self.context.mean(float(self.signals.requested)) > 0:
            self.stop_signal = self.signals.signum or signal.SIGTERM  # a rank that got none stops as if terminated
            return True
        return False

    def _budget_reached(self) -> bool:
        config = self.config
        over_steps = config.max_steps is not None and self.progress.step >= config.max_steps
        over_time = config.max_minutes is not None and (time.monotonic() - self.start_time) / 60 >= config.max_minutes
        # every rank must agree, or one would wait forever in the next all-reduce
        return self.context.mean(float(over_steps or over_time)) > 0

    def _end_of_epoch(self, epoch_loss: float) -> None:
        config, progress = self.config, self.progress
        entry = {
            "epoch": progress.epoch,
            "step": progress.step,
            "loss": epoch_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_second": getattr(self, "last_images_per_second", None),
            "val_dice": None,
            "val_iou": None,
        }
        validate = self.data.val_dataset is not None and (
            progress.epoch % config.val_every == 0 or progress.epoch == config.epochs
        )
        improved = self._validate(entry) if validate and self.context.is_main else False
        progress.history.append(entry)
        if not self.context.is_main:
            self.context.barrier()
            return
        self._log_epoch(entry, epoch_loss)
        self._write_history()
        self._save("last.pth")
        if improved:
            self._save("best.pth")
        if progress.epoch % config.save_every == 0 or progress.epoch == config.epochs:
            self._save_weights(f"checkpoint_epoch_{progress.epoch}.pth")
        self.tracker.log(
            {k: v for k, v in entry.items() if k != "epoch"} | {"epoch": progress.epoch}, step=progress.step
        )
        if validate:
            images = {
                "curves": self.output_dir / "training_curves.png",
                "predictions": self.output_dir / "val_predictions.png",
            }
            self.tracker.log_images(images, step=progress.step)
        self.context.barrier()

    def _validate(self, entry: dict) -> bool:
        """Score the EMA model on the validation set into `entry`; whether its Dice is the best yet."""
        config, progress = self.config, self.progress
        scores = evaluate(
            self.ema.model,
            self.data.val_dataset,
            self.runtime,
            steps=config.val_steps,
            batch_size=config.batch_size,
            seed=config.seed,
            max_images=config.val_max_images,
        )
        entry.update(val_dice=scores["dice"], val_iou=scores["iou"])
        if "miou" in scores:  # multi-class: per-class scores over the whole validation set
            entry.update(
                val_miou=scores["miou"],
                val_mdice=scores["mdice"],
                val_per_class_iou=scores["per_class_iou"],
                val_per_class_dice=scores["per_class_dice"],
            )
        improved = progress.best_val_dice is None or scores["dice"] > progress.best_val_dice
        if improved:
            progress.best_val_dice = scores["dice"]
        self._save_figures(scores["examples"])
        return improved

    def _log_epoch(self, entry: dict, epoch_loss: float) -> None:
        message = f"epoch {self.progress.epoch}/{self.config.epochs}: loss {epoch_loss:.4f}, lr {entry['lr']:.2e}"
        if entry["val_dice"] is not None:
            message += f", val Dice {entry['val_dice']:.4f}, IoU {entry['val_iou']:.4f}"
            if entry.get("val_miou") is not None:
                message += f", mIoU {entry['val_miou']:.4f}"
        tqdm.write(message) if self.config.progress else print(message)

    # -- files ----------------------------------------------------------------------------------

    def _save_figures(self, examples: dict) -> None:
        from utils.visualization import save_prediction_grid

        if examples:
            save_prediction_grid(
                examples["images"],
                examples["truths"],
                examples["preds"],
                self.output_dir / "val_predictions.png",
                uncertainty=None,
                num_classes=self.model.config.num_classes,
            )

    def _write_history(self) -> None:
        path = self.output_dir / "history.json"
        tmp = path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(self.progress.history, indent=1))
            os.replace(tmp, path)
        except OSError as error:
            raise TrainingError(f"{path}: cannot write: {error.strerror or error}") from None
        from utils.visualization import save_training_curves

        save_training_curves(self.progress.history, self.output_dir / "training_curves.png")

    def _save(self, name: str) -> Path:
        self.progress.elapsed_seconds = time.monotonic() - self.start_time
        try:
            path = save_checkpoint(resumable_state(self), self.output_dir / name)
        except CheckpointError as error:
            raise TrainingError(str(error)) from None
        if name == "last.pth":
            self.last_saved = (path, self.progress.step)
        return path

    def _save_weights(self, name: str) -> Path:
        """An inference-only checkpoint (run_state.weights_state): about a quarter of last.pth's size."""
        try:
            return save_checkpoint(weights_state(self), self.output_dir / name)
        except CheckpointError as error:
            raise TrainingError(str(error)) from None

    def _restore(self, state: dict) -> None:
        restore_state(self, state)
        progress, path = self.progress, self.config.resume
        if state.get("data_split") and state["data_split"] != self.data.split and self.context.is_main:
            print(f"warning: the data split differs from the one saved in {path} (files added or removed?)")
        if self.context.is_main:
            print(f"resumed from {path} at epoch {progress.epoch + 1}, step {progress.step}")
