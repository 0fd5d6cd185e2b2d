"""Optional Weights & Biases logging; a missing package is a clear error at start, not a crash."""

from pathlib import Path


class TrackingError(RuntimeError):
    pass


class WandbTracker:
    """Logs metrics and images to wandb (honours WANDB_MODE=offline)."""

    def __init__(self, project: str, run_config: dict, output_dir: Path):
        try:
            import wandb
        except ImportError:
            raise TrackingError(
                "--wandb needs the wandb package: pip install -r requirements-wandb.txt (or drop --wandb)"
            ) from None
        self._wandb = wandb
        self.run = wandb.init(project=project, config=run_config, dir=str(output_dir))

    def log(self, metrics: dict, step: int) -> None:
        self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def log_images(self, images: dict, step: int) -> None:
        self.run.log(
            {name: self._wandb.Image(str(path)) for name, path in images.items() if Path(path).exists()}, step=step
        )

    def finish(self) -> None:
        self.run.finish()


class NullTracker:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_images(self, images: dict, step: int) -> None:
        pass

    def finish(self) -> None:
        pass
