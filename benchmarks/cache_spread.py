"""Does a training step compiled from inductor's on-disk caches run as fast as a freshly
compiled one? Runs `train_speed.py` (one UNet mode, one batch) in consecutive processes on one
machine, each with its own inductor cache environment, and tabulates ms a step per process.

Why: NOTES v14 found the emoji UNet's compiled training step spreading 9.9-16.3 ms across six
processes of the same code, the one fast process being the one that compiled rather than loaded
inductor's cache. Variants (`--order`, comma-separated, run in that order):

    plain     caches as a user has them (the first process on a fresh machine fills them)
    no-aot    TORCHINDUCTOR_AUTOGRAD_CACHE=0: AOTAutograd's cache off, inductor's FX graph cache kept
    no-cache  TORCHINDUCTOR_FORCE_DISABLE_CACHES=1: every cache off, a fresh compile each time

    python3 benchmarks/cache_spread.py --order plain,plain,no-aot,no-cache --out result.json
    python3 benchmarks/cache_spread.py --smoke --out result.json   # CPU, eager: checks the script runs

Each process's stderr is kept beside the JSON (`--logs`), and the lines in it that say CUDA
graphs were skipped, and AOTAutograd's cache hits and misses, are counted (inductor's
`perf_hints` log and AOTAutograd's cache log are turned on for that).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "plain": {},
    "no-aot": {"TORCHINDUCTOR_AUTOGRAD_CACHE": "0"},
    "no-cache": {"TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"},
}
# inductor's hints (they say when CUDA graphs are skipped) and AOTAutograd's cache decisions
LOGS = "perf_hints,torch._functorch._aot_autograd.autograd_cache"
COUNTED = {"cudagraph_skips": "skipping cudagraphs", "aot_bypassed": "Bypassing autograd cache",
           "aot_hits": "AOTAutograd cache hit",
           "aot_misses": "AOTAutograd cache miss"}


def machine_state() -> dict:
    """The host's load average and, where nvidia-smi answers, the GPU's clock, temperature and
    power: what else could make one process slower than the next."""
    state: dict = {"loadavg_1min": os.getloadavg()[0]}
    try:
        query = "clocks.sm,clocks.mem,temperature.gpu,power.draw,clocks_throttle_reasons.active"
        line = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        state.update(zip(query.split(","), (v.strip() for v in line.split(","))))
    except (OSError, IndexError, subprocess.SubprocessError):
        pass  # no GPU tools here (the CPU smoke run)
    return state


def run_one(index: int, variant: str, args, logs: Path) -> dict:
    """One `train_speed.py` process under `variant`'s environment: its row, wall time and the
    count of CUDA-graph skip messages in its stderr."""
    env = {**os.environ, **VARIANTS[variant], "TORCH_LOGS": LOGS}
    out = logs / f"p{index:02d}_{variant}.json"
    cmd = [sys.executable, str(HERE / "train_speed.py"), "--preset", args.preset, "--channels", str(args.channels),
           "--modes", args.mode, "--vae-modes", "", "--layouts", "forced", "--steps", str(args.steps),
           "--out", str(out)]
    if args.smoke:
        cmd.append("--smoke")
    if args.gpu_busy:
        cmd.append("--gpu-busy")
    before = machine_state()
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - started
    (logs / f"p{index:02d}_{variant}.stderr").write_text(done.stderr)
    row = {"process": index, "variant": variant, "env": VARIANTS[variant], "wall_s": wall, "rc": done.returncode,
           "before": before, "after": machine_state(),
           **{name: sum(text in line for line in done.stderr.splitlines()) for name, text in COUNTED.items()}}
    if done.returncode == 0 and out.exists():
        unet = [r for r in json.loads(out.read_text())["rows"] if r["stage"] == "unet"]
        if unet:
            row.update({k: unet[0].get(k) for k in ("ms_per_step", "img_per_s", "warmup_s", "batch", "error",
                                                     "gpu_busy_ms_per_step", "profiled_wall_ms_per_step")})
    else:
        row["error"] = done.stderr.strip().splitlines()[-1:] or ["no output"]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--order", default="plain,plain,no-aot,no-cache,plain,no-aot,no-cache",
                   help=f"variants, one process each, in this order; of: {', '.join(VARIANTS)}")
    p.add_argument("--preset", default="emoji", help="training preset (train_speed.py --preset)")
    p.add_argument("--channels", type=int, default=3, help="image channels (train_speed.py --channels)")
    p.add_argument("--mode", default="reduce-overhead", help="the UNet's compile mode (train_speed.py --modes)")
    p.add_argument("--steps", type=int, default=300, help="timed steps a process")
    p.add_argument("--gpu-busy", action="store_true", help="each process also profiles 20 steps: GPU busy ms a step")
    p.add_argument("--timeout", type=float, default=240, help="seconds before one process is given up")
    p.add_argument("--out", required=True, help="JSON file for the results; the logs go beside it")
    p.add_argument("--smoke", action="store_true", help="CPU, eager, tiny step counts: check that the script runs")
    args = p.parse_args(argv)
    order = [v.strip() for v in args.order.split(",") if v.strip()]
    unknown = sorted(set(order) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    logs = out.with_suffix("")
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, variant in enumerate(order, 1):
        try:
            rows.append(run_one(index, variant, args, logs))
        except subprocess.TimeoutExpired:
            rows.append({"process": index, "variant": variant, "error": f"over {args.timeout:.0f} s"})
        print(json.dumps(rows[-1]), flush=True)
        out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "args": vars(args), "rows": rows}, indent=2))
    print(f"\n{'#':>2} {'variant':9} {'ms/step':>8} {'img/s':>8} {'warmup s':>9} {'wall s':>7} {'cg skips':>8} "
          f"{'aot hit/miss':>12} {'GPU busy':>8} {'load':>5} {'SM MHz':>6} {'temp':>4}")
    for r in rows:
        if "ms_per_step" in r and r["ms_per_step"] is not None:
            print(f"{r['process']:>2} {r['variant']:9} {r['ms_per_step']:>8.2f} {r['img_per_s']:>8.0f} "
                  f"{r['warmup_s']:>9.1f} {r['wall_s']:>7.1f} {r['cudagraph_skips']:>8} "
                  f"{r['aot_hits']:>6}/{r['aot_misses']:<5} {r.get('gpu_busy_ms_per_step') or float('nan'):>8.2f} "
                  f"{r['before']['loadavg_1min']:>5.1f} {r['before'].get('clocks.sm', '-'):>6} "
                  f"{r['before'].get('temperature.gpu', '-'):>4}")
        else:
            print(f"{r['process']:>2} {r['variant']:9} ERROR {str(r.get('error'))[:80]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
