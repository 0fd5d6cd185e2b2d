"""Hostile and broken checkpoints, and faults while saving: refused or reported, never corrupt."""

import errno
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from src.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from src.models import DiffusionSegmentation
from tests.helpers import TINY_FLAGS, TINY_MODEL, write_checkpoint

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Pickles to a call of os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny_checkpoint(path: Path, **config) -> Path:
    return write_checkpoint(DiffusionSegmentation(replace(TINY_MODEL, **config)), path)


def test_checkpoint_with_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model_config": {}, "model": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="evil.pth: refused to load"):
        load_checkpoint(evil)
    assert not marker.exists()
    result = subprocess.run(
        [sys.executable, "train.py", "--resume", str(evil)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2 and "refused to load" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "truncated or corrupt"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "truncated or corrupt"),
        (b"just some text\n", "truncated or corrupt"),
    ],
)
def test_non_checkpoint_files_give_clean_errors(tmp_path, content, message):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_truncated_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pth")
    good = tiny_checkpoint(tmp_path / "good.pth")
    data = good.read_bytes()
    for cut in (10, len(data) // 3, len(data) - 20):
        truncated = tmp_path / f"cut{cut}.pth"
        truncated.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(truncated)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a Diffusion Segmentation checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


def test_weights_of_another_architecture_are_a_clean_error(tmp_path):
    wide = DiffusionSegmentation(replace(TINY_MODEL, base_channels=16))
    path = save_checkpoint({"model_config": TINY_MODEL.to_dict(), "model": wide.state_dict()}, tmp_path / "mix.pth")
    with pytest.raises(CheckpointError, match="mix.pth: weights do not match the model config"):
        load_model(path)
    bad_config = save_checkpoint({"model_config": {"base_channels": 8, "layers": 3}, "model": {}}, tmp_path / "cfg.pth")
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_model(bad_config)


def test_failed_write_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tiny_checkpoint(tmp_path / "last.pth")
    before = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="last.pth: cannot write checkpoint: No space left on device"):
        save_checkpoint({"model_config": {}, "model": {}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


KILL_DURING_SECOND_SAVE = """
import os, signal, sys, torch
real_save = torch.save
calls = {"n": 0}
def save_then_die(obj, f, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 3:  # epoch 1 wrote last.pth and checkpoint_epoch_1.pth; die inside epoch 2's save
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save_then_die
from src.training.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_while_saving_leaves_previous_checkpoint_and_resume_continues(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILL_DURING_SECOND_SAVE)
    out = tmp_path / "run"
    args = [
        "--synthetic",
        "--synthetic-samples",
        "8",
        "--batch-size",
        "4",
        "--epochs",
        "3",
        "--save-every",
        "1",
        "--val-steps",
        "1",
        "--output-dir",
        str(out),
        "--no-progress",
        *TINY_FLAGS,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, str(script), *args], cwd=REPO, capture_output=True, text=True, env=env)
    assert killed.returncode == -9
    state = load_checkpoint(out / "last.pth")
    assert state["epoch"] == 1
    resumed = subprocess.run(
        [sys.executable, "train.py", "--resume", str(out / "last.pth"), "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(out / "last.pth")["epoch"] == 3


def test_unwritable_output_dir_stops_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "train.py", "--synthetic", "--output-dir", str(blocker / "out"), *TINY_FLAGS],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "output directory is not writable" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--synthetic", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["--synthetic", "--image-dir", "x", "--mask-dir", "y"], "cannot be combined"),
        ([], "give --synthetic, --data-dir, or both --image-dir and --mask-dir"),
        (["--image-dir", "/no/such/dir", "--mask-dir", "/no/such/dir"], "no such directory"),
        (["--resume", "/no/such/file.pth"], "checkpoint not found"),
        (["--synthetic", "--epochs", "0"], "must be >= 1"),
    ],
)
def test_train_cli_misuse_is_one_line_exit_2(argv, message):
    result = subprocess.run([sys.executable, "train.py", *argv], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
