#!/usr/bin/env bash
# The multi-GPU checks v17 left (benchmarks/NOTES.md v18), and where the seconds after training go.
#
#   OUT=/some/folder bash benchmarks/multi_gpu_checks.sh PART      # from the repository root
#
# PART 1 (~6 min on a fresh 4-GPU machine): the VAE's GAN phase under torchrun on 2 GPUs; the
#   emoji UNet's whole-step graph on 1, 2 and 4 GPUs (scaling); `ldm train` on one GPU under
#   exit_probe.py, then again with the compile workers shut down before exit.
# PART 2 (~7 min): the base UNet's plain step (GradientMean) against the graph on 4 GPUs; `ldm
#   train --precision fp16` under torchrun on 2 GPUs, under exit_probe.py.
# Each command's output goes to its own file under $OUT; a summary of the lines that matter last.
set -u
PART=${1:-1}
ROOT=$PWD
export PYTHONPATH=$ROOT/src PYTHONUNBUFFERED=1
NGPU=$(nvidia-smi -L | wc -l)
cd "$ROOT/benchmarks" || exit 1

run() {  # run NAME SECONDS COMMAND...: output to $OUT/NAME.txt, with start/end stamps and rc
    local name=$1 limit=$2; shift 2
    echo "start $(date +%s.%N)" >"$OUT/$name.txt"
    timeout "$limit" "$@" >>"$OUT/$name.txt" 2>&1
    echo "rc=$? exited $(date +%s.%N)" >>"$OUT/$name.txt"
}

emoji_train() {  # emoji_train RUN_DIR [more flags]: a short `ldm train`, both stages compiled
    local dir=$1; shift
    echo -- train --data emoji --preset emoji --vae-steps 100 --steps 300 --quiet --set log_every=100 --out "$dir" "$@"
}

if [ "$PART" = 1 ]; then
    nvidia-smi topo -m >"$OUT/machine.txt" 2>&1
    run gan_torchrun2 170 torchrun --nproc_per_node 2 step_graph_check.py --stage vae --presets emoji --gan \
        --steps 200 --out "$OUT/gan_torchrun2.json"
    run emoji_graph_1gpu 100 python3 step_graph_check.py --presets emoji --graph-only --steps 300 \
        --out "$OUT/emoji_graph_1gpu.json"
    run emoji_graph_2gpu 100 torchrun --nproc_per_node 2 step_graph_check.py --presets emoji --graph-only \
        --steps 300 --out "$OUT/emoji_graph_2gpu.json"
    if [ "$NGPU" -ge 4 ]; then
        run emoji_graph_4gpu 100 torchrun --nproc_per_node 4 step_graph_check.py --presets emoji --graph-only \
            --steps 300 --out "$OUT/emoji_graph_4gpu.json"
    fi
    # shellcheck disable=SC2046
    run exit_probe_1gpu 150 python3 exit_probe.py $(emoji_train /tmp/exit_probe_a)
    # shellcheck disable=SC2046
    run exit_probe_1gpu_shutdown 120 python3 exit_probe.py --shutdown-workers $(emoji_train /tmp/exit_probe_b)
else
    run base_plain_vs_graph_4gpu 420 torchrun --nproc_per_node "$NGPU" step_graph_check.py --presets base \
        --check-steps 10 --warmup 5 --steps 60 --out "$OUT/base_plain_vs_graph.json"
    # shellcheck disable=SC2046
    run fp16_torchrun2_exit_probe 130 torchrun --nproc_per_node 2 exit_probe.py \
        $(emoji_train /tmp/exit_probe_fp16 --precision fp16)
fi
cd "$OUT" && for f in *.txt; do
    echo "== $f"
    grep -h -E '^(stage|diffusion|vae) |img/s|img_per_s [0-9]|exit_probe|rc=|start |Error|error' "$f" | tail -14
done
