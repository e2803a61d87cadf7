#!/usr/bin/env bash
# `ldm train` stopped and resumed on a GPU (compiled, whole-step CUDA graphs): Ctrl-C (SIGINT) after
# STOP_AT seconds must save and exit 130; a second `ldm train` into the folder while the first runs
# must be refused (exit 2, the run folder's lock); the same command again resumes from the
# checkpoint and, with --time-limit, exits 0. Prints each command's exit status, time and last lines.
#   OUT=DIR bash benchmarks/train_stop_check.sh [STOP_AT]
set -uo pipefail
OUT=${OUT:?set OUT to a folder for the logs}
STOP_AT=${1:-90}
RUN=/tmp/ldm_stop_run
rm -rf "$RUN"
mkdir -p "$OUT"
TRAIN=(python3 -m ldmkit.cli train --data emoji --preset emoji --vae-steps 200 --steps 20000 --out "$RUN" --quiet)
t0=$SECONDS
"${TRAIN[@]}" > "$OUT/first.log" 2>&1 &
first=$!
sleep 20
"${TRAIN[@]}" > "$OUT/second.log" 2>&1
echo "== second ldm train while the first runs: exit $? in $((SECONDS - t0 - 20)) s"
tail -2 "$OUT/second.log"
sleep $((STOP_AT - 20 > 0 ? STOP_AT - 20 : 1))
kill -INT "$first"
wait "$first"
echo "== first ldm train, Ctrl-C after ${STOP_AT} s: exit $? at $((SECONDS - t0)) s"
tail -4 "$OUT/first.log"
t1=$SECONDS
"${TRAIN[@]}" --time-limit 1.5 > "$OUT/resume.log" 2>&1
echo "== the same command with --time-limit 1.5: exit $? in $((SECONDS - t1)) s"
grep -m1 resuming "$OUT/resume.log"
tail -3 "$OUT/resume.log"
ls "$RUN"
