"""Output folders (src/training/run_folder.py): one run per folder, a lock, stale locks taken over."""

import json
import os
import subprocess
import sys

import pytest

from src.training.run_folder import LOCK_NAME, RunFolderError, claim_output_dir


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_folder_with_another_runs_checkpoints_is_refused_and_left_untouched(tmp_path):
    (tmp_path / "best.pth").write_bytes(b"weights of an earlier run")
    with pytest.raises(RunFolderError) as refused:
        with claim_output_dir(tmp_path):
            pass
    message = str(refused.value)
    assert "\n" not in message and "--resume" in message and "--output-dir" in message and "--overwrite" in message
    assert (tmp_path / "best.pth").read_bytes() == b"weights of an earlier run"
    assert not (tmp_path / LOCK_NAME).exists()
    with claim_output_dir(tmp_path, resume=True):  # continuing it is fine
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_overwrite_removes_the_previous_runs_files_only(tmp_path, capsys):
    for name in ("last.pth", "best.pth", "checkpoint_epoch_10.pth", "history.json", "training_curves.png"):
        (tmp_path / name).write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("mine")
    with claim_output_dir(tmp_path, overwrite=True):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert "removed 5 file(s) of the previous run" in capsys.readouterr().out


def test_a_live_runs_lock_refuses_and_a_dead_ones_is_taken_over(tmp_path, capsys):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename}))  # a live process
    with pytest.raises(RunFolderError, match=f"another training run \\(PID {os.getppid()}\\) is writing here"):
        with claim_output_dir(tmp_path):
            pass
    assert json.loads(lock.read_text())["pid"] == os.getppid()  # not ours to remove
    stale = dead_pid()
    lock.write_text(json.dumps({"pid": stale, "host": os.uname().nodename}))
    with claim_output_dir(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock {lock}: PID {stale}" in capsys.readouterr().out
    assert not lock.exists()
