"""Nearest 2x upsampling + conv3x3 alone, three ways, at the shapes of C1, C2 and C3: which form
`UpSample` should run (`src/ldmkit/nn/upsample_conv.py` derives the last two).

- `interpolate`: `conv2d(interpolate(x, 2), w)`, the textbook form (36 multiply-adds per output
  channel and input pixel, the 4x tensor written and read);
- `phase`: one 2x2 convolution with 4x the output channels, then an interleaving pass (16);
- `transposed`: one `conv_transpose2d(stride=2)` with a 4x4 kernel (16, no interleaving pass).

Each form is compiled alone (`torch.compile(fullgraph=True)`, as inside a model), bf16,
channels_last. C3's decoder shapes are timed forward only (inference); C1's and C2's forward +
backward (training). Each output is checked against the `interpolate` form in fp32.

    python3 benchmarks/upsample_bench.py --out results/upsample.json   # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

from ldmkit.nn.upsample_conv import upsample2x_conv3x3, upsample2x_conv3x3_transposed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import agreement, time_each_ms  # noqa: E402

# (name, N, C, H, W, training): each UpSample's input (C in = C out).
SHAPES = [
    ("C3 dec 32->64 x512", 32, 512, 32, 32, False),
    ("C3 dec 64->128 x512", 32, 512, 64, 64, False),
    ("C3 dec 128->256 x256", 32, 256, 128, 128, False),
    ("C1 4->8 x512", 256, 512, 4, 4, True),
    ("C1 8->16 x384", 256, 384, 8, 8, True),
    ("C1 16->32 x256", 256, 256, 16, 16, True),
    ("C2 8->16 x1280", 32, 1280, 8, 8, True),
    ("C2 16->32 x1280", 32, 1280, 16, 16, True),
    ("C2 32->64 x640", 32, 640, 32, 32, True),
]


def interpolate_form(x, w, b):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)


FORMS = {"interpolate": interpolate_form, "phase": upsample2x_conv3x3, "transposed": upsample2x_conv3x3_transposed}


def measure(shape: tuple, form: str, iters: int, warmup: int) -> dict:
    name, N, C, H, W, training = shape
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(N, C, H, W, device=dev, generator=gen).to(torch.bfloat16, memory_format=torch.channels_last)
    w = (torch.randn(C, C, 3, 3, device=dev, generator=gen) / (3 * C ** 0.5)).to(torch.bfloat16)
    w = w.contiguous(memory_format=torch.channels_last)
    b = torch.randn(C, device=dev, generator=gen).to(torch.bfloat16)
    torch._dynamo.reset()
    fn = torch.compile(FORMS[form], fullgraph=True, dynamic=False)
    with torch.no_grad():  # the same function: fp32 on both sides, TF32 off
        torch.backends.cudnn.allow_tf32 = False
        want = interpolate_form(x.float(), w.float(), b.float())
        got = FORMS[form](x.float(), w.float(), b.float())
        torch.backends.cudnn.allow_tf32 = True
        err = agreement(want, got)["rel_l2"]
    if training:
        x.requires_grad_(True)
        w.requires_grad_(True)
        b.requires_grad_(True)
        dy = torch.randn(N, C, 2 * H, 2 * W, device=dev, generator=gen).to(torch.bfloat16,
                                                                          memory_format=torch.channels_last)

        def call():
            x.grad = w.grad = b.grad = None
            fn(x, w, b).backward(dy)
    else:
        def call():
            with torch.no_grad():
                return fn(x, w, b)
    ms = time_each_ms(call, iters, warmup)
    macs = N * C * C * H * W * (16 if form != "interpolate" else 36)
    tflops = 2 * macs * (3 if training else 1) / ms / 1e9
    return {"shape": name, "form": form, "training": training, "ms": ms, "tflops_of_own_work": tflops,
            "rel_l2_vs_interpolate_fp32": err}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per case (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation included)")
    p.add_argument("--only", default="", help="comma list of shape-name prefixes (e.g. C3,C1); default all")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("upsample_bench.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    prefixes = [s for s in args.only.split(",") if s]
    shapes = [s for s in SHAPES if not prefixes or any(s[0].startswith(q) for q in prefixes)]
    results = []
    for shape in shapes:
        for form in FORMS:
            r = measure(shape, form, args.iters, args.warmup)
            results.append(r)
            print(f"{r['shape']:>22} {'fwd+bwd' if shape[5] else 'fwd':>7} {form:>12}: {r['ms']:7.3f} ms "
                  f"{r['tflops_of_own_work']:6.0f} TFLOP/s  err {r['rel_l2_vs_interpolate_fp32']:.1e}", flush=True)
    print(f"\n{'shape':>22} {'pass':>7} " + " ".join(f"{f:>14}" for f in FORMS) + "  transposed/phase")
    for i in range(0, len(results), len(FORMS)):
        group = results[i:i + len(FORMS)]
        ms = {r["form"]: r["ms"] for r in group}
        print(f"{group[0]['shape']:>22} {'fwd+bwd' if group[0]['training'] else 'fwd':>7} "
              + " ".join(f"{ms[f]:11.3f} ms" for f in FORMS) + f"  {ms['phase'] / ms['transposed']:.2f}x")
    if args.out:
        env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "cudnn": torch.backends.cudnn.version()}
        with open(args.out, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
