"""Where the time of a small UNet's training step goes, and what a whole-step CUDA graph buys.

`train_speed.py` times the trainer as it is; this script times variants of the same step on the
same preset (synthetic latents already on the GPU) to decide what to build:

- `graphs`: `DiffusionTrainer.train_step` as shipped (torch.compile "reduce-overhead": forward
  and backward each replayed as CUDA graphs; batch draws, clipping, AdamW, EMA and the
  finite-loss skip queued eagerly with no host sync; the host reads the losses every
  SETTLE_EVERY steps).
- `graphs-sync`: the same with a host read after every step (how the step ran before v3).
- `graphs-layout`: `graphs` with inductor's layout optimisation forced on (channels_last
  convolutions inside the compiled graph; off by its heuristics for small channel counts).
- `graphs-cl`: `graphs` with the UNet and its input in channels_last.
- `default`: torch.compile without CUDA graphs (how launch-bound the step is).
- `whole-graph`: forward, backward, clipping, AdamW (capturable, lr as a tensor) and the EMA
  captured by hand as one CUDA graph around the inductor-compiled UNet; the batch is copied
  into static tensors before each replay.
- `whole-graph-eager`: the same around the eager UNet (no compile time at all).
- the `graphs` step under torch.profiler: GPU busy time per step and the top kernels.
- `whole-graph-layout`, `profile-layout`: `whole-graph` and `profile` with inductor's layout
  optimisation forced on, as `ldm train` compiles.

    python3 benchmarks/step_profile.py --preset fashion-mnist --batch 1024 --out result.json
    python3 benchmarks/step_profile.py --smoke     # CPU, eager only: checks the script runs
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch._inductor.config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import settling, synthetic_trainer, time_steps, training_device, write_result  # noqa: E402

from ldmkit.diffusion import diffusion_loss  # noqa: E402
from ldmkit.train.config import preset_config  # noqa: E402
from ldmkit.train.diffusion_stage import DiffusionTrainer  # noqa: E402
from ldmkit.train.step_guard import SETTLE_EVERY  # noqa: E402


def make_trainer(args, device: torch.device, run_dir: Path, *, compile_mode: str | None) -> DiffusionTrainer:
    config = preset_config(args.preset)
    config.compile = compile_mode is not None
    config.compile_mode = compile_mode or "default"
    config.diffusion.batch_size = args.batch
    return synthetic_trainer(config, args.channels, device, run_dir, n=8192)


def whole_graph_step(trainer: DiffusionTrainer) -> Callable[[], None]:
    """One CUDA graph over forward, backward, clipping, AdamW and the EMA (see module doc)."""
    cfg, unet, schedule = trainer.cfg, trainer.unet, trainer.schedule
    model = trainer.model  # compiled in "default" mode by the caller: inductor kernels, no graphs
    device = trainer.device
    lr = torch.tensor(cfg.lr, device=device)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
                            fused=True, capturable=True)
    ema_weight = torch.tensor(1.0 - cfg.ema_decay, device=device)
    params = [p for p in unet.parameters()]
    ema_params = [p for p in trainer.ema.module.parameters()]
    static = [v.clone() for v in trainer._batch()]
    found_inf = torch.zeros((), device=device)
    loss_out = torch.zeros((), device=device)

    def body() -> None:
        x0, labels, t, noise = static
        with trainer.precision.autocast():
            loss = diffusion_loss(lambda x, tt: model(x, tt, class_labels=labels), x0, schedule,
                                  prediction=cfg.prediction, min_snr_gamma=cfg.min_snr_gamma, t=t, noise=noise)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
        found_inf.copy_((~torch.isfinite(loss.detach() + norm)).float())
        opt.found_inf = found_inf  # the fused kernel skips the update where this is 1
        opt.step()
        keep = ema_weight * (1 - found_inf)
        diff = torch._foreach_sub(params, ema_params)
        torch._foreach_mul_(diff, keep)
        torch._foreach_add_(ema_params, diff)
        loss_out.copy_(loss.detach())

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        body()

    def step() -> None:
        for dst, src in zip(static, trainer._batch()):
            dst.copy_(src, non_blocking=True)
        trainer.offset += cfg.batch_size
        graph.replay()

    return step


def kernel_profile(step: Callable[[], Any], steps: int, top: int) -> dict[str, Any]:
    """GPU busy ms per step and the `top` kernels by total time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = per_kernel[event.name]
            entry[0] += event.device_time_total / 1e3  # us -> ms
            entry[1] += 1
    busy = sum(v[0] for v in per_kernel.values())
    ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:top]
    return {"wall_ms_per_step": 1e3 * wall / steps, "gpu_busy_ms_per_step": busy / steps,
            "top": [{"kernel": k[:110], "ms_per_step": v[0] / steps, "calls_per_step": v[1] / steps}
                    for k, v in ranked]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist", help="training preset whose UNet step is timed")
    p.add_argument("--channels", type=int, default=1, help="image channels of the data the preset is fitted to")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--variants", default="graphs,graphs-sync,graphs-layout,whole-graph-eager,profile,graphs-cl",
                   help="comma-separated subset of the variants in the module doc, run in this order")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--deadline", type=float, default=480, help="seconds after which no new variant starts")
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("--smoke", action="store_true", help="CPU, eager, tiny: check that the script runs")
    args = p.parse_args()
    started = time.time()
    device = training_device(args.smoke)
    if args.smoke:
        args.batch, args.warmup, args.steps, args.variants = 8, 1, 2, "eager"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            if time.time() - started > args.deadline:
                rows.append({"variant": variant, "error": "skipped: deadline"})
                continue
            row: dict[str, Any] = {"variant": variant, "batch": args.batch}
            torch._inductor.config.force_layout_optimization = variant.endswith("-layout")
            try:
                modes = {"eager": None, "default": "default", "whole-graph": "default", "whole-graph-layout": "default",
                         "whole-graph-eager": None}
                mode = modes.get(variant, "reduce-overhead")
                trainer = make_trainer(args, device, Path(tmp), compile_mode=mode)
                if variant == "graphs-cl":
                    trainer.unet.to(memory_format=torch.channels_last)
                    plain_batch = trainer._batch
                    trainer._batch = lambda: (
                        lambda b: (b[0].contiguous(memory_format=torch.channels_last), *b[1:])
                    )(plain_batch())
                step = settling(trainer, trainer.train_step, 1 if variant == "graphs-sync" else SETTLE_EVERY)
                if variant.startswith("whole-graph"):
                    step = whole_graph_step(trainer)
                if variant.startswith("profile"):
                    time_steps(step, args.warmup, 5, device)
                    row.update(kernel_profile(step, 20, 25))
                else:
                    row.update(time_steps(step, args.warmup, args.steps, device))
                    row["img_per_s"] = args.batch * 1e3 / row["ms_per_step"]
            except Exception as err:  # one failing variant must not lose the others
                row["error"] = repr(err)[:400]
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
            torch._dynamo.reset()
    write_result(args.out, args.preset, device, rows)
    print(f"\n{'variant':14} {'batch':>6} {'ms/step':>9} {'img/s':>9} {'warmup s':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:14} ERROR {r['error'][:100]}")
        elif "top" in r:
            print(f"{r['variant']:14} {r['batch']:>6} {r['wall_ms_per_step']:>9.2f}   "
                  f"GPU busy {r['gpu_busy_ms_per_step']:.2f} ms/step")
            for k in r["top"]:
                print(f"    {k['ms_per_step']:7.3f} ms  x{k['calls_per_step']:<5.1f} {k['kernel']}")
        else:
            print(f"{r['variant']:14} {r['batch']:>6} {r['ms_per_step']:>9.2f} {r['img_per_s']:>9.0f} "
                  f"{r['warmup_s']:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
