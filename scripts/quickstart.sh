#!/usr/bin/env bash
# Train your own model on the CPU: the `tiny` preset on the built-in emoji dataset (5-10 minutes
# on a laptop), then a class grid from it. `--smoke` runs a few steps only (CI).
set -euo pipefail
run=runs/emoji-tiny
extra=()
if [ "${1:-}" = "--smoke" ]; then
    run=runs/smoke
    rm -rf "$run"
    extra=(--vae-steps 10 --steps 10 --quiet)
fi
ldm train --data emoji --preset tiny --out "$run" "${extra[@]}"
ldm generate --model "$run" --n 40 --steps 25 --out samples/emoji-tiny
echo "class grid: samples/emoji-tiny/grid.png (one column per emoji category, 4 seeds each)"
