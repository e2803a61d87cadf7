"""Where one sample PNG's write goes on a disk: encoding, the file's write and fsync, the rename,
the folder's fsync; then `save_png` alone on 1-8 threads (no sampling beside it). (v27 also measured
the folder fsync'ed once a batch instead of once a file: no gain on the H200's disk, not kept.)

    python benchmarks/png_write_profile.py --dir /tmp/pngs --size 64 --n 2000 --out $OUT/png_profile.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ldmkit.atomic import fsync_directory
from ldmkit.data.images import save_png


def sample_like_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Smooth colour fields with a little noise: compresses like a generated image, not like noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 255, 3)
        field = a * ramp[None, :, None] + b * ramp[:, None, None] + c * (1 - ramp[None, :, None])
        noisy = field / 2 + rng.normal(0, 6, (size, size, 3))
        out.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return out


def per_part_ms(images: list[Image.Image], folder: Path) -> dict[str, float]:
    parts = dict.fromkeys(["encode", "write", "fsync_file", "rename", "fsync_folder"], 0.0)
    for k, image in enumerate(images):
        t0 = time.perf_counter()
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        t1 = time.perf_counter()
        tmp, final = folder / f".{k}.tmp", folder / f"{k}.png"
        with open(tmp, "xb") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            t2 = time.perf_counter()
            os.fsync(handle.fileno())
        t3 = time.perf_counter()
        os.replace(tmp, final)
        t4 = time.perf_counter()
        fsync_directory(folder)
        t5 = time.perf_counter()
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            parts[name] += dt
    return {name: total / len(images) * 1e3 for name, total in parts.items()}


def threaded_ms(images: list[Image.Image], folder: Path, threads: int, batch: int) -> float:
    """ms an image for `save_png` over `threads` threads, a batch at a time."""
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for first in range(0, len(images), batch):
            chunk = list(enumerate(images[first:first + batch], first))
            list(pool.map(lambda item: save_png(item[1], folder / f"{item[0]}.png"), chunk))
    return (time.perf_counter() - start) / len(images) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="a folder on the disk to measure")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument("--n", type=int, default=2000, help="images per measurement (default: 2000)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default: 64)")
    parser.add_argument("--out", type=Path, help="JSON file for the numbers")
    args = parser.parse_args(argv)
    images = sample_like_images(args.n, args.size)
    record: dict = {"size": args.size, "n": args.n, "batch": args.batch, "dir": str(args.dir), "threaded_ms": {}}

    def fresh(name: str) -> Path:
        folder = args.dir / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    record["parts_ms"] = per_part_ms(images, fresh("parts"))
    print("one thread, ms an image: " + ", ".join(f"{k} {v:.3f}" for k, v in record["parts_ms"].items()), flush=True)
    for threads in (1, 2, 4, 8):
        ms = threaded_ms(images, fresh(f"t{threads}"), threads, args.batch)
        record["threaded_ms"][f"{threads} threads"] = ms
        print(f"{threads} threads: {ms:.3f} ms an image ({1e3 / ms:,.0f} img/s)", flush=True)
    shutil.rmtree(args.dir, ignore_errors=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
