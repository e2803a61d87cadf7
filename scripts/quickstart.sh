#!/usr/bin/env bash
# The README's first command: train the `tiny` preset on the built-in emoji dataset (a few
# minutes on a laptop CPU) and write a class grid. `--smoke` runs a few steps only (CI).
set -euo pipefail
run=runs/emoji-tiny
extra=()
if [ "${1:-}" = "--smoke" ]; then
    run=runs/smoke
    rm -rf "$run"
    extra=(--vae-steps 10 --steps 10 --quiet)
fi
ldm train --data emoji --preset tiny --out "$run" "${extra[@]}"
ldm generate --model "$run" --n 36 --steps 25 --out samples/emoji
echo "class grid: samples/emoji/grid.png (one column per emoji category, 4 seeds each)"
