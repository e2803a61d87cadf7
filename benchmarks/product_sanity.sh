#!/usr/bin/env bash
# The product's main path on a GPU, end to end, at the current commit: `ldm train` on the built-in
# emoji set (compiled, whole-step CUDA graphs), the same command again (nothing to do), `ldm generate` compiled, the same job again with
# --skip-existing (nothing to make), and `ldm eval --samples` on the folder it wrote. Prints each
# command's last lines and writes the logs, the grid and samples.json under OUT.
#   OUT=DIR bash benchmarks/product_sanity.sh [UNET_STEPS]
set -uo pipefail
OUT=${OUT:?set OUT to a folder for the logs}
STEPS=${1:-600}
RUN=/tmp/ldm_sanity_run GEN=/tmp/ldm_sanity_gen
rm -rf "$RUN" "$GEN"
mkdir -p "$OUT"
step() {  # name, command...: run it, keep its log, say its exit status and time
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - t0)) s"
  tail -4 "$OUT/$name.log"
}
step train python3 -m ldmkit.cli train --data emoji --preset emoji --vae-steps 200 --steps "$STEPS" --out "$RUN" --quiet
step train_again python3 -m ldmkit.cli train --data emoji --preset emoji --vae-steps 200 --steps "$STEPS" --out "$RUN" --quiet
step generate python3 -m ldmkit.cli generate --model "$RUN" --n 300 --compile on --out "$GEN" --quiet
step generate_again python3 -m ldmkit.cli generate --model "$RUN" --n 300 --compile on --out "$GEN" --quiet --skip-existing
step eval python3 -m ldmkit.cli eval --samples "$GEN" --data emoji --features classifier --train-classifier \
  --classifier-epochs 2 --n 300 --out "$OUT/eval.json" --quiet
cp "$GEN/samples.json" "$OUT/" 2>/dev/null
python3 - "$GEN/grid.png" "$OUT/grid_rows.png" <<'PY'
import sys
from PIL import Image
grid = Image.open(sys.argv[1])
grid.crop((0, 0, grid.width, min(grid.height, 6 * 66 + 2))).save(sys.argv[2])  # the first rows only
PY
