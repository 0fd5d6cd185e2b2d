#!/usr/bin/env bash
# The full benchmark sequence behind BENCHMARKS.md, one process at a time (timings share 2 cores).
# Logs and JSON go to benchmarks/results/. About 2 hours on the 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
r=benchmarks/results
[ -x benchmarks/.peer-venv/bin/python ] || bash benchmarks/setup_peer.sh
$py benchmarks/kvasir.py --model ours --image-size 128 --minutes 20 --steps 1,5,10,50 > $r/kvasir_ours_128.log 2>&1
$py benchmarks/kvasir.py --model unet --image-size 128 --minutes 20 > $r/kvasir_unet_128.log 2>&1
$py benchmarks/kvasir.py --model peer --image-size 128 --minutes 20 > $r/kvasir_peer_128.log 2>&1
$py benchmarks/kvasir.py --model ablation --image-size 64 --max-steps 300 > $r/kvasir_ablation_64.log 2>&1
$py benchmarks/speed.py > $r/speed.log 2>&1
$py benchmarks/data_loading.py --threads 1 > $r/data_loading.log 2>&1
$py benchmarks/report.py
