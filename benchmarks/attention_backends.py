"""Which scaled-dot-product-attention kernel is fastest at the shapes C1/C2/E1/E2 run?

For every attention shape of the benchmark's UNets (batch, heads, query tokens, key tokens,
head size), times `F.scaled_dot_product_attention` restricted to one backend at a time (flash,
memory-efficient, cuDNN), forward alone and forward + backward, in bf16, and checks each
backend's output against fp32 math attention.

Measured on one H100 with torch 2.11 (results/2026-11-26-h100-v5/call1_attention.json,
NOTES.md v5): cuDNN is 1.6-1.8x faster than FlashAttention-2 at SD's head size 40 (64x64
latents), and SDPA's default choice on that stack already is cuDNN, for ldmkit and the peer
alike; so asking for it buys nothing there (it was built, measured at parity, and removed).

    python3 benchmarks/attention_backends.py --out results/attention.json   # on the GPU machine

`--head-size-sweep` times SD's 64x64 self-attention (8 heads, 4,096 tokens; C2's batch 16 and
E2's batch 2) at head sizes 32-80 instead: whether head size 40 pays for the head-size-64
kernel it runs in (then 40 costs what 64 does), or for the softmax's exponentials, which do
not depend on the head size (then 32, 40 and 64 cost about the same).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}

# (name, batch, heads, query tokens, key tokens, head size). C1/E1: 90M UNet at 32x32 latents
# (attention at 16x16, 8x8, 4x4, 64 channels per head); C2/E2: SD 1.x at 64x64 latents (8 heads,
# self-attention and 77-token cross-attention at 64x64, 32x32, 16x16, and the 8x8 middle).
def shapes(c1_batch: int, e1_batch: int, c2_batch: int, e2_batch: int) -> list[tuple]:
    out = []
    for tag, b in (("C1", c1_batch), ("E1", e1_batch)):
        out += [(f"{tag} self 16x16", b, 4, 256, 256, 64), (f"{tag} self 8x8", b, 6, 64, 64, 64),
                (f"{tag} self 4x4", b, 8, 16, 16, 64)]
    for tag, b in (("C2", c2_batch), ("E2", e2_batch)):
        for side, n, d in ((64, 4096, 40), (32, 1024, 80), (16, 256, 160)):
            out += [(f"{tag} self {side}x{side}", b, 8, n, n, d), (f"{tag} cross {side}x{side}", b, 8, n, 77, d)]
        out += [(f"{tag} self 8x8", b, 8, 64, 64, 160)]
    return out


def head_size_sweep() -> list[tuple]:
    return [(f"{tag} self 64x64 d{d}", b, 8, 4096, 4096, d) for tag, b in (("C2", 16), ("E2", 2))
            for d in (32, 40, 48, 64, 80)]


def attention_flops(b: int, h: int, n: int, m: int, d: int, backward: bool) -> float:
    """QK^T and PV: 2 matmuls of 2*n*m*d each; backward does 2.5x the forward's (5 matmuls, FA2 paper)."""
    fwd = 4.0 * b * h * n * m * d
    return fwd * (3.5 if backward else 1.0)


def measure(shape: tuple, backend: str, device: torch.device, iters: int, warmup: int) -> dict:
    name, b, h, n, m, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    # [B, N, heads, d] transposed to [B, heads, N, d]: the strides ldmkit's attention passes.
    q, k, v = (torch.randn(b, t, h, d, device=device, generator=gen, dtype=torch.bfloat16).transpose(1, 2)
               for t in (n, m, m))
    row = {"shape": name, "backend": backend, "b": b, "heads": h, "n": n, "m": m, "d": d}
    try:
        with sdpa_kernel(SDPBackend.MATH):
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        with sdpa_kernel(BACKENDS[backend]):
            out = F.scaled_dot_product_attention(q, k, v)
            row["rel_err"] = float((out.float() - ref).norm() / ref.norm())
            row["fwd_ms"] = H.time_each_ms(lambda: F.scaled_dot_product_attention(q, k, v), iters, warmup)
            qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
            grad = torch.randn_like(out)

            def fwd_bwd():
                F.scaled_dot_product_attention(qg, kg, vg).backward(grad)

            row["fwd_bwd_ms"] = H.time_each_ms(fwd_bwd, iters, warmup)
        row["fwd_tflops"] = attention_flops(b, h, n, m, d, False) / row["fwd_ms"] / 1e9
        row["fwd_bwd_tflops"] = attention_flops(b, h, n, m, d, True) / row["fwd_bwd_ms"] / 1e9
    except RuntimeError as err:  # a backend that does not support the shape says so
        row["error"] = str(err).splitlines()[0][:160]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="JSON file for the rows")
    ap.add_argument("--iters", type=int, default=20, help="timed calls per row (median)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--head-size-sweep", action="store_true", help="SD's 64x64 self-attention at head sizes 32-80")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        raise SystemExit("attention_backends.py times CUDA kernels; run it on the GPU machine")
    rows = []
    for shape in head_size_sweep() if args.head_size_sweep else shapes(256, 128, 32, 2):
        for backend in BACKENDS:
            rows.append(measure(shape, backend, device, args.iters, args.warmup))
            r = rows[-1]
            print(f"{r['shape']:<22} {backend:<9} " + (r.get("error") or
                  f"fwd {r['fwd_ms']:7.3f} ms {r['fwd_tflops']:5.0f} TF/s  fwd+bwd {r['fwd_bwd_ms']:7.3f} ms "
                  f"{r['fwd_bwd_tflops']:5.0f} TF/s  err {r['rel_err']:.1e}"), flush=True)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version()}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(meta)


if __name__ == "__main__":
    main()
