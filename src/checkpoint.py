"""Checkpoint files: written atomically, read without executing code, checked before use.

A checkpoint is a plain dict of tensors and primitives (so `torch.load(weights_only=True)` reads
it): `model_config` (DiffusionConfig as a dict), `model` and `ema` state dicts, and for resuming
`optimizer`, `scheduler`, `scaler`, `epoch`, `step`, `rng`, `train_config`, `data_split`, `history`.
"""

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from src.models import DiffusionConfig, DiffusionSegmentation

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message names the file and the problem."""


def save_checkpoint(state: dict, path) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then rename.

    A crash or a full disk mid-write leaves any previous file at `path` untouched.
    """
    path = Path(path)
    state = {"format_version": FORMAT_VERSION, **state}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot write checkpoint: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except (OSError, RuntimeError) as error:
        Path(tmp_name).unlink(missing_ok=True)
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise CheckpointError(f"{path}: cannot write checkpoint: {reason}") from None
    return path


def load_checkpoint(path) -> dict:
    """Read a checkpoint on the CPU with `weights_only=True`: pickled code is refused, never run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: {'a folder, not a checkpoint file' if path.is_dir() else 'checkpoint not found'}"
        )
    if not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; anything else (cut short, an image, text) would reach the
        # legacy unpickler and fail in arbitrary ways
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt): not a PyTorch zip archive")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "disallowed content"
        raise CheckpointError(f"{path}: refused to load: not a plain-weights checkpoint ({first_line[:160]})") from None
    except Exception as error:  # noqa: BLE001 - any other failure of a damaged archive is the same problem for the user
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt): {str(error).splitlines()[0][:160]}"
        ) from None
    if not isinstance(state, dict) or "model_config" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not a Diffusion Segmentation checkpoint (no model_config/model entries)")
    return state


def model_from_checkpoint(state: dict, path="checkpoint", use_ema: bool = True) -> DiffusionSegmentation:
    """Rebuild the model from the checkpoint's own config; EMA weights when present and asked for."""
    try:
        config = DiffusionConfig.from_dict(dict(state["model_config"]))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: invalid model config: {error}") from None
    model = DiffusionSegmentation(config)
    weights = state.get("ema") if use_ema and state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        detail = str(error).splitlines()[0][:200]
        raise CheckpointError(f"{path}: weights do not match the model config saved in it: {detail}") from None
    return model


def load_model(path, device: torch.device | None = None, use_ema: bool = True) -> DiffusionSegmentation:
    """load_checkpoint + model_from_checkpoint, in eval mode, on `device`."""
    model = model_from_checkpoint(load_checkpoint(path), path, use_ema)
    return model.to(device or "cpu").eval()
