"""The benchmark scripts' --smoke runs (seconds each) and their small helpers.

The Kvasir-SEG runs skip when ../shared/data/kvasir-seg is absent; the peer and plain-UNet runs
skip when benchmarks/.peer-venv (benchmarks/setup_peer.sh) is absent.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import data_loading  # noqa: E402
import kvasir  # noqa: E402
import speed  # noqa: E402

needs_kvasir = pytest.mark.skipif(not (common.DEFAULT_DATA / "splits" / "train.txt").is_file(),
                                  reason=f"Kvasir-SEG not found at {common.DEFAULT_DATA}")
needs_peer_venv = pytest.mark.skipif(not common.PEER_PYTHON.exists(), reason="benchmarks/.peer-venv not set up")


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The scripts set torch's thread count; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_uncertainty_error_stats_separates_errors():
    stats = common.UncertaintyErrorStats()
    truth = np.zeros((4, 4), dtype=np.uint8)
    truth[:, :2] = 1
    probabilities = torch.zeros(1, 4, 4)
    probabilities[0, :, :1] = 1.0  # column 1 is a missed foreground column: the errors
    uncertainty = torch.zeros(4, 4)
    uncertainty[:, 1] = 0.4  # exactly on the errors
    stats.add(uncertainty, probabilities, truth)
    result = stats.result()
    assert result["auroc"] == pytest.approx(1.0)
    assert result["pearson_r"] == pytest.approx(1.0, abs=1e-6)
    assert result["error_pixel_share"] == pytest.approx(0.25)


def test_holdout_split_is_disjoint_and_seeded():
    stems = [f"s{i}" for i in range(20)]
    fit, held = common.holdout_split(stems, 5)
    assert len(held) == 5 and not set(fit) & set(held) and sorted(fit + held) == sorted(stems)
    assert common.holdout_split(stems, 5) == (fit, held)


def test_epochs_for_budget():
    assert kvasir.epochs_for_budget(step_seconds=1.0, minutes=10, steps_per_epoch=100) == 6
    assert kvasir.epochs_for_budget(step_seconds=100.0, minutes=1, steps_per_epoch=100) == 1


def test_speed_smoke(tmp_path):
    out = tmp_path / "speed.json"
    assert speed.main(["--smoke", "--no-peer", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {row["precision"] for row in result["training"]} == set(speed.PRECISIONS)
    assert all(row["images_per_second"] > 0 and row["gflops_per_step"] > 0 for row in result["training"])
    assert result["matmul_peak_tflops"]["bf16"] > 0 and result["sampling"]


def test_speed_profile_writes_the_top_operators(tmp_path):
    assert speed.main(["--smoke", "--profile", "--threads", "1", "--out", str(tmp_path / "speed.json")]) == 0
    text = (tmp_path / "profile_32_smoke.txt").read_text()
    assert text.startswith("32 px, batch 2, bf16") and "aten::" in text and "Self CPU" in text


@needs_kvasir
def test_kvasir_smoke_ours(tmp_path):
    out = tmp_path / "ours.json"
    assert kvasir.main(["--smoke", "--model", "ours", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["rows"]) == {"ddim1_ens1", "ddim2_ens1", "ddim10_ens2"}
    assert all(0 <= row["dice"] <= 1 for row in result["rows"].values())
    assert -1 <= result["uncertainty_error"]["pearson_r"] <= 1 or np.isnan(result["uncertainty_error"]["pearson_r"])


@needs_kvasir
@needs_peer_venv
@pytest.mark.parametrize("model", ["unet", "peer"])
def test_kvasir_smoke_anchors(tmp_path, model):
    out = tmp_path / f"{model}.json"
    done = subprocess.run([str(common.PEER_PYTHON), str(BENCHMARKS / "kvasir.py"), "--smoke", "--model", model, "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env={"TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == ({"unet"} if model == "unet" else {"peer_ddim2", "peer_default"})
    assert all(0 <= row["dice"] <= 1 and row["images"] == 2 for row in rows.values())


@needs_kvasir
def test_data_loading_smoke(tmp_path):
    out = tmp_path / "loading.json"
    assert data_loading.main(["--smoke", "--threads", "1", "--out", str(out)]) == 0
    [row] = json.loads(out.read_text())["rows"]
    assert row["size"] == 32 and row["cache"] and len(row["epoch_seconds"]) == 2
    assert all(seconds > 0 for seconds in row["epoch_seconds"])
