"""GroupNorm + SiLU forward and backward alone, at the shapes of the C1 training step: PyTorch's
GroupNorm (eager and compiled) against ldmkit's fused reductions (`ldmkit.nn.norm_silu`).

For each shape and input layout (NCHW, channels_last) it times `silu(GroupNorm(x + add))`
forward + backward in bf16 (median of CUDA-event timings), reports the bytes a minimal
implementation moves (8 activation-sized passes: forward reads x twice and writes y; backward
reads x and dy twice and writes dx) as GB/s, and checks each output and gradient against an
fp32 PyTorch reference.

    python3 benchmarks/group_norm_bench.py --out results/group_norm.json   # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.nn.norm_silu import group_norm_silu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import agreement, time_each_ms  # noqa: E402

# (name, N, C, H, W): the GroupNorm inputs of C1's ResNet blocks at batch 256 (channels 128, 256,
# 384, 512 at 32x32 .. 4x4 latents) and the widest skip concatenations of its decoder.
SHAPES = [
    ("C1 32x32 x128", 256, 128, 32, 32),
    ("C1 32x32 x256 (concat)", 256, 256, 32, 32),
    ("C1 16x16 x256", 256, 256, 16, 16),
    ("C1 8x8 x384", 256, 384, 8, 8),
    ("C1 4x4 x512", 256, 512, 4, 4),
]
VARIANTS = ("torch eager", "torch compiled", "ldmkit fused compiled")
PASSES = 8  # activation-sized reads and writes of a minimal forward + backward


def plain(x, add, norm):
    return F.silu(norm(x + add[:, :, None, None]))


def fused(x, add, norm):
    return group_norm_silu(x, norm, add, fused=True)


def step_fn(variant: str):
    fn = fused if variant.startswith("ldmkit") else plain
    return torch.compile(fn, fullgraph=True) if "compiled" in variant else fn


def measure(shape: tuple, layout: str, variant: str, iters: int, warmup: int) -> dict:
    name, N, C, H, W = shape
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    norm = nn.GroupNorm(32, C).to(dev)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2, generator=gen)
        norm.bias.normal_(0.0, 0.2, generator=gen)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = (torch.randn(N, C, H, W, device=dev, generator=gen) + 0.5).to(torch.bfloat16).to(memory_format=fmt)
    add = torch.randn(N, C, device=dev, generator=gen).to(torch.bfloat16)
    dy = torch.randn(N, C, H, W, device=dev, generator=gen).to(torch.bfloat16).to(memory_format=fmt)
    x.requires_grad_(True)
    add.requires_grad_(True)
    torch._dynamo.reset()  # each case compiles for its own static shape
    fn = step_fn(variant)

    def fwd_bwd():
        x.grad = add.grad = norm.weight.grad = norm.bias.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):  # as in training: fp32 weights
            y = fn(x, add, norm)
        y.backward(dy)
        return y

    y = fwd_bwd()
    got = [y, x.grad, add.grad, norm.weight.grad, norm.bias.grad]
    # fp32 reference of the same function (the bf16 inputs, upcast)
    x32, add32 = x.detach().float().requires_grad_(), add.detach().float().requires_grad_()
    norm.weight.grad = norm.bias.grad = None
    y32 = plain(x32, add32, norm)
    y32.backward(dy.float())
    want = [y32, x32.grad, add32.grad, norm.weight.grad, norm.bias.grad]
    names = ("y", "dx", "d_add", "d_weight", "d_bias")
    errors = {name: agreement(w, g)["rel_l2"] for name, g, w in zip(names, got, want)}
    ms = time_each_ms(fwd_bwd, iters, warmup)
    bytes_moved = PASSES * x.numel() * x.element_size()
    return {"shape": name, "layout": layout, "variant": variant, "ms": ms,
            "gbps_of_minimal_traffic": bytes_moved / ms / 1e6, "rel_l2_vs_fp32": errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per case (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation included)")
    p.add_argument("--shapes", type=int, default=len(SHAPES), help=f"only the first K of the {len(SHAPES)} shapes")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("group_norm_bench.py needs a CUDA GPU (the fused path is CUDA-only)")
    torch.backends.cudnn.benchmark = True
    results = []
    for shape in SHAPES[: args.shapes]:
        for layout in ("NCHW", "channels_last"):
            for variant in VARIANTS:
                r = measure(shape, layout, variant, args.iters, args.warmup)
                results.append(r)
                print(f"{r['shape']:>24} {layout:>13} {variant:>22}: {r['ms']:7.3f} ms "
                      f"{r['gbps_of_minimal_traffic']:6.0f} GB/s  max err "
                      f"{max(r['rel_l2_vs_fp32'].values()):.1e}", flush=True)
    print(f"\n{'shape':>24} {'layout':>13} " + " ".join(f"{v:>22}" for v in VARIANTS) + "  fused gain")
    for i in range(0, len(results), len(VARIANTS)):
        group = results[i:i + len(VARIANTS)]
        ms = [r["ms"] for r in group]
        print(f"{group[0]['shape']:>24} {group[0]['layout']:>13} " + " ".join(f"{m:19.3f} ms" for m in ms)
              + f"  {ms[1] / ms[2]:.2f}x vs compiled")
    if args.out:
        env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "fused_switch": os.environ.get("LDMKIT_FUSED_GROUPNORM", "train")}
        with open(args.out, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
