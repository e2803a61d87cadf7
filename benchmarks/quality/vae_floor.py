"""The reconstruction floor of model files' VAEs in float32: PSNR / SSIM of encode-decode over a
dataset split, for comparing shipped models (benchmarks/NOTES.md v29: the bundled models before
and after their retraining, and float32 against `ldm eval --vae`'s bf16 on the GPU).

    python3 benchmarks/quality/vae_floor.py --data fashion-mnist:.carry/fmnist --split val --image-size 32 \\
        --models src/ldmkit/pretrained/fashion-mnist.safetensors OLD.safetensors --out RESULT.json
    python3 benchmarks/quality/vae_floor.py --data emoji --split val train --image-size 64 --models ...

`git show REV:src/ldmkit/pretrained/NAME.safetensors > OLD.safetensors` writes an earlier bundled file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ldmkit.data import load_image_dataset
from ldmkit.train.inference_file import load_inference_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vae_ema import metrics_on_the_test_images  # noqa: E402 (the same measurement as the paired runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a dataset as `ldm train --data` takes it")
    parser.add_argument("--split", nargs="+", default=["val"], help="splits to measure (train, val)")
    parser.add_argument("--image-size", type=int, required=True, help="the size the models were trained at")
    parser.add_argument("--models", nargs="+", required=True, help="model files or run folders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="JSON file for the numbers")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rows = []
    for split in args.split:
        dataset = load_image_dataset(args.data, split, image_size=args.image_size, flip=False)
        images = torch.stack([dataset[k][0] for k in range(len(dataset))])  # [N, C, H, W] in [-1, 1]
        for model in args.models:
            _, vae, _ = load_inference_file(model, "cpu", require_unet=False)
            metrics = metrics_on_the_test_images(vae.float(), images, device)
            rows.append({"split": split, "images": len(images), "model": str(model), **metrics})
            print(f"{split} ({len(images)} images) {model}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}",
                  flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"data": args.data, "dtype": "float32", "device": "cpu", "rows": rows},
                                       indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
