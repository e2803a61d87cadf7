"""Q1's VAE stage with a constant LR (the preset's) against a cosine decay to 0 (`vae.lr_schedule`):
the reconstruction PSNR / SSIM of the final VAE on Fashion-MNIST's 10,000 test images, per seed.

Why: the Q1 runs of 2026-11-26 and 2026-11-28 trained the same 8,000 VAE steps at a constant
5e-4 and their VAEs reconstructed the test set at 42.0 and 38.9 dB. A constant LR leaves the
last iterate wherever the noise of its last steps put it; a decay to 0 should land lower and
vary less from run to run.

    python3 benchmarks/quality/vae_lr_schedule.py --data .carry/fmnist --seeds 0 1 --out $OUT/vae_lr.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from ldmkit.data.fashion_mnist import load_fashion_mnist_dataset
from ldmkit.eval import reconstruction_metrics
from ldmkit.train.inference_file import load_inference_file


@torch.no_grad()
def metrics_on_the_test_images(run: Path, data: str, device: torch.device) -> dict[str, float]:
    _, vae, _ = load_inference_file(run, "cpu", require_unet=False)
    vae = vae.to(device).eval()
    test = load_fashion_mnist_dataset(data, "val", image_size=32, flip=False, channels=1)
    images = torch.stack([test[k][0] for k in range(len(test))])  # [N, 1, 32, 32] in [-1, 1]
    recon = torch.cat([vae.decode(vae.encode(batch.to(device))).float().cpu() for batch in images.split(500)])
    return reconstruction_metrics(images, recon)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the folder of the Fashion-MNIST IDX files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--schedules", nargs="+", default=["constant", "cosine"])
    parser.add_argument("--vae-steps", type=int, help="VAE steps (default: the preset's 8,000)")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/vae-lr"), help="where the run folders go")
    parser.add_argument("--out", type=Path, help="JSON file for the numbers")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for seed in args.seeds:
        for schedule in args.schedules:
            run = args.runs / f"{schedule}-{seed}"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "ldmkit.cli", "train", "--data", f"fashion-mnist:{args.data}",
                            "--preset", "fashion-mnist", "--stage", "vae", "--seed", str(seed), "--quiet",
                            "--out", str(run), "--set", f"vae.lr_schedule={schedule}",
                            *(["--vae-steps", str(args.vae_steps)] if args.vae_steps else [])], check=True)
            metrics = metrics_on_the_test_images(run, args.data, device)
            rows.append(dict(schedule=schedule, seed=seed, train_s=time.perf_counter() - start, **metrics))
            print(f"{schedule:>8} seed {seed}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} "
                  f"({rows[-1]['train_s']:.0f} s)", flush=True)
            if args.out:  # after every run: a call cut short keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=1))
    print("\n| schedule | seed | PSNR dB | SSIM |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['schedule']} | {row['seed']} | {row['psnr']:.2f} | {row['ssim']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
