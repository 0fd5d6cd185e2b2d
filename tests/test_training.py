"""Training: end-to-end run, exact resume, budgets, validation scores, failures, and DDP on gloo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src.checkpoint import load_checkpoint
from src.device import select_runtime
from src.models import DiffusionConfig, DiffusionSegmentation, SegmentationOutput
from src.training import TrainConfig, TrainingError, train
from src.training.validation import evaluate
from tests.helpers import TINY_FLAGS, TINY_MODEL

REPO = Path(__file__).resolve().parents[1]


def tiny_train_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        synthetic=True,
        synthetic_samples=16,
        batch_size=4,
        epochs=2,
        lr=1e-3,
        warmup_steps=2,
        output_dir=str(tmp_path),
        val_steps=2,
        save_every=1,
        progress=False,
        seed=3,
    )
    return TrainConfig(**{**values, **overrides})


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_short_synthetic_run_writes_checkpoints_history_and_plots(tmp_path):
    result = run_cli(
        "--synthetic",
        "--synthetic-samples",
        "16",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--save-every",
        "1",
        "--val-steps",
        "2",
        "--output-dir",
        str(tmp_path),
        "--no-progress",
        *TINY_FLAGS,
    )
    assert result.returncode == 0, result.stderr
    for name in (
        "last.pth",
        "best.pth",
        "checkpoint_epoch_1.pth",
        "checkpoint_epoch_2.pth",
        "history.json",
        "training_curves.png",
        "val_predictions.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    history = json.loads((tmp_path / "history.json").read_text())
    assert [e["epoch"] for e in history] == [1, 2]
    assert all(0 <= e["val_dice"] <= 1 and e["loss"] > 0 and e["lr"] > 0 for e in history)
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["epoch"] == 2 and state["step"] == 8
    assert state["model_config"]["base_channels"] == 8
    assert set(state) >= {"model", "ema", "optimizer", "scheduler", "scaler", "rng", "train_config", "data_split"}
    assert "val Dice" in result.stdout


@pytest.mark.parametrize("stop_after", [4, 6])  # an epoch boundary, and the middle of epoch 2
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, stop_after):
    full = train(tiny_train_config(tmp_path / "full"), TINY_MODEL)
    first = train(tiny_train_config(tmp_path / "split", max_steps=stop_after), TINY_MODEL)
    assert first.stopped_early and first.steps == stop_after
    resumed = train(tiny_train_config(tmp_path / "split", resume=str(first.last_checkpoint)), TINY_MODEL)
    assert resumed.steps == full.steps == 8
    full_state = load_checkpoint(full.last_checkpoint)
    resumed_state = load_checkpoint(resumed.last_checkpoint)
    for key in ("model", "ema"):
        for name, value in full_state[key].items():
            assert torch.equal(value, resumed_state[key][name]), f"{key}.{name} differs after resume"
    assert [e["loss"] for e in resumed_state["history"]] == [e["loss"] for e in full_state["history"]]


@pytest.mark.parametrize("stop_after", [4, 6])  # the middle of epoch 2, and its end (3 batches an epoch)
@pytest.mark.parametrize(
    ("num_workers", "loader_state_saved"), [(0, True), (0, False), (2, True)]
)  # False: a checkpoint from before the loader's state was saved
def test_resumed_run_on_image_folders_equals_an_uninterrupted_one(
    tiny_dataset, tmp_path, stop_after, num_workers, loader_state_saved
):
    # a folder dataset's loader shuffles with its own generator, which the per-epoch seeding does not
    # reach: a resumed run once drew epoch 1's order again for each epoch after the resume. Worker
    # processes augment from their own streams, new in a resumed run: there each sample carries its
    # own augmentation seed (utils/sample_keys.py) and the order is a function of the epoch.
    folders = dict(
        synthetic=False, image_dir=str(tiny_dataset / "images"), mask_dir=str(tiny_dataset / "masks"), val_split=0
    )
    folders.update(batch_size=2, epochs=4, augmentation_mode="heavy", num_workers=num_workers)
    full = train(tiny_train_config(tmp_path / "full", **folders), TINY_MODEL)
    first = train(tiny_train_config(tmp_path / "split", **folders, max_steps=stop_after), TINY_MODEL)
    state = load_checkpoint(first.last_checkpoint)
    assert isinstance(state["loader_rng"], torch.Tensor)
    if not loader_state_saved:
        del state["loader_rng"]
        torch.save(state, first.last_checkpoint)
    resumed = train(tiny_train_config(tmp_path / "split", **folders, resume=str(first.last_checkpoint)), TINY_MODEL)
    assert resumed.steps == full.steps == 12
    full_state, resumed_state = load_checkpoint(full.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert [e["loss"] for e in resumed_state["history"]] == [e["loss"] for e in full_state["history"]]
    for key in ("model", "ema"):
        for name, value in full_state[key].items():
            assert torch.equal(value, resumed_state[key][name]), f"{key}.{name} differs after resume"


def test_resume_extends_a_finished_run_with_more_epochs(tmp_path):
    first = train(tiny_train_config(tmp_path, epochs=1), TINY_MODEL)
    result = run_cli("--resume", str(first.last_checkpoint), "--epochs", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["epoch"] == 2 and state["step"] == 8
    assert [e["epoch"] for e in state["history"]] == [1, 2]


def test_max_steps_stops_on_time_and_saves(tmp_path):
    result = train(tiny_train_config(tmp_path, epochs=50, max_steps=3), TINY_MODEL)
    assert result.stopped_early and result.steps == 3
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["step"] == 3 and state["batch_in_epoch"] == 3 and state["epoch"] == 0


def test_truncated_checkpoint_gives_clean_error(tmp_path):
    train(tiny_train_config(tmp_path, epochs=1), TINY_MODEL)
    data = (tmp_path / "last.pth").read_bytes()
    broken = tmp_path / "broken.pth"
    broken.write_bytes(data[: len(data) // 2])
    result = run_cli("--resume", str(broken), "--no-progress")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "broken.pth" in result.stderr and "truncated or corrupt" in result.stderr


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = DiffusionSegmentation.training_losses

    def failing(self, images, masks, t=None, valid=None):
        calls["n"] += 1
        losses = original(self, images, masks, t, valid)
        if calls["n"] > 5:  # epoch 1 (4 steps) is fine, then the loss explodes
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(DiffusionSegmentation, "training_losses", failing)
    with pytest.raises(TrainingError, match="loss became nan at step 5"):
        train(tiny_train_config(tmp_path, epochs=3), TINY_MODEL)
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["epoch"] == 1 and state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


class _KnownModel:
    """Stands in for the model: 'segments' by returning a fixed probability map per call."""

    def __init__(self, probabilities):
        self.config = DiffusionConfig(num_classes=1)
        self.probabilities = probabilities

    def eval(self):
        return self

    def segment(self, images, steps, seed):
        n = images.shape[0]
        probs = self.probabilities[:n]
        self.probabilities = self.probabilities[n:]
        return SegmentationOutput(probs, (probs[:, 0] > 0.5).long(), torch.zeros_like(probs[:, 0]))


class _HandMadeMasks(torch.utils.data.Dataset):
    """Two 8x8 model-size images whose original masks are 16x16."""

    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return torch.zeros(3, 8, 8), torch.zeros(1, 8, 8)

    def load_original_mask(self, i):
        return self.masks[i]


def test_validation_dice_and_iou_against_hand_made_masks():
    truth_a = np.zeros((16, 16), np.uint8)
    truth_a[:8, :] = 1  # top half: 128 pixels
    truth_b = np.zeros((16, 16), np.uint8)  # empty
    probs = torch.zeros(2, 1, 8, 8)
    probs[0, 0, :4, :4] = 1  # predicts the top-left quarter (64 px at 16x16)
    probs[1, 0] = 0  # predicts nothing for the empty mask: Dice 1
    scores = evaluate(
        _KnownModel(probs), _HandMadeMasks([truth_a, truth_b]), select_runtime("cpu", "fp32"), batch_size=1
    )
    dice_a = 2 * 64 / (64 + 128)
    iou_a = 64 / 128
    assert scores["per_image"][0]["dice"] == pytest.approx(dice_a)
    assert scores["per_image"][0]["iou"] == pytest.approx(iou_a)
    assert scores["per_image"][1] == {"dice": 1.0, "iou": 1.0}
    assert scores["dice"] == pytest.approx((dice_a + 1) / 2)


def test_cli_misuse_is_a_one_line_error(tmp_path):
    result = run_cli("--synthetic", "--image-dir", str(tmp_path))
    assert result.returncode == 2 and "cannot be combined" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("--image-dir", str(tmp_path / "nope"), "--mask-dir", str(tmp_path))
    assert result.returncode == 2 and "no such directory" in result.stderr
    result = run_cli("--synthetic", "--image-size", "30")
    assert result.returncode == 2 and "image size 30x30 is not divisible by 32 (patch size 4" in result.stderr
    result = run_cli("--synthetic", "--image-size", "18", "--channel-mults", "1,2", "--patch-size", "2")
    assert result.returncode == 2 and "not divisible by 4 (patch size 2" in result.stderr


def test_wandb_missing_is_a_clear_error_or_logs_offline(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--synthetic",
            "--synthetic-samples",
            "8",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--val-steps",
            "1",
            "--output-dir",
            str(tmp_path),
            "--no-progress",
            "--wandb",
            *TINY_FLAGS,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    try:
        import wandb  # noqa: F401
    except ImportError:
        assert result.returncode == 1 and "--wandb needs the wandb package" in result.stderr
        assert "Traceback" not in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert list((tmp_path / "wandb").glob("offline-run-*"))


DDP_WORKER = """
import sys, torch
from src.training import TrainConfig, train
from src.models import DiffusionConfig
out = sys.argv[1]
model = DiffusionConfig(image_size=(16, 16), base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), num_heads=2, timesteps=100)
result = train(TrainConfig(synthetic=True, synthetic_samples=16, batch_size=4, epochs=1, output_dir=out,
                           val_steps=1, progress=False, device="cpu"), model)
import os
torch.save(result.model.state_dict(), f"{out}/rank{os.environ['RANK']}.pt")
"""


def test_two_process_gloo_run_keeps_ranks_identical(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            str(worker),
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["step"] == 2  # 16 samples / (2 ranks x batch 4)


def test_more_gpu_processes_than_gpus_is_a_clear_error(monkeypatch):
    from src.training.distributed import DistributedError, setup_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DistributedError, match="--nproc_per_node=1"):
        setup_distributed("auto")


class SlowingClock:
    """Stands in for the trainer's `time` module: every reading advances the clock, by 4x more
    once `slow_after` readings were taken (the machine got busy halfway through the run)."""

    def __init__(self, slow_after: int, tick: float = 0.05):
        self.now, self.readings, self.slow_after, self.tick = 0.0, 0, slow_after, tick

    def monotonic(self) -> float:
        self.readings += 1
        self.now += self.tick if self.readings < self.slow_after else 4 * self.tick
        return self.now


def test_max_minutes_run_that_slows_down_halfway_still_ends_annealed(tmp_path, monkeypatch):
    from src.training import trainer
    from src.training.lr_schedule import learning_rate

    monkeypatch.setattr(trainer, "time", SlowingClock(slow_after=200))
    config = tiny_train_config(tmp_path, epochs=100, max_minutes=0.5, val_every=1000, save_every=1000)
    result = train(config, TINY_MODEL)
    assert result.stopped_early
    final_lr = load_checkpoint(result.last_checkpoint)["optimizer"]["param_groups"][0]["lr"]
    assert final_lr == pytest.approx(config.lr * 0.05, rel=0.05)
    # planned by steps alone (400 of them), the same run would have stopped near its peak rate
    assert result.steps < 200 and learning_rate(result.steps, config.lr, 400, config.warmup_steps) > 0.8 * config.lr


def test_resumed_budget_run_keeps_its_clock(tmp_path, monkeypatch):
    from src.training import trainer

    monkeypatch.setattr(trainer, "time", SlowingClock(slow_after=10**9))
    first = train(
        tiny_train_config(tmp_path, epochs=100, max_minutes=0.05, val_every=1000, save_every=1000), TINY_MODEL
    )
    state = load_checkpoint(first.last_checkpoint)
    assert first.stopped_early and state["scheduler"]["elapsed_seconds"] >= 3.0
    # --max-minutes counts the whole run: resumed with the same budget it has nothing left to do
    again = train(
        tiny_train_config(tmp_path, epochs=100, max_minutes=0.05, resume=str(first.last_checkpoint)), TINY_MODEL
    )
    assert again.steps == first.steps


# -- datasets as users bring them: default validation, one run per folder, ignore label, any aspect --


@pytest.fixture(scope="module")
def class_id_run(tmp_path_factory):
    """One train.py run on 12 non-square class-id pairs with an unlabelled band: no split flag,
    --ignore-index 255, --resize pad, a non-square --image-size."""
    from tests.helpers import write_class_id_dataset

    root = tmp_path_factory.mktemp("class_ids")
    data = write_class_id_dataset(root / "data")
    out = root / "run"
    args = [
        "--image-dir",
        str(data / "images"),
        "--mask-dir",
        str(data / "masks"),
        "--num-classes",
        "3",
        "--ignore-index",
        "255",
        "--resize",
        "pad",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--val-steps",
        "2",
        "--no-progress",
        "--output-dir",
        str(out),
        *TINY_FLAGS,
        "--image-size",
        "16x32",
        "--patch-size",
        "2",
    ]
    return data, out, args, run_cli(*args)


def test_validation_is_on_by_default_with_per_class_scores(class_id_run):
    _, out, _, result = class_id_run
    assert result.returncode == 0, result.stderr
    assert "validation: held out 1 of 12 pairs (seeded 10 %)" in result.stdout
    assert (out / "best.pth").is_file()
    entry = json.loads((out / "history.json").read_text())[-1]
    assert 0 <= entry["val_miou"] <= 1 and 0 <= entry["val_dice"] <= 1
    assert len(entry["val_per_class_iou"]) == len(entry["val_per_class_dice"]) == 3
    assert tuple(load_checkpoint(out / "last.pth")["model_config"]["image_size"]) == (16, 32)


def test_periodic_checkpoints_keep_only_what_inference_needs(class_id_run):
    _, out, _, _ = class_id_run
    weights, last = load_checkpoint(out / "checkpoint_epoch_1.pth"), load_checkpoint(out / "last.pth")
    assert weights["resumable"] is False and "optimizer" not in weights and "rng" not in weights
    for name, value in last["ema"].items():
        assert torch.equal(weights["model"][name], value)  # the EMA weights, as inference uses
    assert (out / "checkpoint_epoch_1.pth").stat().st_size < (out / "last.pth").stat().st_size / 2
    result = run_cli("--resume", str(out / "checkpoint_epoch_1.pth"), "--epochs", "2")
    assert result.returncode == 1 and "inference only" in result.stderr and "last.pth" in result.stderr


def test_a_second_run_in_the_same_folder_is_refused_until_overwrite(class_id_run):
    _, out, args, _ = class_id_run
    before = {p.name: p.read_bytes() for p in out.glob("*.pth")}
    refused = run_cli(*args)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert all(flag in refused.stderr for flag in ("--resume", "--output-dir", "--overwrite"))
    assert {p.name: p.read_bytes() for p in out.glob("*.pth")} == before
    # --overwrite replaces it; --val-split 0 turns validation off (so no best.pth in the new run)
    replaced = run_cli(*args, "--overwrite", "--val-split", "0")
    assert replaced.returncode == 0, replaced.stderr
    assert "removed" in replaced.stdout and "validation:" not in replaced.stdout
    assert not (out / "best.pth").exists() and (out / "last.pth").exists()
    assert json.loads((out / "history.json").read_text())[-1]["val_dice"] is None


def test_too_few_pairs_for_a_split_say_so(tiny_dataset):
    from src.training.data import build_training_data

    config = TrainConfig(image_dir=str(tiny_dataset / "images"), mask_dir=str(tiny_dataset / "masks"), batch_size=2)
    data = build_training_data(config, TINY_MODEL)
    assert data.val_dataset is None
    assert data.notes == [
        "validation: none: 6 pairs are too few to hold out 10 % (fewer than 10); --val-split F holds out a share anyway"
    ]


def test_class_id_masks_trained_as_binary_are_named(tmp_path):
    from src.training.data import build_training_data
    from tests.helpers import write_class_id_dataset

    data_dir = write_class_id_dataset(tmp_path, count=4, ignore_rows=0)
    config = TrainConfig(image_dir=str(data_dir / "images"), mask_dir=str(data_dir / "masks"), batch_size=2)
    notes = build_training_data(config, TINY_MODEL).notes
    assert any("look like 3 class ids" in note and "--num-classes 3" in note for note in notes)


def test_train_config_validates_itself():
    for values, message in (
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"resize": "crop"}, "resize must be one of"),
        ({"val_split": 1.0}, "val_split must be 0"),
        ({"lr": 0}, "lr must be > 0"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"ema_decay": 1.0}, "ema_decay"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**values)


def test_train_flags_are_the_config_fields_and_only_typed_ones_are_set():
    from dataclasses import fields

    from src.training.cli import build_parser, configs_from_args

    parser = build_parser()
    help_text = parser.format_help()
    for config_class in (TrainConfig, DiffusionConfig):
        for spec in fields(config_class):
            flag = "--no-progress" if spec.name == "progress" else "--" + spec.name.replace("_", "-")
            assert flag in help_text, flag
    # defaults shown from the fields
    assert "(default: 0.0001)" in help_text and f"(default: {DiffusionConfig().input_scale})" in help_text
    args = parser.parse_args(["--synthetic", "--lr", "0.01", "--no-self-condition"])
    assert vars(args) == {"synthetic": True, "lr": 0.01, "self_condition": False}
    train_config, model_config = configs_from_args(parser, args)
    assert train_config == TrainConfig(synthetic=True, lr=0.01)
    assert model_config == DiffusionConfig(in_channels=3, self_condition=False)
