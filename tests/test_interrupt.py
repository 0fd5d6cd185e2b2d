"""SIGTERM/SIGINT during training (src/training/interrupt.py): a resumable save and a true message."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from src.checkpoint import load_checkpoint
from src.models import DiffusionConfig
from src.training import train
from src.training import trainer as trainer_module
from src.training.interrupt import Interrupted
from tests.helpers import ONE_THREAD_ENV, TINY_FLAGS, TINY_MODEL
from tests.test_training import REPO, tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the subprocess runs one thread too: same arithmetic

# long enough that no run ends by itself before it is signalled; no validation on the way
LONG_RUN = dict(synthetic_samples=16, batch_size=4, epochs=1000, val_every=1000, lr=1e-3, warmup_steps=2, seed=3)
# the same run through train.py: the flags spelled from LONG_RUN, so the two runs cannot drift apart
LONG_RUN_FLAGS = ["--synthetic", *(a for k, v in LONG_RUN.items() for a in (f"--{k.replace('_', '-')}", str(v)))]
LONG_RUN_FLAGS += ["--save-every", "10", "--no-progress", *TINY_FLAGS]


def test_sigterm_saves_mid_epoch_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path):
    out = tmp_path / "run"
    env = {**ONE_THREAD_ENV, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "train.py", *LONG_RUN_FLAGS, "--output-dir", str(out)]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in run.stdout:  # the first epoch is done: the loop is running, last.pth exists
            if line.startswith("epoch 1/"):
                break
        assert run.poll() is None, run.stderr.read()
        # while it runs, a second run into the same folder is refused by the lock
        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 1
        assert f"another training run (PID {run.pid}) is writing here" in second.stderr
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 143, stderr
    last = out / "last.pth"
    step = load_checkpoint(last)["step"]
    assert step > 4  # past the first epoch's 4 steps: saved mid-run, not at an epoch boundary by luck
    assert (
        stderr.strip().splitlines()[-1]
        == f"interrupted by SIGTERM: step {step} saved in {last}; continue with --resume {last}"
    )
    assert "Traceback" not in stderr and not (out / ".train.lock").exists()

    target = step + 3  # resume through the CLI and stop a few steps on, mid-epoch
    resumed = subprocess.run(
        [sys.executable, "train.py", "--resume", str(last), "--max-steps", str(target), "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    model_config = DiffusionConfig.from_dict(load_checkpoint(last)["model_config"])  # what the flags built
    reference = train(tiny_train_config(tmp_path / "reference", **LONG_RUN, max_steps=target), model_config)
    resumed_state, reference_state = load_checkpoint(last), load_checkpoint(reference.last_checkpoint)
    assert resumed_state["step"] == reference_state["step"] == target
    for key in ("model", "ema"):
        for name, value in reference_state[key].items():
            assert torch.equal(value, resumed_state[key][name]), f"{key}.{name} differs after SIGTERM and resume"


def test_sigint_in_the_loop_saves_after_the_current_step(tmp_path, monkeypatch):
    original = trainer_module._Trainer._train_step

    def step_then_ctrl_c(self, images, masks):
        loss = original(self, images, masks)
        if self.progress.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C does, between two steps of the first epoch
        return loss

    monkeypatch.setattr(trainer_module._Trainer, "_train_step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)  # whatever the process had (pytest or an earlier test may set one)
    with pytest.raises(Interrupted) as stop:
        train(tiny_train_config(tmp_path, epochs=3), TINY_MODEL)
    assert stop.value.exit_code == 130
    assert (
        str(stop.value) == f"interrupted by SIGINT: step 3 saved in {tmp_path / 'last.pth'}; "
        f"continue with --resume {tmp_path / 'last.pth'}"
    )
    state = load_checkpoint(tmp_path / "last.pth")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 3, 3)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_a_signal_before_training_starts_says_nothing_was_saved(tmp_path, monkeypatch):
    def terminated_while_loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal should have stopped the run")

    monkeypatch.setattr(trainer_module, "build_training_data", terminated_while_loading)
    with pytest.raises(Interrupted) as stop:
        train(tiny_train_config(tmp_path), TINY_MODEL)
    assert stop.value.exit_code == 143
    assert "before anything was saved" in str(stop.value)
    assert not any(tmp_path.iterdir())  # no checkpoint, and the lock is gone
