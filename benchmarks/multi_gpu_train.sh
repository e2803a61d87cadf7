#!/usr/bin/env bash
# `ldm train` under torchrun on one host's GPUs, end to end (benchmarks/NOTES.md v17): the emoji
# preset stopped by its time limit, resumed by the same command, then sampled; and one GPU of the
# same machine timing the same UNet step alone (the whole-step graph), for the scaling figure.
#
#   OUT=/some/folder bash benchmarks/multi_gpu_train.sh [GPUS]      # from the repository root
#
# Writes each command's output, the run's log.jsonl and a sample grid under $OUT; prints the
# img/s lines last. The step's own check (losses, rank agreement) is step_graph_check.py under
# torchrun.
set -u
GPUS=${1:-2}
RUN=/tmp/ldm_multi_gpu_run
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
rm -rf "$RUN"
train() {  # train OUTPUT_FILE [more ldm train flags]
    local out=$1; shift
    echo "start $(date +%s.%N)" >"$out"
    timeout 200 torchrun --nproc_per_node "$GPUS" -m ldmkit.cli train --data emoji --preset emoji \
        --vae-steps 300 --steps 3000 --out "$RUN" "$@" >>"$out" 2>&1
    echo "rc=$? exited $(date +%s.%N)" >>"$out"
}

train "$OUT/train1.txt" --time-limit 2.3
train "$OUT/train2_resume.txt"
cp "$RUN/log.jsonl" "$OUT/train_log.jsonl" 2>/dev/null
timeout 60 python3 -m ldmkit.cli generate --model "$RUN" --n 40 --out "$OUT/generated" >"$OUT/generate.txt" 2>&1
echo "rc=$?" >>"$OUT/generate.txt"
rm -f "$OUT"/generated/[0-9]*.png  # the grid is enough
(cd benchmarks && CUDA_VISIBLE_DEVICES=0 timeout 130 python3 step_graph_check.py --presets emoji --graph-only \
    --steps 300 --out "$OUT/one_gpu_emoji.json" >"$OUT/one_gpu_emoji.txt" 2>&1; echo "rc=$?" >>"$OUT/one_gpu_emoji.txt")
grep -h -E 'img_per_s|img/s|resuming|stopped|replays|rc=|exited|start' "$OUT"/train1.txt "$OUT"/train2_resume.txt
tail -3 "$OUT/one_gpu_emoji.txt"
