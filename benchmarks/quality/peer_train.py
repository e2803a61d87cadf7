"""The Q1 peer: diffusers `UNet2DModel` + DDPM trained in pixel space on Fashion-MNIST.

The recipe is the one `shared/BENCHMARKS.md` gives (images padded to 32x32 in [-1, 1];
block_out_channels (64, 128, 256, 256), 2 layers per block, self-attention at 8x8, 11 class
embeddings with the null label dropped in 10% of the time; DDPM eps, linear betas, 1000 steps;
AdamW 2e-4 with 500 warm-up steps, batch 256, horizontal flips, grad clip 1.0, EMA 0.999,
bf16 autocast, torch.compile), trained for a fixed wall-clock budget counted from the start of
the script (compilation included), then sampled with `DPMSolverMultistepScheduler`
(dpmsolver++, order 2), 25 steps, at several guidance scales. Samples are written as one
`.npz` per scale (`images` uint8 [N, 1, 32, 32], `labels` int64 [N]), which `ldm eval
--samples FILE.npz` reads.

    python benchmarks/quality/peer_train.py --data fashion-mnist:DIR --seconds 420 --out OUT

To sample the guidance scales in parallel on several GPUs, train with `--cfg` (no scales) and
`--save-weights OUT/peer_ema.safetensors`, then run one `--sample-from` process per scale:

    CUDA_VISIBLE_DEVICES=1 python benchmarks/quality/peer_train.py --sample-from OUT/peer_ema.safetensors --cfg 2.0 --out OUT
"""  # noqa: E501 (a copy-pastable command in the --help text)

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

START = time.time()


def build_peer(num_classes: int = 10):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32, in_channels=1, out_channels=1,
        block_out_channels=(64, 128, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        num_class_embeds=num_classes + 1,  # + the null label for classifier-free guidance
    )


def load_fmnist(source: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from ldmkit.data import load_image_dataset

    data = load_image_dataset(source, "train", image_size=32, flip=False)
    images = data.as_uint8_tensor().to(device).float() / 127.5 - 1  # [60000, 1, 32, 32]
    return images, data.as_label_tensor().to(device)


def train(args: argparse.Namespace, device: torch.device):
    from diffusers import DDPMScheduler

    torch.manual_seed(args.seed)
    images, labels = load_fmnist(args.data, device)
    model = build_peer().to(device).to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=device.type == "cuda")
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 500))
    step_fn = torch.compile(model) if args.compile else model

    step, deadline = 0, START + args.seconds
    while time.time() < deadline:
        idx = torch.randint(0, images.shape[0], (args.batch_size,), device=device)
        x0, y = images[idx], labels[idx].clone()
        flip = torch.rand(x0.shape[0], device=device) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        y[torch.rand(y.shape[0], device=device) < 0.1] = 10  # null label
        t = torch.randint(0, 1000, (x0.shape[0],), device=device)
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = step_fn(x_t.contiguous(memory_format=torch.channels_last), t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        warmup.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - 0.999)
        step += 1
        if step % 500 == 0:
            print(f"peer step {step} loss {loss.item():.4f} elapsed {time.time() - START:.0f}s", flush=True)
    return ema, {"steps": step, "images_seen": step * args.batch_size, "params": params,
                 "train_seconds": time.time() - START}


@torch.no_grad()
def sample(model, cfg: float, n: int, device: torch.device, batch: int = 1000, seed: int = 0):
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                        algorithm_type="dpmsolver++", solver_order=2)
    out, labels = [], torch.arange(n) % 10
    gen = torch.Generator(device=device).manual_seed(seed)
    for start in range(0, n, batch):
        y = labels[start:start + batch].to(device)
        x = torch.randn(y.shape[0], 1, 32, 32, device=device, generator=gen)
        sched.set_timesteps(25, device=device)
        for t in sched.timesteps:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                both = model(torch.cat([x, x]), t, class_labels=torch.cat([y, torch.full_like(y, 10)])).sample.float()
            cond, uncond = both.chunk(2)
            x = sched.step(uncond + cfg * (cond - uncond), t, x).prev_sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
    return torch.cat(out).numpy(), labels.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist", help="ldmkit data source of Fashion-MNIST")
    parser.add_argument("--seconds", type=float, help="wall-clock training budget, compilation included")
    parser.add_argument("--save-weights", help="also write the trained EMA weights here (.safetensors)")
    parser.add_argument("--sample-from", help="skip training: sample from EMA weights written by --save-weights")
    parser.add_argument("--out", required=True, help="output folder for samples_cfg*.npz and peer.json")
    parser.add_argument("--cfg", type=float, nargs="*", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--sample-until", type=float,
                        help="skip a guidance scale whose sampling would end later than this many seconds "
                        "after the start (the previous scale's time is the estimate)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.sample_from:
        from safetensors.torch import load_file

        ema = build_peer().to(device).to(memory_format=torch.channels_last).eval()
        ema.load_state_dict(load_file(args.sample_from))
        info = {}
    else:
        if args.seconds is None:
            parser.error("--seconds is required for training")
        ema, info = train(args, device)
        print(f"peer trained: {info}", flush=True)
        if args.save_weights:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, args.save_weights)
    last_seconds = 0.0
    for cfg in args.cfg:
        if args.sample_until and time.time() - START + last_seconds > args.sample_until:
            print(f"skipping CFG {cfg}: it would end past {args.sample_until:.0f} s", flush=True)
            continue
        t0 = time.time()
        images, labels = sample(ema, cfg, args.n, device)
        np.savez_compressed(out / f"peer_samples_cfg{cfg}.npz", images=images, labels=labels)
        last_seconds = info[f"sample_seconds_cfg{cfg}"] = time.time() - t0
    name = f"peer_sampling_cfg{args.cfg[0]}.json" if args.sample_from and len(args.cfg) == 1 else "peer.json"
    (out / name).write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
