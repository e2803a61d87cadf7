#!/usr/bin/env bash
# Q1 (shared/BENCHMARKS.md), ldmkit side, on one GPU: `ldm train` on Fashion-MNIST within a
# wall-clock budget (VAE + diffusion together), then `ldm eval` of 10,000 samples at several
# guidance scales with a classifier trained on Fashion-MNIST, and the VAE's reconstruction floor.
#   bash benchmarks/quality/run_q1_ldmkit.sh FMNIST_DIR OUT [MINUTES] [N]
set -euo pipefail
data="fashion-mnist:$1"; out=$2; minutes=${3:-6.5}; n=${4:-10000}
mkdir -p "$out"
command -v ldm >/dev/null || ldm() { python3 -m ldmkit.cli "$@"; }  # a checkout without pip install
start=$(python3 -c 'import time; print(time.time())')
ldm train --data "$data" --out /tmp/q1-ldmkit --preset small --image-size 32 --vae-steps "${VAE_STEPS:-3000}" \
    --steps 1000000 --batch-size 256 --time-limit "$minutes" --quiet 2>&1 | tee "$out/train.log"
python3 -c "import json, time; print(json.dumps({'train_wall_seconds': time.time() - $start}))" > "$out/train_time.json"
cat "$out/train_time.json"
cp /tmp/q1-ldmkit/config.json "$out/config.json"
ls /tmp/q1-ldmkit/samples | tail -1 | xargs -I{} cp /tmp/q1-ldmkit/samples/{} "$out/last_samples.png"
ldm eval --model /tmp/q1-ldmkit --data "$data" --train-classifier --classifier "$out/classifier.safetensors" \
    --vae --cfg 1.0 1.5 2.0 3.0 --n "$n" --out "$out/report_ldmkit.json" 2>&1 | tee "$out/eval.log"
