"""Training options: one dataclass, saved in every checkpoint, filled from train.py's flags."""

from dataclasses import asdict, dataclass, fields
from typing import Optional


@dataclass
class TrainConfig:
    # data
    data_dir: Optional[str] = None
    image_dir: Optional[str] = None
    mask_dir: Optional[str] = None
    synthetic: bool = False
    synthetic_samples: int = 256
    val_split: Optional[float] = None  # None: 10 % when there are >= 10 pairs and no val/ folder; 0: none
    augmentation_mode: str = "medium"
    num_workers: int = 0
    ignore_index: Optional[int] = None  # mask value left out of losses and metrics (often 255)
    resize: str = "stretch"  # or "pad": keep the aspect ratio, letterbox, padding ignored
    # run
    output_dir: str = "./outputs"
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 42
    precision: str = "auto"
    device: str = "auto"
    compile: bool = False
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None
    # validation and saving
    val_every: int = 1
    val_steps: int = 10
    val_max_images: Optional[int] = None
    save_every: int = 10
    wandb: bool = False
    wandb_project: str = "diffusion-segmentation"
    resume: Optional[str] = None
    overwrite: bool = False  # replace the run already in output_dir
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
