"""The diffusion stage's whole-step CUDA graph (src/ldmkit/train/step_graph.py) against the step
it replaces (torch.compile "reduce-overhead": CUDA graphs for the UNet's forward and backward),
in one process: do they train the same, how fast is each, how much memory does each hold?

For each preset, two `DiffusionTrainer`s from the same seed (`ldm train`'s own, compiled as it
compiles them), `--check-steps` steps each on the same batches, then:
- the per-step losses against each other (largest relative difference);
- what the steps changed: |(w_graph - w0) - (w_plain - w0)| / |w_plain - w0| over all parameters,
  and the same for the EMA (bf16 steps from differently compiled graphs differ by rounding);
- with `--repeat-plain`, a second plain trainer against the first: two compiles of the same step
  differ by rounding too, and that is the scale for the graph's differences;
- `--steps` more steps timed (the host reads the losses every SETTLE_EVERY steps, as training
  does), and the peak memory allocated over each trainer's life.

    python3 benchmarks/step_graph_check.py --presets emoji --out result.json
    python3 benchmarks/step_graph_check.py --smoke    # CPU, tiny, eager: checks the script runs
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import settling, synthetic_trainer, time_steps, training_device, write_result  # noqa: E402

from ldmkit.train.config import preset_config  # noqa: E402
from ldmkit.train.diffusion_stage import DiffusionTrainer  # noqa: E402

CHANNELS = {"emoji": 3, "fashion-mnist": 1, "tiny": 3, "base": 3}


def make_trainer(preset: str, batch: int | None, *, graph: bool, device: torch.device, run_dir: Path,
                 compile_on: bool) -> DiffusionTrainer:
    config = preset_config(preset)
    config.compile, config.compile_mode, config.step_graph = compile_on, "reduce-overhead", graph
    if batch:
        config.diffusion.batch_size = batch
    torch.manual_seed(0)  # the same initial weights on both sides
    return synthetic_trainer(config, CHANNELS.get(preset, 3), device, run_dir)


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in module.parameters()])


def run_side(args, preset: str, graph: bool, device: torch.device,
             run_dir: Path) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """One trainer's row, and what its steps moved the parameters and the EMA by (CPU tensors)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = make_trainer(preset, args.batch, graph=graph, device=device, run_dir=run_dir, compile_on=not args.smoke)
    w0 = flat(trainer.unet)
    started = time.perf_counter()
    for _ in range(args.check_steps):
        trainer.train_step()
    losses = trainer.guard.settle(trainer.step, None)
    first_s = time.perf_counter() - started
    moved, ema_moved = flat(trainer.unet) - w0, flat(trainer.ema.module) - w0
    timed = time_steps(settling(trainer, trainer.train_step), args.warmup, args.steps, device)
    row = {"preset": preset, "step_graph": graph, "batch": trainer.cfg.batch_size,
           "captured": bool(trainer.step_graph is not None and trainer.step_graph.captured),
           "capture_failed": trainer.step_graph.failed if trainer.step_graph is not None else None,
           "check_steps_s": first_s, "losses": losses, **timed,
           "img_per_s": trainer.cfg.batch_size * 1e3 / timed["ms_per_step"],
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
    del trainer
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row, moved, ema_moved


def compare(plain: tuple, graphed: tuple) -> dict[str, float]:
    (a, moved_a, ema_a), (b, moved_b, ema_b) = plain, graphed
    rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a["losses"], b["losses"])]
    return {"loss_max_rel_diff": max(rel) if rel else float("nan"),
            "update_rel_l2": ((moved_b - moved_a).norm() / moved_a.norm()).item(),
            "ema_update_rel_l2": ((ema_b - ema_a).norm() / ema_a.norm().clamp_min(1e-30)).item(),
            "speedup": a["ms_per_step"] / b["ms_per_step"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="emoji", help="training presets, comma-separated (the UNet stage of each)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: each preset's)")
    p.add_argument("--check-steps", type=int, default=30, help="steps compared between the two trainers")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=300, help="timed steps")
    p.add_argument("--repeat-plain", action="store_true",
                   help="also a second plain trainer, compared with the first: how far two compiles of the same "
                        "step drift apart (the scale for the graph's differences)")
    p.add_argument("--deadline", type=float, default=420, help="seconds after which no new preset starts")
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny, eager: check that the script runs")
    args = p.parse_args()
    started = time.time()
    device = training_device(args.smoke)
    if args.smoke:
        args.presets, args.batch, args.check_steps, args.warmup, args.steps = "tiny", 8, 3, 1, 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            if time.time() - started > args.deadline:
                rows.append({"preset": preset, "error": "skipped: deadline"})
                continue
            try:
                plain = run_side(args, preset, False, device, Path(tmp))
                graphed = run_side(args, preset, True, device, Path(tmp))
                rows += [plain[0], {**graphed[0], **compare(plain, graphed)}]
                if args.repeat_plain:
                    again = run_side(args, preset, False, device, Path(tmp))
                    rows.append({**again[0], "repeat": True, **compare(plain, again)})
            except Exception as err:  # one failing preset must not lose the others
                rows.append({"preset": preset, "error": repr(err)[:400]})
            print(json.dumps(rows[-1]), flush=True)
            write_result(args.out, args.presets, device, rows)  # as it goes: a killed run keeps its rows
    print(f"\n{'preset':8} {'step':7} {'batch':>5} {'ms/step':>8} {'img/s':>8} {'peak GiB':>8} {'first s':>7} "
          f"{'loss rel':>9} {'update rel':>10} {'ema rel':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:8} ERROR {r['error'][:100]}")
            continue
        kind = "plain2" if r.get("repeat") else "plain"
        if r["step_graph"]:
            kind = "graph" if r["captured"] else "graph?"  # ?: asked for, not captured
        extra = (f" {r['loss_max_rel_diff']:>9.2e} {r['update_rel_l2']:>10.2e} {r['ema_update_rel_l2']:>8.2e}"
                 if "speedup" in r else "")
        print(f"{r['preset']:8} {kind:7} {r['batch']:>5} {r['ms_per_step']:>8.2f} {r['img_per_s']:>8.0f} "
              f"{r['peak_mem_gib'] or 0:>8.2f} {r['check_steps_s']:>7.1f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
