#!/usr/bin/env bash
# Creates benchmarks/.peer-venv with the two anchors of benchmarks/kvasir.py and speed.py:
#   med-seg-diff-pytorch 0.3.3 (lucidrains' MedSegDiff, the peer) and segmentation-models-pytorch
#   (the plain UNet baseline). A separate venv keeps their dependencies out of the project's.
# torch/torchvision are pinned to the project's versions so pip reuses the local wheels.
# Usage: bash benchmarks/setup_peer.sh [python]   (default: python3)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${1:-python3}"
venv="$here/.peer-venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet \
    "torch==2.14.1" "torchvision==0.29.1" \
    "med-seg-diff-pytorch==0.3.3" \
    "segmentation-models-pytorch" \
    numpy pillow tqdm matplotlib
"$venv/bin/python" -c "import med_seg_diff_pytorch, segmentation_models_pytorch, torch; print('peer venv ready:', torch.__version__)"
