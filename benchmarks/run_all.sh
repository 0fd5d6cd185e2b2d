#!/usr/bin/env bash
# The full benchmark sequence behind BENCHMARKS.md, one process at a time (timings share 2 cores).
# Logs and JSON go to benchmarks/results/. About 5 hours on the 2-core CPU. The ablations override
# whatever the defaults are when they run: each JSON records the default config it started from.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
r=benchmarks/results
[ -x benchmarks/.peer-venv/bin/python ] || bash benchmarks/setup_peer.sh
# Budgets in steps worth N minutes of one idle core (immune to other load): measured first.
benchmarks/.peer-venv/bin/python -m benchmarks.step_budget --minutes 20 40 > $r/step_budget.log 2>&1
steps() { python3 -c "import json; print(json.load(open('$r/step_budget.json'))['steps_for_minutes']['$1']['$2'])"; }
$py -m benchmarks.kvasir --model ours --image-size 128 --minutes 20 --max-steps "$(steps 20 ours)" > $r/kvasir_ours_128.log 2>&1
$py -m benchmarks.kvasir --model unet --image-size 128 --minutes 20 --max-steps "$(steps 20 unet)" > $r/kvasir_unet_128.log 2>&1
$py -m benchmarks.kvasir --model peer --image-size 128 --minutes 20 > $r/kvasir_peer_128.log 2>&1
$py -m benchmarks.kvasir --model ours --image-size 128 --minutes 40 --max-steps "$(steps 40 ours)" \
    --out $r/kvasir_ours_128_40min.json > $r/kvasir_ours_128_40min.log 2>&1
$py -m benchmarks.kvasir --model unet --image-size 128 --minutes 40 --max-steps "$(steps 40 unet)" \
    --out $r/kvasir_unet_128_40min.json > $r/kvasir_unet_128_40min.log 2>&1
$py -m benchmarks.kvasir --model ablation --image-size 128 --minutes 6 \
    --variants "default,no self-conditioning,self-cond + input scale 0.1,self-cond + input scale 0.2,self-cond + 1 block per level" \
    --out $r/kvasir_ablation_128_selfcond.json > $r/kvasir_ablation_128_selfcond.log 2>&1
$py -m benchmarks.sampler_ablation --checkpoint $r/checkpoints/ablation_128_33/last.pth > $r/sampler_ablation.log 2>&1
benchmarks/.peer-venv/bin/python -m benchmarks.sampling_cost > $r/sampling_cost.log 2>&1
$py -m benchmarks.kvasir --model ablation --image-size 64 --max-steps 300 > $r/kvasir_ablation_64.log 2>&1
$py -m benchmarks.kvasir --model ablation --image-size 128 --minutes 6 \
    --variants "patch size 1,patch size 2,patch size 4,patch size 8 + bounded x0,patch size 2 + bounded x0,patch size 4 + bounded x0,patch size 4 + eps,patch size 4 + v" \
    --out $r/kvasir_ablation_128_patch.json > $r/kvasir_ablation_128_patch.log 2>&1
$py -m benchmarks.speed --steps-per-round 4 > $r/speed.log 2>&1
$py -m benchmarks.data_loading --threads 1 > $r/data_loading.log 2>&1
$py -m benchmarks.report
