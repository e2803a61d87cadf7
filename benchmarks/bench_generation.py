"""E1 and E2 of bench_gpu.py: end-to-end generation, the peer's pipeline loop against ldmkit's.

Both sides start from the same noise and conditioning, run 25 DPM-Solver++(2M) steps with
classifier-free guidance (the UNet at twice the batch) and decode; the record keeps the whole
time, the sampling loop alone (UNet it/s), the decode time, the host-device syncs of the loop,
and ldmkit's images against the peer's (same weights, schedule and solver).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

import harness as H
import kernel_profile
import ldmkit_side as L
import peers as P

if TYPE_CHECKING:
    from bench_gpu import Bench


def run_generation(bench: Bench, group: str, measures: list[str]) -> None:
    """E1 (C1 UNet + C3 VAE, 64 images) or E2 (C2 UNet, one 512 px image): noise -> 25
    DPM-Solver++(2M) steps with CFG -> decode, each side in its best mode."""
    e2 = group == "E2"
    if e2:
        ucfg = P.C2_UNET_TINY if bench.smoke else P.C2_UNET
        schedule, scale = P.E2_SCHEDULE, bench.args.cfg_e2
    else:
        ucfg = P.C1_UNET_TINY if bench.smoke else P.C1_UNET
        schedule, scale = P.E1_SCHEDULE, bench.args.cfg_e1
    vcfg = P.C3_VAE_TINY if bench.smoke else P.C3_VAE
    res, n = ucfg["sample_size"], bench.batch[f"{group}.gen"]
    dtype = torch.bfloat16 if bench.args.gen_precision == "bf16" and bench.amp else torch.float32
    use_amp = bench.args.gen_precision == "autocast"

    peer_unet, peer_vae = P.build_unet(ucfg, bench.device), P.build_vae(vcfg, bench.device)
    ldm_unet, uinfo = L.build_unet(peer_unet, bench.device, None if bench.smoke else ("sd15" if e2 else "base"),
                                   None if e2 or bench.smoke else {"num_classes": 1000})
    ldm_vae, vinfo = L.build_vae(peer_vae, bench.device, None if bench.smoke else "sd",
                                 peer_vae.config.scaling_factor)
    bench.params(group, peer_unet, ldm_unet, uinfo)
    bench.rec.info(group, "vae", {k: v for k, v in vinfo.items() if k != "config"})
    for m in (peer_unet, peer_vae, ldm_unet, ldm_vae):
        m.to(dtype)

    noise = bench.randn(n, 4, res, res, seed=11)
    if e2:
        width = ucfg["cross_attention_dim"]
        cond = {"context": bench.randn(n, P.C2_CONTEXT_LEN, width, seed=12, dtype=dtype)}
        uncond = {"context": bench.randn(n, P.C2_CONTEXT_LEN, width, seed=13, dtype=dtype)}  # stands in for ""
    else:
        null = ucfg["num_class_embeds"] - 1
        cond = {"labels": bench.randint(null, n, seed=12)}
        uncond = {"labels": torch.full((n,), null, device=bench.device, dtype=torch.long)}

    for side in bench.sides_for(group):
        is_peer = side.startswith("peer")
        unet, vae = (peer_unet, peer_vae) if is_peer else (ldm_unet, ldm_vae)
        cl = bench.channels_last(side)
        fmt = torch.channels_last if cl else torch.contiguous_format
        unet.to(memory_format=fmt)
        vae.to(memory_format=fmt)
        mode = bench.side_mode(side, "e2" if e2 else "e1")
        graphs = "reduce-overhead" in mode and not bench.smoke
        derive = not is_peer and mode != "none" and not bench.args.ldm_no_derived_weights
        cache_context = not is_peer and mode != "none" and not bench.args.ldm_no_context_cache
        # as `ldm generate`'s CompiledUNet: the UNet's derived weights and the context's keys and
        # values computed once
        with L.derived_weights_for_inference(unet, derive), \
                L.context_kv_for_generation(unet, cache_context) as before_call:
            try:
                unet_c = bench.compile(unet, mode, side)
                if is_peer:
                    dec = bench.compile(lambda z: P.vae_decode(peer_vae, z),
                                       "none" if bench.args.no_compile_vae else mode, side)
                    gen = P.PeerGenerator(unet_c, dec, P.make_scheduler(schedule),
                                          scaling_factor=peer_vae.config.scaling_factor, guidance_scale=scale,
                                          steps=bench.steps, dtype=dtype, mark_step=graphs)
                else:
                    dec = bench.compile(lambda z: ldm_vae.decode(z),
                                        "none" if bench.args.no_compile_vae else mode, side)
                    gen = L.LdmGenerator(unet_c, dec, L.make_schedule(schedule), guidance_scale=scale,
                                         steps=bench.steps, dtype=dtype, mark_step=graphs,
                                         before_call=before_call)
                x_T = noise.contiguous(memory_format=torch.channels_last) if cl else noise

                @torch.no_grad()
                def full():
                    with bench.autocast(use_amp):
                        return gen(x_T, cond, uncond)

                @torch.no_grad()
                def loop():
                    with bench.autocast(use_amp):
                        return gen.latents(x_T, cond, uncond)

                t_full = H.time_fn(full, bench.device, warmup=bench.warmup_for(mode), iters=bench.iters)
                t_loop = H.time_fn(loop, bench.device, warmup=1, iters=bench.iters)
                syncs = kernel_profile.count_syncs(loop, bench.device)
                images = full().float()
                extra: dict[str, Any] = {}
                if "peer" not in bench.reference and is_peer:
                    bench.reference["peer"] = images
                if not is_peer and "peer" in bench.reference and uinfo.get("same_weights"):
                    extra["images_vs_peer"] = H.agreement(bench.reference["peer"], images)
                bench.record(group, "gen", side, t_full, n, None, compile_mode=mode, channels_last=cl,
                            precision=str(dtype).replace("torch.", "") + (" autocast" if use_amp else ""),
                            s_per_image=t_full.median_s / n, unet_it_s=bench.steps / t_loop.median_s,
                            loop_ms=t_loop.median_s * 1e3, decode_ms=(t_full.median_s - t_loop.median_s) * 1e3,
                            loop_first_call_s=t_loop.first_call_s, syncs_in_loop=syncs,
                            steps=bench.steps, guidance_scale=scale, images_finite=bool(torch.isfinite(images).all()),
                            **extra, **bench.profile(full))
            except Exception as err:
                bench.rec.error(group, "gen", side, err)
            finally:
                H.free_memory()
    bench.reference.clear()
    H.free_memory()
