#!/usr/bin/env bash
# The multi-GPU checks v17 left (benchmarks/NOTES.md v18), and where the seconds after training go.
#
#   OUT=/some/folder bash benchmarks/multi_gpu_checks.sh PART      # from the repository root
#
# PART 1 (~6 min on a fresh 4-GPU machine): the VAE's GAN phase under torchrun on 2 GPUs; the
#   emoji UNet's whole-step graph on 1, 2 and 4 GPUs (scaling); `ldm train` on one GPU under
#   exit_probe.py, then again with the compile workers shut down before exit.
# PART gan (~4 min, 4 GPUs): the VAE's GAN-phase step (emoji and base presets, one GPU each), the
#   library in src/ against the one in $BASE_SRC (another checkout's src/, e.g. `git archive HEAD
#   src | tar -x -C benchmarks/_base`), the four side by side on GPUs 0-3.
# PART 3 (~8 min, 4 GPUs): on GPU 0, `ldm train` (short) and `ldm generate` under exit_probe.py,
#   each exiting as a plain Python program and as `ldm` does now (--ldm-exit); beside it on GPUs 2-3,
#   `ldm train --precision fp16` under torchrun (--ldm-exit), then the base UNet's plain step
#   (GradientMean, no DDP) against the whole-step graph under torchrun.
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
elif [ "$PART" = gan ]; then
    : "${BASE_SRC:?set BASE_SRC to the src/ of the checkout to compare with (see the header of this script)}"
    gan() {  # gan GPU SRC NAME PRESET STEPS: the GAN-phase VAE step alone, timed
        CUDA_VISIBLE_DEVICES=$1 PYTHONPATH=$2 run "$3" 240 python3 step_graph_check.py --stage vae --gan \
            --graph-only --presets "$4" --check-steps 5 --warmup 5 --steps "$5" --out "$OUT/$3.json"
    }
    gan 0 "$BASE_SRC" gan_emoji_before emoji 200 &
    gan 1 "$ROOT/src" gan_emoji_after emoji 200 &
    gan 2 "$BASE_SRC" gan_base_before base 30 &
    gan 3 "$ROOT/src" gan_base_after base 30 &
    wait
else
    (
        export CUDA_VISIBLE_DEVICES=2,3
        # shellcheck disable=SC2046
        run fp16_torchrun2 170 torchrun --nproc_per_node 2 --master_port 29517 exit_probe.py --ldm-exit \
            $(emoji_train /tmp/exit_probe_fp16 --precision fp16)
        run base_plain_vs_graph_torchrun2 330 torchrun --nproc_per_node 2 --master_port 29518 \
            step_graph_check.py --presets base --check-steps 10 --warmup 5 --steps 60 \
            --out "$OUT/base_plain_vs_graph_torchrun2.json"
    ) &
    (
        export CUDA_VISIBLE_DEVICES=0
        # shellcheck disable=SC2046
        run exit_train_plain 170 python3 exit_probe.py $(emoji_train /tmp/exit_probe_d)
        # shellcheck disable=SC2046
        run exit_train_ldm 120 python3 exit_probe.py --ldm-exit $(emoji_train /tmp/exit_probe_e)
        for i in 1 2; do
            run "exit_generate_plain$i" 60 python3 exit_probe.py generate --model emoji --n 40 --out /tmp/gen_a
            run "exit_generate_ldm$i" 60 python3 exit_probe.py --ldm-exit generate --model emoji --n 40 --out /tmp/gen_b
        done
    ) &
    wait
fi
cd "$OUT" && for f in *.txt; do
    echo "== $f"
    grep -h -E '^(stage|diffusion|vae) |img/s|img_per_s [0-9]|exit_probe|rc=|start |Error|error' "$f" | tail -14
done
