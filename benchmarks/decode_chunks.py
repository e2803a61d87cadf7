"""Does decoding the large levels a few images at a time, so each activation is still in L2
when the next kernel reads it, beat decoding the whole batch level by level?

The KL-f8 decoder at 256 px holds 16-32 MB per image at its 256x256 level (bf16): a batch of 32
streams every GroupNorm pass through HBM, while one or two images' worth fits the H100/H200's
50 MB L2. Splitting the batch is the same function (nothing in the decoder mixes samples).

The decoder runs in two compiled parts: `head` (conv_in, the middle block and the levels before
`split`) on the whole batch, then `tail` (the remaining levels, norm_out, conv_out) on chunks of
`chunk` images, each chunk's images written into one output. Both sides are timed the same way,
ldmkit's decoder and the peer's (diffusers, same structure), so a gain that is L2's alone shows
on both.

    python benchmarks/decode_chunks.py --out $OUT/decode_chunks.json     # on the GPU
    python benchmarks/decode_chunks.py --smoke                          # CPU, tiny, no timing claims
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H  # noqa: E402


def ldmkit_parts(vae) -> tuple[Callable, Callable, int]:
    from ldmkit.nn import group_norm_silu

    dec = vae.decoder

    def head(z, split):
        h = dec.mid_block(dec.conv_in(vae.post_quant_conv(z)))  # [B, 512, 32, 32]
        for level in dec.up_blocks[:split]:
            h = level(h)
        return h

    def tail(h, split):
        for level in dec.up_blocks[split:]:
            h = level(h)
        return dec.conv_out(group_norm_silu(h, dec.norm_out))  # [b, 3, 256, 256]

    return head, tail, len(dec.up_blocks)


def peer_parts(vae) -> tuple[Callable, Callable, int]:
    dec = vae.decoder

    def head(z, split):
        h = dec.mid_block(dec.conv_in(vae.post_quant_conv(z)), None)
        for block in dec.up_blocks[:split]:
            h = block(h, None)
        return h

    def tail(h, split):
        for block in dec.up_blocks[split:]:
            h = block(h, None)
        return dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))

    return head, tail, len(dec.up_blocks)


def chunked_decoder(head, tail, split: int, chunk: int, batch: int, compile_mode: str | None):
    """z [B, 4, 32, 32] -> images [B, 3, 256, 256]: head on the batch, tail chunk by chunk."""
    kw = {"dynamic": False} if compile_mode == "default" else {"dynamic": False, "mode": compile_mode}
    if chunk >= batch:  # the plain decode, one graph
        def whole(z):
            return tail(head(z, split), split)

        if compile_mode is None:
            return whole
        compiled = torch.compile(whole, **kw)

        def whole_step(z):
            if compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            return compiled(z)

        return whole_step
    if compile_mode is not None:
        head, tail = torch.compile(head, **kw), torch.compile(tail, **kw)

    def decode(z):
        if compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        h = head(z, split)  # [B, C, h', w'] after `split` levels
        outs = [tail(h[i:i + chunk], split) for i in range(0, batch, chunk)]  # each [chunk, 3, H, W]
        return torch.cat(outs)

    return decode


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32, help="images per decode (C3: 32)")
    ap.add_argument("--variants", default="4:32,2:4,2:2,2:1,3:2",
                    help="ldmkit's split:chunk pairs; split = levels run on the whole batch, 4:32 = the plain decode")
    ap.add_argument("--peer-variants", default="4:32,2:2", help="the peer's split:chunk pairs")
    ap.add_argument("--sides", default="ldmkit,peer")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--compile", default="default", help="torch.compile mode, or none")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU: the code runs")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    device = torch.device("cpu" if args.smoke else "cuda")
    H.setup_backends(device)
    torch._dynamo.config.cache_size_limit = 64
    from ldmkit.models import VAE_PRESETS, AutoencoderKL

    batch = 2 if args.smoke else args.batch
    results: list[dict] = []
    for side in args.sides.split(","):
        torch.manual_seed(0)
        if side == "ldmkit":
            cfg = VAE_PRESETS["sd"](**({"block_channels": (8, 16), "num_res_blocks": 1, "norm_groups": 4}
                                       if args.smoke else {}))
            with torch.device(device):
                vae = AutoencoderKL(cfg).eval()
            head, tail, levels = ldmkit_parts(vae)
        else:
            import peers as P

            vae = P.build_vae(P.C3_VAE_TINY if args.smoke else P.C3_VAE, device)
            head, tail, levels = peer_parts(vae)
        vae.to(memory_format=torch.channels_last)
        side_res = 16 // 2 if args.smoke else 32
        g = torch.Generator(device).manual_seed(1)
        z = torch.randn(batch, 4, side_res, side_res, generator=g, device=device).contiguous(
            memory_format=torch.channels_last)
        reference = None
        for item in (args.variants if side == "ldmkit" else args.peer_variants).split(","):
            split, chunk = (int(v) for v in item.split(":"))
            split = min(split, levels)
            mode = None if args.compile == "none" or args.smoke else args.compile
            fn = chunked_decoder(head, tail, split, chunk, batch, mode)

            @torch.no_grad()
            def run(fn=fn):
                with H.autocast(device, device.type == "cuda"):
                    return fn(z)

            try:
                t = H.time_fn(run, device, warmup=3, iters=2 if args.smoke else args.iters)
                out = run().float()
                if reference is None:
                    reference = out
                agree = H.agreement(reference, out)["rel_l2"]
                row = dict(side=side, split=split, chunk=chunk, ms=t.median_s * 1e3, img_s=batch / t.median_s,
                           first_call_s=t.first_call_s, rel_l2_vs_first=agree)
            except Exception as err:  # one variant failing leaves the rest
                row = dict(side=side, split=split, chunk=chunk, error=f"{type(err).__name__}: {err}"[:300])
            results.append(row)
            print(json.dumps(row), flush=True)
            H.free_memory()
        del vae
        H.free_memory()

    env = H.environment(device)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": env, "batch": batch, "results": results}, indent=1))
    print(f"\n{'side':7} {'split':>5} {'chunk':>5} {'ms':>8} {'img/s':>8} {'vs plain':>8} {'relL2':>8}")
    plain = {r["side"]: r["ms"] for r in results if "ms" in r and r["chunk"] >= batch}
    for r in results:
        if "ms" not in r:
            print(f"{r['side']:7} {r['split']:5} {r['chunk']:5} {r['error']}")
            continue
        base = plain.get(r["side"])
        ratio = f"{base / r['ms']:.3f}" if base else "-"
        print(f"{r['side']:7} {r['split']:5} {r['chunk']:5} {r['ms']:8.2f} {r['img_s']:8.1f} {ratio:>8} "
              f"{r['rel_l2_vs_first']:8.1e}")


if __name__ == "__main__":
    main()
