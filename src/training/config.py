"""Training options: one dataclass, saved in every checkpoint, filled from train.py's flags.

Each field carries its default and its help text (train.py's --flag for field `flag_name` shows
both), and the dataclass checks its own values, so a TrainConfig built in code is held to the
same rules as one built from the command line.
"""

from dataclasses import asdict, dataclass, fields

from src.device import PRECISIONS
from src.fields import option
from utils.augmentations import AUGMENTATION_MODES
from utils.resize import RESIZE_MODES


@dataclass
class TrainConfig:
    # data
    data_dir: str | None = option(None, "dataset with train/{images,masks} and val/{images,masks}")
    image_dir: str | None = option(None, "folder of images")
    mask_dir: str | None = option(None, "folder of masks (same stems, or _mask/_gt suffixes)")
    synthetic: bool = option(False, "train on built-in synthetic shapes")
    synthetic_samples: int = option(256, "synthetic training images")
    val_split: float | None = option(
        None, "fraction held out for validation (default: 0.1 when there are >= 10 pairs and no val/ folder; 0: none)"
    )
    augmentation_mode: str = option("medium", "augmentation strength")
    num_workers: int = option(0, "DataLoader worker processes")
    ignore_index: int | None = option(
        None, "mask value of pixels that belong to no class (often 255): left out of losses and metrics"
    )
    resize: str = option(
        "stretch", "stretch to --image-size, or pad: keep the aspect ratio, letterbox, padding ignored"
    )
    # run
    output_dir: str = option("./outputs", "run folder: checkpoints, curves, history")
    epochs: int = option(100, "passes over the training set")
    batch_size: int = option(8, "images per optimizer step")
    lr: float = option(1e-4, "peak learning rate (AdamW; warmup, then cosine decay)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_steps: int = option(500, "linear learning-rate warmup, in optimizer steps")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: no clipping)")
    ema_decay: float = option(0.999, "decay of the exponential moving average of the weights used for sampling")
    seed: int = option(42, "seed of the weights, the data order, the split and the noise")
    precision: str = option("auto", "auto: bf16 on CPUs with AMX/AVX512-BF16 and on bf16 GPUs, else fp32")
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...")
    compile: bool = option(False, "torch.compile the UNet")
    max_steps: int | None = option(None, "stop after this many optimizer steps")
    max_minutes: float | None = option(
        None,
        "train for this much wall-clock time in all (resumes included); the learning-rate schedule follows the clock",
    )
    # validation and saving
    val_every: int = option(1, "validate every N epochs")
    val_steps: int = option(10, "DDIM steps when validating")
    val_max_images: int | None = option(None, "validate on at most this many images")
    save_every: int = option(10, "keep checkpoint_epoch_N.pth every N epochs")
    wandb: bool = option(False, "log to Weights & Biases (WANDB_MODE=offline works)")
    wandb_project: str = option("diffusion-segmentation", "Weights & Biases project")
    resume: str | None = option(None, "checkpoint to continue from (its data and model settings are reused)")
    overwrite: bool = option(False, "replace the run already in --output-dir (its files are removed)")
    progress: bool = option(True, "progress bars")

    def __post_init__(self):
        at_least_one = (
            "synthetic_samples",
            "epochs",
            "batch_size",
            "val_every",
            "val_steps",
            "save_every",
            "max_steps",
            "val_max_images",
        )
        for name in at_least_one:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("lr", "max_minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("weight_decay", "warmup_steps", "grad_clip", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.val_split is not None and not 0 <= self.val_split < 1:
            raise ValueError(f"val_split must be 0 (no validation) or a fraction below 1, got {self.val_split}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name, allowed in (
            ("augmentation_mode", AUGMENTATION_MODES),
            ("resize", RESIZE_MODES),
            ("precision", PRECISIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
