"""The whole-step CUDA graph (src/ldmkit/train/step_graph.py) against the step it replaces
(torch.compile "reduce-overhead": CUDA graphs for the model's forward and backward), in one
process: do they train the same, how fast is each, how much memory does each hold?

For each preset, two trainers of `--stage` (the diffusion stage's `DiffusionTrainer` or the VAE
stage's `VAETrainer`) from the same seed (`ldm train`'s own, compiled as it compiles them),
`--check-steps` steps each on the same batches, then:
- the per-step losses against each other (largest relative difference);
- what the steps changed: |(w_graph - w0) - (w_plain - w0)| / |w_plain - w0| over all parameters,
  and the same for the diffusion stage's EMA (bf16 steps from differently compiled graphs differ
  by rounding);
- with `--repeat-plain`, a second plain trainer against the first: two compiles of the same step
  differ by rounding too, and that is the scale for the graph's differences;
- `--steps` more steps timed (the host reads the losses every SETTLE_EVERY steps, as training
  does), and the peak memory allocated over each trainer's life.

    python3 benchmarks/step_graph_check.py --presets emoji --out result.json
    python3 benchmarks/step_graph_check.py --stage vae --presets fashion-mnist,emoji --out vae.json
    python3 benchmarks/step_graph_check.py --smoke    # CPU, tiny, eager: checks the script runs

Under torchrun (`torchrun --nproc_per_node N benchmarks/step_graph_check.py ...`) the trainers
are data-parallel as `ldm train`'s are (the gradients' all-reduce, grad_sync.py, after the plain
step's backward, and inside the graph with the rest of the step); the batch is the global one,
each row says whether every rank ended its compared steps with the same weights, and rank 0
prints and writes.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import (  # noqa: E402
    join_torchrun,
    settling,
    synthetic_trainer,
    synthetic_vae_trainer,
    time_steps,
    training_device,
    write_result,
)

from ldmkit.train.batches import rank_slice  # noqa: E402
from ldmkit.train.config import preset_config  # noqa: E402
from ldmkit.train.distributed import cleanup, gather_objects  # noqa: E402

CHANNELS = {"emoji": 3, "fashion-mnist": 1, "tiny": 3, "base": 3}


def make_trainer(args, preset: str, *, graph: bool, device: torch.device,
                 run_dir: Path) -> tuple[Any, Callable[[], Any], torch.nn.Module, torch.nn.Module | None]:
    """(trainer, its step, the module it trains, that module's EMA or None), from seed 0."""
    config = preset_config(preset)
    config.compile, config.compile_mode, config.step_graph = not args.smoke, "reduce-overhead", graph
    if args.weight_decay is not None:  # AdamW's decay on the weights, not on biases and norm gains
        config.vae.weight_decay = config.diffusion.weight_decay = args.weight_decay
    channels = CHANNELS.get(preset, 3)
    torch.manual_seed(0)  # the same initial weights on both sides
    if args.stage == "vae":
        if args.batch:
            config.vae.batch_size = args.batch
        config.vae.perceptual_weight = 0.0  # LPIPS is not shipped: as `ldm train` without the lpips package
        if args.gan:
            config.vae.disc_start = 0  # the patch GAN from the first step: no whole-step graph on either side
        trainer = synthetic_vae_trainer(config, channels, device, run_dir)
        images = torch.rand((trainer.cfg.batch_size, channels, config.image_size, config.image_size),
                            generator=torch.Generator().manual_seed(1)).to(device) * 2 - 1
        images = rank_slice(images, trainer.dist.rank, trainer.dist.world_size)  # this rank's share
        return trainer, lambda: trainer.train_step(images), trainer.vae, None
    if args.batch:
        config.diffusion.batch_size = args.batch
    trainer = synthetic_trainer(config, channels, device, run_dir)
    return trainer, trainer.train_step, trainer.unet, trainer.ema.module


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in module.parameters()])


def run_side(args, preset: str, graph: bool, device: torch.device,
             run_dir: Path) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """One trainer's row, and what its steps moved the parameters and the EMA by (CPU tensors)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer, step, module, ema = make_trainer(args, preset, graph=graph, device=device, run_dir=run_dir)
    w0 = flat(module)
    started = time.perf_counter()
    for _ in range(args.check_steps):
        step()
    losses = trainer.guard.settle(trainer.step, None)
    first_s = time.perf_counter() - started
    after = flat(module)
    moved, ema_moved = after - w0, (flat(ema) - w0 if ema is not None else torch.zeros(1))
    ranks = trainer.dist.world_size
    disc = getattr(trainer, "disc", None)  # the VAE stage's discriminator, with --gan
    weights = torch.cat([after, flat(disc)]) if disc is not None else after
    digests = gather_objects(hashlib.sha256(weights.numpy().tobytes()).hexdigest(), trainer.dist)
    timed = time_steps(settling(trainer, step), args.warmup, args.steps, device)
    row = {"stage": args.stage, "preset": preset, "step_graph": graph, "batch": trainer.cfg.batch_size,
           "ranks": ranks, "ranks_agree": len(set(digests)) == 1, "model": type(trainer.model).__name__,
           "captured": bool(trainer.step_graph is not None and trainer.step_graph.captured),
           "capture_failed": trainer.step_graph.failed if trainer.step_graph is not None else None,
           "check_steps_s": first_s, "losses": losses, **timed,
           "img_per_s": trainer.cfg.batch_size * 1e3 / timed["ms_per_step"],
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
    del trainer, step, module, ema
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
    p.add_argument("--stage", choices=("diffusion", "vae"), default="diffusion", help="which stage's trainer")
    p.add_argument("--presets", default="emoji", help="training presets, comma-separated (that stage of each)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: each preset's)")
    p.add_argument("--check-steps", type=int, default=30, help="steps compared between the two trainers")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="both stages' AdamW weight decay (default: the preset's, 0)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=300, help="timed steps")
    p.add_argument("--repeat-plain", action="store_true",
                   help="also a second plain trainer, compared with the first: how far two compiles of the same "
                        "step drift apart (the scale for the graph's differences)")
    p.add_argument("--gan", action="store_true",
                   help="--stage vae with the patch GAN from the first step (both trainers step plainly: the GAN "
                        "is not captured); under torchrun, whether the ranks' autoencoders and discriminators agree")
    p.add_argument("--graph-only", action="store_true",
                   help="time the whole-step graph alone (no plain trainer, no comparison): a baseline in one compile")
    p.add_argument("--deadline", type=float, default=420, help="seconds after which no new preset starts")
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny, eager: check that the script runs")
    args = p.parse_args()
    started = time.time()
    device = training_device(args.smoke)
    dist = join_torchrun("cpu" if args.smoke else "cuda")
    if dist is not None:
        device = dist.device
    main_rank = dist is None or dist.is_main
    if args.smoke:
        args.presets, args.batch, args.check_steps, args.warmup, args.steps = "tiny", 8, 3, 1, 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            if time.time() - started > args.deadline:
                rows.append({"preset": preset, "error": "skipped: deadline"})
                continue
            try:
                if args.graph_only:
                    rows.append(run_side(args, preset, True, device, Path(tmp))[0])
                else:
                    plain = run_side(args, preset, False, device, Path(tmp))
                    graphed = run_side(args, preset, True, device, Path(tmp))
                    rows += [plain[0], {**graphed[0], **compare(plain, graphed)}]
                if args.repeat_plain and not args.graph_only:
                    again = run_side(args, preset, False, device, Path(tmp))
                    rows.append({**again[0], "repeat": True, **compare(plain, again)})
            except Exception as err:  # one failing preset must not lose the others
                if dist is not None:
                    raise  # a rank that went on alone would wait in the next collective for ever
                rows.append({"preset": preset, "error": repr(err)[:400]})
            if main_rank:
                print(json.dumps(rows[-1]), flush=True)
                write_result(args.out, args.presets, device, rows)  # as it goes: a killed run keeps its rows
    if dist is not None:
        cleanup()  # leave the process group before exiting (NCCL warns otherwise)
    if not main_rank:
        return 0
    print(f"\n{'stage':9} {'preset':13} {'step':7} {'batch':>5} {'ms/step':>8} {'img/s':>8} {'peak GiB':>8} "
          f"{'first s':>7} {'ranks':>5} {'agree':>5} {'loss rel':>9} {'update rel':>10} {'ema rel':>8}")
    for r in rows:
        if "error" in r:
            print(f"{args.stage:9} {r['preset']:13} ERROR {r['error'][:100]}")
            continue
        kind = "plain2" if r.get("repeat") else "plain"
        if r["step_graph"]:
            kind = "graph" if r["captured"] else "graph?"  # ?: asked for, not captured
        extra = (f" {r['loss_max_rel_diff']:>9.2e} {r['update_rel_l2']:>10.2e} {r['ema_update_rel_l2']:>8.2e}"
                 if "speedup" in r else "")
        print(f"{r['stage']:9} {r['preset']:13} {kind:7} {r['batch']:>5} {r['ms_per_step']:>8.2f} "
              f"{r['img_per_s']:>8.0f} {r['peak_mem_gib'] or 0:>8.2f} {r['check_steps_s']:>7.1f} "
              f"{r['ranks']:>5} {str(r['ranks_agree']):>5}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
