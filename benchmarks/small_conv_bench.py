"""The SD UNet's convolutions at batch 2 (E2): cuDNN against a split-K Triton implicit GEMM
(`conv_splitk.py`, not in the library: cuDNN won, NOTES v11) and against im2col + cuBLAS.

Each variant is captured in a CUDA graph (as E2 replays it) and cycles through enough copies of
weights and inputs that the weights come from memory, not L2, as in the UNet, where consecutive
convolutions have different weights. The Triton variant's time includes the sum of its partials,
the bias and the cast back to bf16. Prints a table per shape (best Triton configuration, its
ratio to cuDNN) and the per-step totals with each shape's count in the UNet; writes JSON.

    python3 benchmarks/small_conv_bench.py --out results/small_conv.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics

import torch
import torch.nn.functional as F

# (N, C, H, W, O, kernel, count per UNet call): the stride-1 nn.Conv2d calls of the SD 1.x UNet at
# batch 2 (classifier-free guidance of one image), from forward hooks on ldmkit's `sd15` preset
# (the upsamplers' phase kernels, which call no nn.Conv2d, are not here).
E2_SHAPES = [
    (2, 1280, 8, 8, 1280, 3, 11), (2, 2560, 8, 8, 1280, 3, 3), (2, 2560, 8, 8, 1280, 1, 3),
    (2, 1280, 8, 8, 1280, 1, 2),
    (2, 1280, 16, 16, 1280, 3, 6), (2, 2560, 16, 16, 1280, 3, 2), (2, 1920, 16, 16, 1280, 3, 1),
    (2, 640, 16, 16, 1280, 3, 1), (2, 1280, 16, 16, 1280, 1, 10), (2, 2560, 16, 16, 1280, 1, 2),
    (2, 640, 32, 32, 640, 3, 6), (2, 1920, 32, 32, 640, 3, 1), (2, 1280, 32, 32, 640, 3, 1),
    (2, 960, 32, 32, 640, 3, 1), (2, 320, 32, 32, 640, 3, 1), (2, 640, 32, 32, 640, 1, 10),
    (2, 320, 64, 64, 320, 3, 7), (2, 640, 64, 64, 320, 3, 2), (2, 960, 64, 64, 320, 3, 1),
    (2, 320, 64, 64, 320, 1, 10),
]
CONFIGS = [dict(block_m=bm, block_n=bn, num_warps=nw, num_stages=ns)
           for (bm, bn), nw, ns in itertools.product([(64, 64), (64, 128), (128, 64), (128, 128)], [4, 8], [3, 4])]
SPLITS = [1, 2, 3, 4, 6, 8, 12, 16]
L2_BYTES = 120 * 2**20  # more than the H100's 50 MB L2


def graph_time_ms(fn, copies: int, reps: int = 3) -> float:
    """Median ms of one call of fn(i) for i cycling over `copies`, replayed in a CUDA graph."""
    calls = max(copies, 8)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(copies):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i % copies)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / (5 * calls))
    return statistics.median(times[2:])


def measure_shape(shape, args) -> dict:
    from conv_splitk import conv2d_splitk_partials, gemm_weight

    n, c, h, w, o, ks, count = shape
    dev = torch.device("cuda")
    wbytes = o * c * ks * ks * 2
    copies = max(1, min(16, -(-L2_BYTES // wbytes)))
    gen = torch.Generator(device=dev).manual_seed(0)
    xs = [torch.randn(n, c, h, w, device=dev, generator=gen, dtype=torch.bfloat16)
          .contiguous(memory_format=torch.channels_last) for _ in range(copies)]
    ws = [(torch.randn(o, c, ks, ks, device=dev, generator=gen) / (c * ks * ks) ** 0.5)
          .to(torch.bfloat16).contiguous(memory_format=torch.channels_last) for _ in range(copies)]
    bs = [torch.randn(o, device=dev, generator=gen, dtype=torch.bfloat16) for _ in range(copies)]
    wg = [gemm_weight(wt) for wt in ws]
    m = n * h * w
    flops = 2 * m * o * c * ks * ks

    def cudnn(i):
        return F.conv2d(xs[i], ws[i], bs[i], padding=ks // 2)

    def triton_fn(cfg, split):
        def run(i):
            p = conv2d_splitk_partials(xs[i], wg[i], ks, split, **cfg)
            return (p.sum(0) + bs[i]).to(torch.bfloat16)
        return run

    def im2col(i):
        x = xs[i].permute(0, 2, 3, 1)  # [N, H, W, C], a view of channels_last memory
        if ks == 1:
            cols = x.reshape(m, c)
        else:
            xp = F.pad(x, (0, 0, 1, 1, 1, 1))
            cols = xp.unfold(1, 3, 1).unfold(2, 3, 1)  # [N, H, W, C, kh, kw]
            cols = cols.permute(0, 1, 2, 4, 5, 3).reshape(m, ks * ks * c)
        return torch.addmm(bs[i], cols, wg[i])

    ref = cudnn(0).float().permute(0, 2, 3, 1).reshape(m, o)
    rec = {"shape": dict(N=n, C=c, H=h, W=w, O=o, kernel=ks), "count": count, "M": m,
           "gflop": flops / 1e9, "weight_mb": wbytes / 2**20}
    rec["cudnn_ms"] = graph_time_ms(cudnn, copies)
    try:
        rec["im2col_mm_ms"] = graph_time_ms(im2col, copies)
    except Exception as err:  # noqa: BLE001
        rec["im2col_mm_error"] = repr(err)[:200]
    best = None
    for cfg in CONFIGS:
        if c % 64:
            break
        for split in SPLITS:
            if split > 1 and m * o > args.max_split_outputs:
                continue
            run = triton_fn(cfg, split)
            try:
                got = run(0).float()
                err = ((got - ref).norm() / ref.norm()).item()
                ms = graph_time_ms(run, copies)
            except Exception as e:  # noqa: BLE001 (a configuration that does not fit: skip it)
                rec.setdefault("config_errors", []).append(f"{cfg} s={split}: {type(e).__name__}")
                continue
            if best is None or ms < best["ms"]:
                best = {"ms": ms, "split": split, **cfg, "rel_l2_vs_cudnn": err}
    rec["triton_best"] = best
    rec["cudnn_tflops"] = flops / rec["cudnn_ms"] / 1e9
    if best:
        rec["triton_tflops"] = flops / best["ms"] / 1e9
        rec["triton_speedup"] = rec["cudnn_ms"] / best["ms"]
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("--max-pixels", type=int, default=4096, help="shapes with at most this many output pixels")
    p.add_argument("--max-split-outputs", type=int, default=2**22,
                   help="split only where M x O is at most this (larger outputs: the partials cost more)")
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    results = []
    for shape in E2_SHAPES:
        n, c, h, w, o, ks, count = shape
        if h * w > args.max_pixels:
            continue
        rec = measure_shape(shape, args)
        results.append(rec)
        b = rec["triton_best"] or {}
        print(f"{str(shape):36s} cuDNN {rec['cudnn_ms'] * 1e3:7.1f} us ({rec['cudnn_tflops']:5.0f} TF/s)  "
              f"im2col+mm {rec.get('im2col_mm_ms', float('nan')) * 1e3:7.1f} us  "
              f"triton {b.get('ms', float('nan')) * 1e3:7.1f} us (x{rec.get('triton_speedup', 0):.2f}, "
              f"S={b.get('split')}, {b.get('block_m')}x{b.get('block_n')}, w{b.get('num_warps')} "
              f"s{b.get('num_stages')}, err {b.get('rel_l2_vs_cudnn', float('nan')):.1e})", flush=True)
    tot = {k: sum(r["count"] * r.get(k, r["cudnn_ms"]) for r in results) for k in ("cudnn_ms", "im2col_mm_ms")}
    tot["best_of_each_ms"] = sum(r["count"] * min(r["cudnn_ms"], (r["triton_best"] or {}).get("ms", 1e9),
                                                  r.get("im2col_mm_ms", 1e9)) for r in results)
    print(f"per UNet call (counts): cuDNN {tot['cudnn_ms']:.3f} ms, im2col+mm {tot['im2col_mm_ms']:.3f} ms, "
          f"best of the three per shape {tot['best_of_each_ms']:.3f} ms")
    if args.out:
        meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                "cudnn": torch.backends.cudnn.version(), "date": datetime.datetime.now(datetime.UTC).isoformat()}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "totals": tot, "shapes": results}, f, indent=1)


if __name__ == "__main__":
    main()
