"""What a compiled job's short last batch costs, with and without its padding.

`ldm generate --n 300` (batch 64) ends with a batch of 44, and `ldm eval`'s 10,000 samples with
one of 16. The compiled UNet has static shapes, so an unpadded short batch is a second compile;
`generate_uint8` now fills it up to the batch size instead (`pipeline.py`). One process per mode
(a fresh compiler cache each), the whole job timed, compilation included, as a user waits for it:

    python3 benchmarks/last_batch_check.py --mode padded --n 300 --out $OUT/padded.json
    python3 benchmarks/last_batch_check.py --mode unpadded --n 300 --out $OUT/unpadded.json

"unpadded" runs what the pipeline ran before: the whole batches as one job, then the short
batch as a job of its own (a job of one short batch is not padded). Both write the images, so
that the two modes' images can be compared (`--compare A.json B.json`).
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


def run(args: argparse.Namespace) -> dict:
    pipe = LatentDiffusionPipeline.from_pretrained(resolve_model_source(args.model), device="cuda", compile="on")
    seeds, labels = pipe.plan(args.n, None, 0)
    whole = len(seeds) // args.batch_size * args.batch_size
    torch.cuda.synchronize()
    start = time.perf_counter()
    if args.mode == "padded":
        images = pipe.generate_uint8(seeds, labels, batch_size=args.batch_size)
    else:
        first = pipe.generate_uint8(seeds[:whole], labels[:whole], batch_size=args.batch_size)
        rest = pipe.generate_uint8(seeds[whole:], labels[whole:], batch_size=args.batch_size)
        images = torch.cat([first, rest])
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    torch.cuda.synchronize()
    start = time.perf_counter()
    again = pipe.generate_uint8(seeds, labels, batch_size=args.batch_size)  # compiled graphs now cached
    torch.cuda.synchronize()
    return {"mode": args.mode, "model": args.model, "n": args.n, "batch_size": args.batch_size,
            "short_batch": len(seeds) - whole, "first_job_s": round(seconds, 2),
            "second_job_s": round(time.perf_counter() - start, 3), "same_images_twice": torch.equal(images, again),
            "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "images_uint8": images.flatten().tolist() if args.keep_images else None}


def compare(paths: list[str]) -> None:
    a, b = (json.loads(Path(p).read_text()) for p in paths)
    x, y = torch.tensor(a["images_uint8"]).float(), torch.tensor(b["images_uint8"]).float()
    print(f"images {a['mode']} vs {b['mode']}: mean |diff| {(x - y).abs().mean():.3f} uint8 levels, "
          f"max {(x - y).abs().max():.0f}, identical {torch.equal(x, y)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("padded", "unpadded"), default="padded")
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--keep-images", action="store_true", help="put the images in the JSON (for --compare)")
    parser.add_argument("--compare", nargs=2, metavar="JSON", help="compare two runs' images, run nothing")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.compare:
        compare(args.compare)
        return 0
    if not torch.cuda.is_available():
        print("last_batch_check.py measures the compiled CUDA path; no GPU here", file=sys.stderr)
        return 2
    result = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result))
    print({k: v for k, v in result.items() if k != "images_uint8"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
