"""`ldm generate`'s output loop: images/s to the PNG files, with the writes in the sampling thread
(ldmkit before v27) against `BackgroundWrites` (worker threads, what `ldm generate` does now).

One process, one pipeline, one compile: a warm-up job first, then each mode writes the same job
into its own fresh folder (the same seeds, so the same PNGs). "none" samples and drops the images:
the floor a writer can reach. The folder is the one `--dir` names (the disk a user writes to).

    python benchmarks/generate_writes.py --n 2048 --dir /tmp/writes --out $OUT/writes.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from ldmkit.cli.background_writes import BackgroundWrites
from ldmkit.data.images import save_png, to_pil
from ldmkit.eval.samples_io import sample_filename
from ldmkit.pipeline import LatentDiffusionPipeline
from ldmkit.pretrained import resolve_model_source


def run_job(pipe, seeds, labels, batch: int, folder: Path | None, mode: str) -> float:
    """Seconds for the whole job, its files on disk (fsync'ed, as `ldm generate` writes them)."""
    names = [sample_filename(k, s, c if c >= 0 else None) for k, (s, c) in enumerate(zip(seeds, labels))]
    start = time.perf_counter()
    images_of = pipe.iter_uint8(seeds, labels, batch_size=batch)
    if mode == "none":
        for _ in images_of:
            pass
    elif mode == "inline":
        k = 0
        for images in images_of:
            for image in to_pil(images):
                save_png(image, folder / names[k])
                k += 1
    else:
        with BackgroundWrites(lambda image, path: save_png(image, path), int(mode)) as writes:
            k = 0
            for images in images_of:
                writes.wait_for(0)
                for image in to_pil(images):
                    writes.put(image, folder / names[k])
                    k += 1
            writes.finish()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="emoji", help="a bundled model or a model path (default: emoji)")
    parser.add_argument("--n", type=int, default=2048, help="images per job (default: 2048)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per sampler batch (default: 64)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--compile", default="auto", help="the pipeline's compile setting (default: auto)")
    parser.add_argument("--modes", nargs="+", default=["none", "inline", "1", "2", "4", "8"],
                        help="none (no files), inline (writes in the sampling thread), or a thread count")
    parser.add_argument("--repeats", type=int, default=2, help="jobs per mode, the best kept (default: 2)")
    parser.add_argument("--dir", type=Path, required=True, help="where the jobs write their folders")
    parser.add_argument("--out", type=Path, help="JSON file for the numbers")
    args = parser.parse_args(argv)

    pipe = LatentDiffusionPipeline.from_pretrained(resolve_model_source(args.model), device=args.device,
                                                   compile=args.compile)
    seeds, labels = pipe.plan(args.n, None, 0)
    warm = time.perf_counter()
    run_job(pipe, seeds, labels, args.batch_size, None, "none")  # the compile, when there is one
    record: dict = {"device": str(pipe.device), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available()
                    else None, "torch": torch.__version__, "model": args.model, "n": args.n,
                    "batch_size": args.batch_size, "compile": args.compile, "dir": str(args.dir),
                    "warm_up_s": time.perf_counter() - warm, "modes": {}}
    for mode in args.modes:
        times = []
        for repeat in range(args.repeats):
            folder = args.dir / f"{mode}-{repeat}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            times.append(run_job(pipe, seeds, labels, args.batch_size, folder, mode))
            if mode != "none":
                assert len(list(folder.glob("*.png"))) == args.n, "a job lost files"
            shutil.rmtree(folder)
        best = min(times)
        record["modes"][mode] = {"seconds": times, "img_per_s": args.n / best}
        print(f"{mode:>6}: {best:.2f} s = {args.n / best:,.0f} img/s (jobs: {', '.join(f'{t:.2f}' for t in times)})",
              flush=True)
    inline = record["modes"].get("inline")
    print("\n| writes | img/s | vs inline |\n|---|---|---|")
    for mode, row in record["modes"].items():
        ratio = f"{row['img_per_s'] / inline['img_per_s']:.2f}x" if inline else "-"
        print(f"| {mode} | {row['img_per_s']:,.0f} | {ratio} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
