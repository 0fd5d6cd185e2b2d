"""`demo.py --quick` trains, segments and writes every figure, printing where each went."""

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("training_curves.png", "forward_diffusion.png", "reverse_process.png", "predictions.png")


def test_quick_demo_writes_its_figures(tmp_path):
    out = tmp_path / "demo"
    # one OpenMP thread: the quick model is tiny, and a busy 2-core machine makes a second thread wait
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "demo.py", "--quick", "--output-dir", str(out), "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in FIGURES:
        path = out / name
        with Image.open(path) as img:
            assert img.format == "PNG" and min(img.size) > 100, name
        assert str(path) in result.stdout, name
    with Image.open(out / "reverse_process.gif") as gif:
        assert gif.n_frames > 1
    assert (out / "training" / "best.pth").exists()
    assert "validation Dice" in result.stdout and "chance level" in result.stdout
    assert "Traceback" not in result.stderr


def test_demo_bad_device_is_a_clean_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "demo.py", "--quick", "--device", "nonsense", "--output-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
