#!/usr/bin/env bash
# The full benchmark sequence behind BENCHMARKS.md, one process at a time (timings share 2 cores).
# Logs and JSON go to benchmarks/results/. About 5 hours on the 2-core CPU. The ablations override
# whatever the defaults are when they run: each JSON records the default config it started from.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
r=benchmarks/results
[ -x benchmarks/.peer-venv/bin/python ] || bash benchmarks/setup_peer.sh
$py benchmarks/kvasir.py --model ours --image-size 128 --minutes 20 > $r/kvasir_ours_128.log 2>&1
$py benchmarks/kvasir.py --model unet --image-size 128 --minutes 20 > $r/kvasir_unet_128.log 2>&1
$py benchmarks/kvasir.py --model peer --image-size 128 --minutes 20 > $r/kvasir_peer_128.log 2>&1
$py benchmarks/kvasir.py --model ours --image-size 128 --minutes 40 --out $r/kvasir_ours_128_40min.json > $r/kvasir_ours_128_40min.log 2>&1
$py benchmarks/kvasir.py --model unet --image-size 128 --minutes 40 --out $r/kvasir_unet_128_40min.json > $r/kvasir_unet_128_40min.log 2>&1
$py benchmarks/kvasir.py --model ablation --image-size 64 --max-steps 300 > $r/kvasir_ablation_64.log 2>&1
$py benchmarks/kvasir.py --model ablation --image-size 128 --minutes 6 \
    --variants "patch size 1,patch size 2,patch size 4,patch size 8 + bounded x0,patch size 2 + bounded x0,patch size 4 + bounded x0,patch size 4 + eps,patch size 4 + v" \
    --out $r/kvasir_ablation_128_patch.json > $r/kvasir_ablation_128_patch.log 2>&1
$py benchmarks/speed.py --steps-per-round 4 > $r/speed.log 2>&1
$py benchmarks/data_loading.py --threads 1 > $r/data_loading.log 2>&1
$py benchmarks/report.py
