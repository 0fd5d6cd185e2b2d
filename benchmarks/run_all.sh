#!/usr/bin/env bash
# The full benchmark sequence behind BENCHMARKS.md, one process at a time (timings share 2 cores).
# Logs and JSON go to benchmarks/results/. About 90 minutes on the 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x benchmarks/.peer-venv/bin/python ] || bash benchmarks/setup_peer.sh
$py benchmarks/kvasir.py --model ours --image-size 128 --minutes 20 > benchmarks/results/kvasir_ours_128.log 2>&1
$py benchmarks/kvasir.py --model unet --image-size 128 --minutes 20 > benchmarks/results/kvasir_unet_128.log 2>&1
$py benchmarks/kvasir.py --model peer --image-size 128 --minutes 20 > benchmarks/results/kvasir_peer_128.log 2>&1
$py benchmarks/kvasir.py --model ablation --image-size 64 --minutes 2.5 > benchmarks/results/kvasir_ablation_64.log 2>&1
$py benchmarks/speed.py > benchmarks/results/speed.log 2>&1
$py benchmarks/plots.py
