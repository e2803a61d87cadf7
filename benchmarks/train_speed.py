"""Training-step speed of ldmkit's own trainers (not a peer comparison): how many images per
second `DiffusionTrainer.train_step` and `VAETrainer.train_step` reach for a training preset,
eager against torch.compile modes, on synthetic data already on the device.

This is the measurement behind the `compile_mode` default of the GPU presets: a small UNet on
8x8 latents is launch-bound (the CPU issues kernels slower than the GPU runs them), so CUDA
graphs ("reduce-overhead") are expected to matter more than any kernel.

    python3 benchmarks/train_speed.py --preset fashion-mnist --out result.json
    python3 benchmarks/train_speed.py --smoke          # CPU, a few steps, checks the script runs

Each configuration: `--warmup` steps (compilation, graph recording) then `--steps` timed steps;
the host reads the queued losses every SETTLE_EVERY steps as training does, and the timing
ends with a device sync, so wall time is GPU time or CPU time, whichever is longer. Prints a table last and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch._inductor.config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ldmkit.models import AutoencoderKL, AutoencoderKLConfig, UNet, UNetConfig  # noqa: E402
from ldmkit.train.config import preset_config  # noqa: E402
from ldmkit.train.context import StageContext  # noqa: E402
from ldmkit.train.diffusion_stage import DiffusionTrainer  # noqa: E402
from ldmkit.train.distributed import DistInfo, setup_distributed  # noqa: E402
from ldmkit.train.latent_cache import LatentSet  # noqa: E402
from ldmkit.train.run import _resolve_models  # noqa: E402
from ldmkit.train.signals import StopSignal  # noqa: E402
from ldmkit.train.step_guard import SETTLE_EVERY  # noqa: E402
from ldmkit.train.vae_stage import VAETrainer  # noqa: E402


def _models(config, channels: int, num_classes: int) -> tuple[AutoencoderKL, UNet]:
    """The preset's models fitted to the data, as `ldm train` builds them."""
    _resolve_models(config, channels, num_classes)
    return (AutoencoderKL(AutoencoderKLConfig.from_dict(config.vae.model)),
            UNet(UNetConfig.from_dict(config.diffusion.model)))


_TORCHRUN: DistInfo | None = None  # this process's place under torchrun (join_torchrun)


def join_torchrun(device: str = "cuda") -> DistInfo | None:
    """Under torchrun (WORLD_SIZE > 1): join its process group on this rank's GPU (or the CPU,
    through gloo), so that the trainers built here train data-parallel as `ldm train`'s do; None
    in a single process."""
    global _TORCHRUN
    if _TORCHRUN is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _TORCHRUN = setup_distributed(device)
    return _TORCHRUN


def _context(config, device: torch.device, run_dir: Path) -> StageContext:
    dist = _TORCHRUN or DistInfo(rank=0, local_rank=0, world_size=1, device=device)
    return StageContext(run_dir=run_dir, config=config, dist=dist, stop=StopSignal(), save_state=lambda state: None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_device(smoke: bool) -> torch.device:
    """The GPU unless `smoke` (or none is here), with the switches `ldm train` sets on CUDA:
    TF32 matmuls and convolutions, cuDNN's algorithm timing."""
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


def synthetic_trainer(config, channels: int, device: torch.device, run_dir: Path, n: int = 4096) -> DiffusionTrainer:
    """`ldm train`'s diffusion trainer for `config`'s models, on `n` random latents (10 classes)
    already on `device`."""
    num_classes = 10
    vae, unet = _models(config, channels, num_classes)
    side = config.image_size // vae.config.downsample_factor
    shape = (vae.config.latent_channels, side, side)
    gen = torch.Generator(device="cpu").manual_seed(0)
    latents = LatentSet(mean=torch.randn((n, *shape), generator=gen),
                        labels=torch.randint(0, num_classes, (n,), generator=gen),
                        std=0.1 * torch.ones((n, *shape))).to(device)
    return DiffusionTrainer(unet, vae, latents, None, _context(config, device, run_dir),
                            [str(i) for i in range(num_classes)])


def synthetic_vae_trainer(config, channels: int, device: torch.device, run_dir: Path) -> VAETrainer:
    """`ldm train`'s VAE trainer for `config`'s autoencoder, ready to step on batches the caller
    gives (no dataset)."""
    vae, _ = _models(config, channels, 10)
    trainer = VAETrainer(vae, None, _context(config, device, run_dir))
    trainer._wrap()
    return trainer


def settling(trainer, step_fn: Callable[[], Any], every: int = SETTLE_EVERY) -> Callable[[], None]:
    """`step_fn`, followed every `every` steps by the host read of the queued losses, as the
    training loops do (StepGuard.settle)."""
    def step() -> None:
        step_fn()
        if trainer.step % every == 0:
            trainer.guard.settle(trainer.step, None)
    return step


def write_result(out: str | None, preset: str, device: torch.device, rows: list[dict[str, Any]]) -> None:
    """The rows, with the device, versions and date, as JSON at `out` (if given)."""
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "preset": preset, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if out:
        Path(out).write_text(json.dumps(info, indent=2) + "\n")


def time_steps(step, warmup: int, steps: int, device: torch.device) -> dict[str, float]:
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - started
    return {"ms_per_step": 1e3 * seconds / steps, "warmup_s": warm_s}


def unet_speed(args, mode: str, batch: int, device: torch.device, run_dir: Path) -> dict[str, Any]:
    config = preset_config(args.preset)
    config.compile = mode != "eager"
    config.compile_mode = mode if mode != "eager" else "default"
    config.diffusion.batch_size = batch
    trainer = synthetic_trainer(config, args.channels, device, run_dir)
    unet, shape = trainer.unet, trainer.train_set.latent_shape
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = settling(trainer, trainer.train_step)
    result = time_steps(step, args.warmup, args.steps, device)
    if args.gpu_busy and device.type == "cuda":
        from step_profile import kernel_profile  # imports this module: loaded only when asked for

        profiled = kernel_profile(step, 20, 5)
        result.update(gpu_busy_ms_per_step=profiled["gpu_busy_ms_per_step"],
                      profiled_wall_ms_per_step=profiled["wall_ms_per_step"])
    result.update(stage="unet", mode=mode, batch=batch, img_per_s=batch * 1e3 / result["ms_per_step"],
                  params=sum(p.numel() for p in unet.parameters()), latent_shape=list(shape),
                  peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None)
    return result


def vae_speed(args, compiled: bool, batch: int, device: torch.device, run_dir: Path) -> dict[str, Any]:
    config = preset_config(args.preset)
    config.compile = compiled
    config.vae.batch_size = batch
    trainer = synthetic_vae_trainer(config, args.channels, device, run_dir)
    vae = trainer.vae
    images = torch.rand((batch, args.channels, config.image_size, config.image_size), device=device) * 2 - 1
    result = time_steps(settling(trainer, lambda: trainer.train_step(images)), args.warmup, args.steps, device)
    result.update(stage="vae", mode=config.compile_mode if compiled else "eager", batch=batch,
                  img_per_s=batch * 1e3 / result["ms_per_step"], params=sum(p.numel() for p in vae.parameters()))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist", help="training preset whose models and settings are timed")
    p.add_argument("--channels", type=int, default=1, help="image channels (1 for Fashion-MNIST, 3 for emoji)")
    p.add_argument("--modes", default="eager,default,reduce-overhead", help="UNet modes to time ('' for none)")
    p.add_argument("--batches", default="preset", help="UNet batch sizes to time ('preset': the preset's own)")
    p.add_argument("--vae-batches", default="preset", help="VAE batch sizes to time ('preset': the preset's own)")
    p.add_argument("--vae-modes", default="eager,compiled",
                   help="VAE: eager, and/or compiled in the preset's compile_mode")
    p.add_argument("--layouts", default="plain",
                   help="'plain' and/or 'forced': inductor's layout optimisation (channels_last convolutions "
                        "inside the compiled graph) left to its heuristics, or forced on")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--gpu-busy", action="store_true",
                   help="after timing, 20 more UNet steps under torch.profiler: the GPU's busy ms a step "
                        "(against the wall time: is the step waiting on the GPU or on the host?)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny step counts: check that the script runs")
    args = p.parse_args()
    device = training_device(args.smoke)
    if args.smoke:
        args.modes, args.batches, args.vae_batches, args.warmup, args.steps = "eager", "8", "4", 1, 2
        args.vae_modes, args.layouts = "eager", "plain"
    preset = preset_config(args.preset)

    def batch_sizes(text: str, own: int) -> list[int]:
        return [own] if text == "preset" else [int(b) for b in text.split(",")]

    unet_batches = batch_sizes(args.batches, preset.diffusion.batch_size)
    vae_batches = batch_sizes(args.vae_batches, preset.vae.batch_size)
    rows: list[dict[str, Any]] = []

    def attempt(row_of, stage: str, mode: str, batch: int, layout: str) -> None:
        torch._inductor.config.force_layout_optimization = layout == "forced"
        try:
            row = row_of()
        except Exception as err:  # one failing configuration must not lose the others
            row = {"stage": stage, "mode": mode, "batch": batch, "error": repr(err)[:300]}
        row["layout"] = layout
        rows.append(row)
        print(json.dumps(row), flush=True)
        torch._dynamo.reset()

    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layouts.split(","):
            for batch in unet_batches:
                for mode in [m for m in args.modes.split(",") if m]:  # --modes "": the VAE stage alone
                    attempt(lambda: unet_speed(args, mode, batch, device, Path(tmp)), "unet", mode, batch, layout)
            for batch in vae_batches:
                for vae_mode in args.vae_modes.split(","):
                    compiled = vae_mode == "compiled"
                    attempt(lambda: vae_speed(args, compiled, batch, device, Path(tmp)), "vae", vae_mode, batch, layout)
    write_result(args.out, args.preset, device, rows)
    print(f"\n{'stage':6} {'mode':18} {'layout':7} {'batch':>6} {'ms/step':>9} {'img/s':>10} {'warmup s':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['stage']:6} {r['mode']:18} {r['layout']:7} {r['batch']:>6}  ERROR {r['error'][:80]}")
        else:
            print(f"{r['stage']:6} {r['mode']:18} {r['layout']:7} {r['batch']:>6} {r['ms_per_step']:>9.2f} "
                  f"{r['img_per_s']:>10.0f} {r['warmup_s']:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
