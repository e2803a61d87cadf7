#!/usr/bin/env bash
# Q1 (shared/BENCHMARKS.md), ldmkit side, on one GPU: `ldm train --preset fashion-mnist` within a
# wall-clock budget (VAE + latent cache + diffusion together), the fp16 model file that ships as
# ldmkit's bundled `fashion-mnist` model, then `ldm eval` of N samples per guidance scale in the
# feature space of a Fashion-MNIST classifier, with the VAE's reconstruction floor.
#   bash benchmarks/quality/run_q1_ldmkit.sh FMNIST_DIR OUT [MINUTES] [N] [CLASSIFIER] [TRAIN FLAGS...]
# CLASSIFIER: a classifier file from an earlier `ldm eval --train-classifier` (the peer must be
# judged by the same one); without it ('' or absent), one is trained and written to
# OUT/classifier.safetensors. TRAIN FLAGS go to `ldm train` after the preset (e.g. --set ...).
# STAGES=train (train and convert only) or STAGES=eval (judge OUT/fashion-mnist.safetensors from an
# earlier train) split the work over two device calls; the default does both.
set -euo pipefail
data="fashion-mnist:$1"; out=$2; minutes=${3:-10}; n=${4:-10000}; classifier=${5:-}
shift $(( $# < 5 ? $# : 5 )); extra=("$@")
run=${RUN:-/tmp/q1-ldmkit}
stages=${STAGES:-train,eval}
command -v ldm >/dev/null || ldm() { python3 -m ldmkit.cli "$@"; }  # a checkout without pip install
mkdir -p "$out"
if [[ $stages == *train* ]]; then
if [ -e "$run" ]; then
    # ldm train resumes a run folder that has a checkpoint, and a resumed run is not a Q1 run of
    # the budget: it keeps whatever the folder's earlier runs trained.
    echo "run folder $run exists; Q1 trains from scratch: remove it or set RUN to a new folder" >&2
    exit 2
fi
start=$(date +%s.%N)
train() { ldm train --data "$data" --preset fashion-mnist --out "$run" --quiet "${extra[@]}" "$@" 2>&1 | tee -a "$out/train.log"; }
if ! train --time-limit "$minutes"; then
    # CUDA graphs are the preset's default; if they fail on this machine, resume without them
    # inside what is left of the same budget.
    left=$(python3 -c "import time; print(max(0.5, $minutes - (time.time() - $start) / 60))")
    echo "retrying without CUDA graphs for the remaining $left minutes" | tee -a "$out/train.log"
    train --time-limit "$left" --set compile_mode=default
fi
python3 -c "import json, time; print(json.dumps({'train_wall_seconds': time.time() - $start}))" | tee "$out/train_time.json"
cp "$run/config.json" "$out/config.json"
last=$(ls "$run/samples" 2>/dev/null | grep step_ | tail -1 || true)  # none if stopped before the first grid
[ -n "$last" ] && cp "$run/samples/$last" "$out/last_samples.png"
ldm convert "$run" "$out/fashion-mnist.safetensors" --dtype fp16
fi
[[ $stages == *eval* ]] || exit 0
judge=(--train-classifier --classifier "$out/classifier.safetensors")
[ -n "$classifier" ] && judge=(--classifier "$classifier")
ldm eval --model "$out/fashion-mnist.safetensors" --data "$data" "${judge[@]}" --features classifier \
    --vae --cfg ${CFGS:-1.0 1.5 2.0 3.0 4.0} --n "$n" --out "$out/report_ldmkit.json" 2>&1 | tee "$out/eval.log"
