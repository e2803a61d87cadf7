"""The product's generation path on the GPU: `LatentDiffusionPipeline.generate_uint8`, as
`ldm generate` runs it, with the UNet compiled (CUDA graphs, channels_last) and eager.

Checks that the compiled path gives the eager path's images (same seeds) within bf16 tolerance,
and times both (images/s, the compile excluded: the compiled side is timed on its second job).
"Within bf16 tolerance" is measured, not assumed: both bf16 paths are compared with the same
job run eagerly in float32, so the compiled path's distance stands beside the eager path's.

    python benchmarks/product_generate.py --model emoji --n 512 --out $OUT/product.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ldmkit.pipeline import LatentDiffusionPipeline
from ldmkit.pretrained import resolve_model_source


def timed_job(pipe: LatentDiffusionPipeline, seeds: list[int], labels: list[int],
              batch: int) -> tuple[torch.Tensor, float]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    images = pipe.generate_uint8(seeds, labels, batch_size=batch)
    torch.cuda.synchronize()
    return images, time.perf_counter() - start


def image_distance(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """How far two uint8 image batches [N, C, H, W] lie apart: per pixel, and per image (the
    mean absolute difference of the worst image: a sampler trajectory that diverged shows there)."""
    diff = (a.float() - b.float()).abs()
    per_image = diff.flatten(1).mean(1)
    return {"mean_abs_uint8": diff.mean().item(), "max_abs_uint8": diff.max().item(),
            "frac_pixels_over_8": (diff > 8).float().mean().item(), "worst_image_mean_abs": per_image.max().item(),
            "median_image_mean_abs": per_image.median().item()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="emoji", help="a bundled model or a model path (default: emoji)")
    parser.add_argument("--n", type=int, default=512, help="images per job (default: 512)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per sampler batch (default: 64)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its convolution algorithms (ldm generate leaves PyTorch's "
                             "default, heuristics; the side-by-side benchmark turns it on for both sides)")
    parser.add_argument("--out", type=Path, help="JSON file for the numbers")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("product_generate.py needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    record: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
                    "n": args.n, "batch_size": args.batch_size, "cudnn_benchmark": args.cudnn_benchmark}
    images = {}
    source = resolve_model_source(args.model)
    reference = LatentDiffusionPipeline.from_pretrained(source, device="cuda", compile="off", dtype=torch.float32)
    seeds, labels = reference.plan(args.n, None, 0)
    images["fp32"], t_fp32 = timed_job(reference, seeds, labels, args.batch_size)
    record["eager_fp32_job_s"] = t_fp32
    del reference
    for setting in ("off", "on"):
        pipe = LatentDiffusionPipeline.from_pretrained(source, device="cuda", compile=setting)
        seeds, labels = pipe.plan(args.n, None, 0)
        first, t_first = timed_job(pipe, seeds, labels, args.batch_size)
        again, t_again = timed_job(pipe, seeds, labels, args.batch_size)
        images[setting] = again
        record[f"compile_{setting}"] = {"first_job_s": t_first, "job_s": t_again, "img_per_s": args.n / t_again,
                                        "repeat_identical": bool(torch.equal(first, again))}
        print(f"compile={setting}: first job {t_first:.1f} s, then {t_again:.2f} s = {args.n / t_again:.0f} img/s",
              flush=True)
    for name, (a, b) in {"compiled_vs_eager": ("on", "off"), "eager_bf16_vs_fp32": ("off", "fp32"),
                         "compiled_bf16_vs_fp32": ("on", "fp32")}.items():
        record[name] = image_distance(images[a], images[b])
    record["speedup"] = record["compile_on"]["img_per_s"] / record["compile_off"]["img_per_s"]
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
