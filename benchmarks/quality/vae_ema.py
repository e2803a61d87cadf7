"""Q1's VAE stage with a moving average of the weights (`vae.ema_decay`), judged against the last
step's weights of the same run: the reconstruction PSNR / SSIM of both on Fashion-MNIST's 10,000
test images, per seed.

Why: five Q1-preset VAEs trained the same 8,000 steps at a constant LR and reconstructed the test
set at 38.9-44.4 dB (benchmarks/NOTES.md v27-v28), and a cosine decay to 0 was no better (v27).
If the spread is where the last steps leave the weights, their average should land higher and
closer together. Pairing the average with the last weights of the same trajectory removes the
run-to-run spread from the comparison.

`ldm train --stage vae` runs in this process, so the last weights can be read at the end of the
stage (the run hands on the average and keeps only that).

    python3 benchmarks/quality/vae_ema.py --data .carry/fmnist --seeds 0 1 2 --out $OUT/vae_ema.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ldmkit.cli import main as ldm
from ldmkit.data.fashion_mnist import load_fashion_mnist_dataset
from ldmkit.eval import reconstruction_metrics
from ldmkit.train import vae_stage
from ldmkit.train.inference_file import load_inference_file

LAST_WEIGHTS = "last_weights.pt"  # written beside the run's files by the hook below


def keep_the_last_weights() -> None:
    """Before the finished stage's checkpoint, save the VAE's own (not averaged) weights."""
    real = vae_stage.VAETrainer.checkpoint

    def checkpoint(self, complete: bool = False) -> None:
        if complete:
            weights = {k: v.detach().cpu() for k, v in self.vae.state_dict().items()}
            torch.save(weights, self.ctx.run_dir / LAST_WEIGHTS)
        real(self, complete)

    vae_stage.VAETrainer.checkpoint = checkpoint


@torch.no_grad()
def metrics_on_the_test_images(vae, images: torch.Tensor, device: torch.device) -> dict[str, float]:
    vae = vae.to(device).eval()
    recon = torch.cat([vae.decode(vae.encode(batch.to(device))).float().cpu() for batch in images.split(500)])
    return reconstruction_metrics(images, recon)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the folder of the Fashion-MNIST IDX files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--decay", type=float, default=0.999, help="vae.ema_decay")
    parser.add_argument("--vae-steps", type=int, help="VAE steps (default: the preset's 8,000)")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/vae-ema"), help="where the run folders go")
    parser.add_argument("--out", type=Path, help="JSON file for the numbers")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    keep_the_last_weights()
    test = load_fashion_mnist_dataset(args.data, "val", image_size=32, flip=False, channels=1)
    images = torch.stack([test[k][0] for k in range(len(test))])  # [N, 1, 32, 32] in [-1, 1]
    rows = []
    for seed in args.seeds:
        run = args.runs / f"ema-{seed}"
        start = time.perf_counter()
        status = ldm(["train", "--data", f"fashion-mnist:{args.data}", "--preset", "fashion-mnist", "--stage", "vae",
                      "--seed", str(seed), "--quiet", "--out", str(run), "--set", f"vae.ema_decay={args.decay}",
                      *(["--vae-steps", str(args.vae_steps)] if args.vae_steps else [])])
        if status != 0:
            raise SystemExit(f"ldm train exited {status}")
        _, average, _ = load_inference_file(run, "cpu", require_unet=False)
        last = load_inference_file(run, "cpu", require_unet=False)[1]
        own = torch.load(run / LAST_WEIGHTS, weights_only=True)
        last.load_state_dict({k: v for k, v in own.items() if "latent_" not in k}, strict=False)
        row = dict(seed=seed, decay=args.decay, train_s=time.perf_counter() - start,
                   average=metrics_on_the_test_images(average, images, device),
                   last=metrics_on_the_test_images(last, images, device))
        rows.append(row)
        print(f"seed {seed}: average {row['average']['psnr']:.2f} dB, last weights {row['last']['psnr']:.2f} dB "
              f"({row['train_s']:.0f} s)", flush=True)
        if args.out:  # after every run: a call cut short keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=1))
    print(f"\n| seed | average (decay {args.decay}) PSNR dB / SSIM | last weights PSNR dB / SSIM |\n|---|---|---|")
    for row in rows:
        a, b = row["average"], row["last"]
        print(f"| {row['seed']} | {a['psnr']:.2f} / {a['ssim']:.4f} | {b['psnr']:.2f} / {b['ssim']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
