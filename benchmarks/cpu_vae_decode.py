"""VAE decode on a CPU, ldmkit against diffusers with the same weights, same process.

Two decoders: Stable Diffusion's KL-f8 shape (random weights, converted as bench_gpu.py's C3
does) and the bundled emoji model's VAE (exported with `write_diffusers_folder`, loaded by
diffusers). float32, `torch.inference_mode`, median of `--iters` calls after one warm-up, the two
sides alternating.

    python benchmarks/cpu_vae_decode.py --threads 1 2 --out benchmarks/results/cpu_vae_decode.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ldmkit_side  # noqa: E402
import peers  # noqa: E402

SD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=256)


def median_ms(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def decoders():
    """(name, peer decode, ldmkit decode, latent channels, latent sizes, batch sizes) per VAE."""
    from diffusers import AutoencoderKL

    from ldmkit.interop.diffusers_export import write_diffusers_folder
    from ldmkit.interop.bundle import load_bundle
    from ldmkit.pretrained import resolve_model_source

    torch.manual_seed(0)
    peer = peers.build_vae(SD_VAE, torch.device("cpu"))
    ours, _ = ldmkit_side.build_vae(peer, torch.device("cpu"), None, 0.18215)
    yield ("sd-kl-f8 (random weights)", lambda z: peers.vae_decode(peer, z), lambda z: ldmkit_side.vae_decode(ours, z),
           4, [(1, 16), (1, 32)])
    bundle = load_bundle(resolve_model_source("emoji"))
    with tempfile.TemporaryDirectory() as folder:
        write_diffusers_folder(Path(folder) / "emoji", bundle)
        emoji_peer = AutoencoderKL.from_pretrained(Path(folder) / "emoji" / "vae").eval()
    vae = bundle.vae.float().eval()
    yield ("emoji (bundled)", lambda z: emoji_peer.decode(z).sample, vae.decode_raw, vae.config.latent_channels,
           [(1, 16), (16, 16), (64, 16)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (default: 1 2)")
    parser.add_argument("--iters", type=int, default=5, help="timed calls per side (default: 5)")
    parser.add_argument("--out", type=Path, help="JSON file for the numbers")
    args = parser.parse_args(argv)
    rows = []
    for name, peer_decode, our_decode, channels, shapes in decoders():
        for batch, size in shapes:
            z = torch.randn(batch, channels, size, size)
            with torch.inference_mode():
                diff = (peer_decode(z) - our_decode(z)).abs().max().item()
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    peer_ms, our_ms = median_ms(lambda: peer_decode(z), args.iters), median_ms(lambda: our_decode(z),
                                                                                             args.iters)
                    rows.append(dict(vae=name, batch=batch, latent=size, threads=threads, peer_ms=peer_ms,
                                     ldmkit_ms=our_ms, time_ratio=our_ms / peer_ms, max_abs_diff=diff))
                    print(f"{name}, batch {batch}, latent {size}x{size}, {threads} thread(s): diffusers {peer_ms:.1f} "
                          f"ms, ldmkit {our_ms:.1f} ms ({our_ms / peer_ms:.2f}x the time), max |diff| {diff:.1e}",
                          flush=True)
    if args.out:
        args.out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
