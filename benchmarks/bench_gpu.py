#!/usr/bin/env python
"""ldmkit against diffusers, side by side in one process, as /work/shared/BENCHMARKS.md asks.

    python benchmarks/bench_gpu.py --only C1,C3 --out $OUT/c1c3.json        # on the GPU
    python benchmarks/bench_gpu.py --smoke --out /tmp/smoke.json            # every path, CPU
    python benchmarks/bench_gpu.py --table a.json b.json --out all.json     # merge + table

Configurations (ids for --only): C1.train C1.fwd (class UNet, ~90M), C2.train C2.fwd (SD 1.x
UNet, 860M), C3.encode C3.decode (SD VAE), E1 (64 images, 25 DPM-Solver++(2M) steps + CFG +
decode), E2 (one 512 px image, same loop, batch-1 latency). A bare C1 means all of C1.

Sides (ids for --sides): peer-eager, peer-compiled, peer-graphs (compiled with
mode="reduce-overhead", E2 only unless --peer-graphs-in says otherwise), ldmkit-eager, ldmkit
(its fast path; each lever is a flag below). Both sides get the same weights (the peer's,
through ldmkit.interop) and the same inputs; the agreement of their outputs is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import kernel_profile  # noqa: E402
import ldmkit_side as L  # noqa: E402
import peers as P  # noqa: E402
from bench_options import (  # noqa: E402
    BATCH,
    GROUPS,
    SIDES,
    SMOKE_BATCH,
    compile_kwargs,
    forces_layout_opt,
    parse_args,
    selected_measures,
)
from bench_generation import run_generation  # noqa: E402
from bench_report import merge_tables, print_summary  # noqa: E402


class Bench:
    """One benchmark process: settings, the record, and one runner per config group."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.smoke = args.smoke
        dev = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
        self.device = torch.device(dev)
        self.iters = args.iters or (1 if self.smoke else 10)
        self.warmup = args.warmup or (1 if self.smoke else 3)
        self.steps = args.steps or (3 if self.smoke else 25)
        self.batch = dict(SMOKE_BATCH if self.smoke else BATCH)
        for item in args.batch:
            key, _, value = item.partition("=")
            if key not in self.batch:
                raise SystemExit(f"--batch: unknown id {key!r}")
            self.batch[key] = int(value)
        self.sides = [s for s in (x.strip() for x in args.sides.split(",")) if s]
        bad = sorted(set(self.sides) - set(SIDES))
        if bad:
            raise SystemExit(f"--sides: unknown {bad}; use {', '.join(SIDES)}")
        # bf16 on the GPU; fp32 in --smoke unless --smoke-bf16 (CPU bf16 paths, slow but checked)
        self.amp = not self.smoke or args.smoke_bf16
        self.flops: dict[tuple, int] = {}
        self.reference: dict[str, torch.Tensor] = {}
        H.setup_backends(self.device, args.cudnn_benchmark_limit)
        if args.inductor_tuning and not self.smoke:
            import torch._inductor.config as ic

            ic.conv_1x1_as_mm = True
            ic.coordinate_descent_tuning = True
            ic.epilogue_fusion = False
            ic.coordinate_descent_check_all_directions = True
        meta = H.environment(self.device)
        meta.update(args={k: v for k, v in vars(args).items()}, batch=self.batch, iters=self.iters,
                    warmup=self.warmup, steps=self.steps, peak_tflops=H.PEAK_TFLOPS, smoke=self.smoke)
        self.rec = H.Recorder(args.out, meta)

    # ------------------------------------------------------------------ settings per side

    def side_mode(self, side: str, purpose: str) -> str:
        """torch.compile mode of a side for a purpose (train / infer / e1 / e2)."""
        if side in ("peer-eager", "ldmkit-eager"):
            return "none"
        if side == "peer-compiled":
            return "default"
        if side == "peer-graphs":
            return "reduce-overhead"
        return getattr(self.args, f"ldm_{purpose}_compile")

    def channels_last(self, side: str, training: bool = False) -> bool:
        if side.startswith("peer"):
            return not self.args.peer_no_channels_last
        if training:  # `ldm train` keeps NCHW modules; inductor's forced layout picks channels_last inside
            return self.args.ldm_train_channels_last
        return not self.args.no_channels_last

    def sides_for(self, group: str) -> list[str]:
        graphs_in = {s.strip() for s in self.args.peer_graphs_in.split(",")}
        return [s for s in self.sides if s != "peer-graphs" or group in graphs_in]

    def compile(self, obj: Callable, mode: str, side: str, *, training: bool = False) -> Callable:
        if mode == "none" or (self.smoke and not self.args.smoke_compile):
            return obj
        return torch.compile(obj, **compile_kwargs(self.args, mode, side, training=training))

    def autocast(self, enabled: bool = True):
        return H.autocast(self.device, self.amp and enabled)

    def randn(self, *shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
        g = torch.Generator(self.device).manual_seed(self.args.seed * 1000 + seed)
        return torch.randn(*shape, generator=g, device=self.device, dtype=dtype)

    def randint(self, high: int, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator(self.device).manual_seed(self.args.seed * 1000 + seed)
        return torch.randint(0, high, (n,), generator=g, device=self.device)

    @staticmethod
    def to_layout(batch: dict[str, torch.Tensor], channels_last: bool, dtype=None) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in batch.items():
            if dtype is not None and v.is_floating_point() and v.ndim > 0 and k != "t":
                v = v.to(dtype)
            if channels_last and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def place(self, active: torch.nn.Module, *others: torch.nn.Module, channels_last: bool) -> None:
        """Only the measured model on the GPU, so peak memory is its own."""
        for m in others:
            m.to("cpu")
        active.to(self.device)
        active.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        H.free_memory()

    # ------------------------------------------------------------------ recording helpers

    def count_flops_once(self, key: tuple, fn: Callable[[], Any]) -> int | None:
        if key not in self.flops:
            try:
                self.flops[key] = H.count_flops(fn)
            except Exception as err:  # a counting failure must not lose the timing
                self.rec.log(f"flop count failed for {key}: {err}")
                self.flops[key] = None
        return self.flops[key]

    def profile(self, fn: Callable[[], Any]) -> dict[str, Any]:
        """{"profile_top": [...], "profile_categories": {...}, ...} when --profile is on (after
        timing, so it never skews it)."""
        if not self.args.profile:
            return {}
        try:
            return kernel_profile.profile_kernels(fn, self.device, top=self.args.profile_top)
        except Exception as err:
            return {"profile_top": [{"name": f"profiling failed: {err}", "calls": 0, "ms_per_iter": 0, "share": 0}]}

    def record(self, config: str, measure: str, side: str, timing: H.Timing, n: int,
               flops: int | None, **extra: Any) -> None:
        values: dict[str, Any] = {"batch": n, "img_per_s": n / timing.median_s,
                                  "median_ms": timing.median_s * 1e3}
        if flops:
            values.update(gflop_per_iter=flops / 1e9, tflops=flops / timing.median_s / 1e12,
                          frac_of_peak=flops / timing.median_s / 1e12 / H.PEAK_TFLOPS)
        values.update(timing.to_dict())
        values.update(extra)
        values["graph_breaks"] = H.take_graph_breaks()
        self.rec.add(config, measure, side, **values)

    def params(self, config: str, peer: torch.nn.Module, ldm: torch.nn.Module, info: dict) -> None:
        n_peer, n_ldm = H.param_count(peer), H.param_count(ldm)
        info.update(params_peer=n_peer, params_ldmkit=n_ldm, params_rel_diff=abs(n_ldm - n_peer) / n_peer)
        self.rec.info(config, "models", info)
        flag = "" if info["params_rel_diff"] <= 0.01 else "  <-- MORE THAN 1% APART"
        self.rec.log(f"{config} params: diffusers {n_peer:,} | ldmkit {n_ldm:,} "
                     f"(same weights: {info.get('same_weights')}){flag}")

    @torch.no_grad()
    def check(self, config: str, name: str, peer_fn: Callable, ldm_fn: Callable, inputs: tuple) -> None:
        """Same function? fp32 without TF32 (tight) and under bf16 autocast (what is timed)."""
        result: dict[str, Any] = {}
        try:
            with H.exact_fp32():
                truth = peer_fn(*inputs).float()
                result["fp32"] = H.agreement(truth, ldm_fn(*inputs))
            ok = result["fp32"]["max_abs_diff_rel_std"] < 1e-3 and result["fp32"]["finite"]
            if self.amp:
                # "Within bf16 tolerance": ldmkit's bf16 error against the fp32 truth must be of
                # the size of diffusers' own bf16 error (at most twice it).
                with self.autocast():
                    peer16, ldm16 = peer_fn(*inputs).float(), ldm_fn(*inputs).float()
                result["bf16_autocast"] = H.agreement(peer16, ldm16)
                result["peer_bf16_err"] = H.agreement(truth, peer16)
                result["ldmkit_bf16_err"] = H.agreement(truth, ldm16)
                ok = ok and result["ldmkit_bf16_err"]["finite"] and (
                    result["ldmkit_bf16_err"]["rel_l2"] <= 2 * result["peer_bf16_err"]["rel_l2"] + 1e-4)
            result["agree"] = ok
            self.rec.info(config, f"agreement_{name}", result)
            self.rec.log(f"{config} {name} agreement: " + "; ".join(
                f"{k} max|diff|/std={v['max_abs_diff_rel_std']:.2e} relL2={v['rel_l2']:.2e}"
                for k, v in result.items() if isinstance(v, dict)) + f" -> {'OK' if ok else 'DIFFERENT'}")
        except Exception as err:
            self.rec.error(config, f"check_{name}", "-", err)

    # ------------------------------------------------------------------ C1 / C2: UNets

    def run_unet(self, group: str, measures: list[str]) -> None:
        text = group == "C2"
        if text:
            cfg = P.C2_UNET_TINY if self.smoke else P.C2_UNET
            preset, overrides = (None, None) if self.smoke else ("sd15", None)
        else:
            cfg = P.C1_UNET_TINY if self.smoke else P.C1_UNET
            preset, overrides = (None, None) if self.smoke else ("base", {"num_classes": 1000})
        res = cfg["sample_size"]
        peer = P.build_unet(cfg, self.device)
        ldm, info = L.build_unet(peer, self.device, preset, overrides)
        self.params(group, peer, ldm, info)

        def make_batch(n: int, seed: int) -> dict[str, torch.Tensor]:
            batch = {"x": self.randn(n, 4, res, res, seed=seed), "t": self.randint(1000, n, seed + 1)}
            if text:
                batch["context"] = self.randn(n, P.C2_CONTEXT_LEN, cfg["cross_attention_dim"], seed=seed + 2)
            else:
                batch["labels"] = self.randint(cfg["num_class_embeds"], n, seed + 2)
            return batch

        if info.get("same_weights"):
            small = make_batch(min(4, self.batch[measures[0]]), 99)
            self.check(group, "unet", lambda b: P.unet_call(peer, b), lambda b: L.unet_call(ldm, b), (small,))

        for side in self.sides_for(group):
            is_peer = side.startswith("peer")
            model, other = (peer, ldm) if is_peer else (ldm, peer)
            call = P.unet_call if is_peer else L.unet_call
            impl = "peer" if is_peer else "ldmkit"
            for mid in measures:
                measure = mid.split(".")[1]
                n = self.batch[mid]
                cl = self.channels_last(side, training=measure == "train")
                self.place(model, other, channels_last=cl)
                try:
                    batch = self.to_layout(make_batch(n, 0), cl)
                    if measure == "train":
                        target = self.randn(n, 4, res, res, seed=7)
                        self.measure_train(group, side, impl, model, call, batch, target, cl)
                    else:
                        self.measure_forward(group, side, impl, model, call, batch, cl)
                except Exception as err:
                    self.rec.error(group, measure, side, err)
                finally:
                    model.zero_grad(set_to_none=True)
                    model.eval()
                    H.free_memory()
        H.free_memory()

    def measure_train(self, group, side, impl, model, call, batch, target, cl) -> None:
        mode = self.side_mode(side, "train")
        model.train()
        layout_opt = forces_layout_opt(self.args, training=True)
        if impl == "ldmkit" and not cl and layout_opt and not self.args.ldm_train_nchw_weights:
            # `ldm train` (step_compile.weights_for_training): the layout-optimised graph's weight
            # gradients are channels_last, so the weights are too; inputs stay NCHW
            model.to(memory_format=torch.channels_last)
        fused = self.device.type == "cuda" and (impl == "peer" or not self.args.no_fused_adam)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused or None)
        net = self.compile(model, mode, side, training=True)

        def loss_of(m) -> torch.Tensor:
            with self.autocast():
                out = call(m, batch)
            return F.mse_loss(out.float(), target)

        def step() -> None:
            loss_of(net).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def fwd_bwd() -> None:  # counted on the eager model: forward + backward
            loss_of(model).backward()
            model.zero_grad(set_to_none=True)

        flops = self.count_flops_once((group, "train", impl), fwd_bwd)
        timing = H.time_fn(step, self.device, warmup=self.warmup_for(mode), iters=self.iters, track_memory=True)
        self.record(group, "train", side, timing, batch["x"].shape[0], flops, compile_mode=mode,
                    channels_last=cl, fused_adam=fused, **self.profile(step))

    @torch.no_grad()
    def measure_forward(self, group, side, impl, model, call, batch, cl, measure="fwd") -> None:
        mode = self.side_mode(side, "infer")
        bf16_weights = self.args.fwd_precision == "bf16" and self.amp
        m = copy.deepcopy(model).to(torch.bfloat16) if bf16_weights else model
        if bf16_weights:
            batch = self.to_layout(batch, cl, torch.bfloat16)
        net = self.compile(lambda b: call(m, b), mode, side)
        graphs = "reduce-overhead" in mode
        # the UNets' compiled inference with derived weights computed once, as `ldm generate`
        derive = impl == "ldmkit" and group in ("C1", "C2") and mode != "none" and not self.args.ldm_no_derived_weights

        def fwd():
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with self.autocast(not bf16_weights):
                return net(batch)

        def eager():
            with self.autocast(not bf16_weights):
                return call(m, batch)

        with L.derived_weights_for_inference(m, derive):
            flops = self.count_flops_once((group, measure, impl), eager)
            timing = H.time_fn(fwd, self.device, warmup=self.warmup_for(mode), iters=self.iters)
            checked = {}
            if mode != "none":
                # The compiled model's own output against its eager one, same inputs and precision:
                # the same-function checks above run eagerly, and the compiled paths differ (the
                # Triton GroupNorm, inductor's layouts). bf16 rounding alone gives ~1e-2.
                fast = fwd().clone()
                checked = {"compiled_vs_eager_rel_l2": H.agreement(eager(), fast)["rel_l2"]}
                self.rec.log(f"{group}.{measure} [{side}] compiled vs eager: relative L2 "
                             f"{checked['compiled_vs_eager_rel_l2']:.2e}")
            profile = self.profile(fwd)
        n = next(iter(batch.values())).shape[0]
        self.record(group, measure, side, timing, n, flops, compile_mode=mode, channels_last=cl,
                    precision="bf16 weights" if bf16_weights else "autocast" if self.amp else "fp32",
                    **checked, **profile)

    def warmup_for(self, mode: str) -> int:
        # CUDA graphs: call 1 compiles, call 2 warms up, call 3 records; replay after that.
        return max(self.warmup, 3) if "reduce-overhead" in mode and not self.smoke else self.warmup

    # ------------------------------------------------------------------ C3: the VAE

    def run_vae(self, group: str, measures: list[str]) -> None:
        cfg = P.C3_VAE_TINY if self.smoke else P.C3_VAE
        peer = P.build_vae(cfg, self.device)
        ldm, info = L.build_vae(peer, self.device, None if self.smoke else "sd", peer.config.scaling_factor)
        self.params(group, peer, ldm, info)
        res = cfg["sample_size"]
        f = 2 ** (len(cfg["block_out_channels"]) - 1)

        def images(n, seed):
            return self.randn(n, 3, res, res, seed=seed).clamp(-3, 3) / 3  # random, in [-1, 1]

        def latents(n, seed):
            return self.randn(n, 4, res // f, res // f, seed=seed)

        if info.get("same_weights"):
            self.check(group, "encode", lambda x: P.vae_encode(peer, x), lambda x: L.vae_encode(ldm, x),
                       (images(2, 99),))
            self.check(group, "decode", lambda z: P.vae_decode(peer, z), lambda z: L.vae_decode(ldm, z),
                       (latents(2, 98),))

        for side in self.sides_for(group):
            is_peer = side.startswith("peer")
            model, other = (peer, ldm) if is_peer else (ldm, peer)
            impl = "peer" if is_peer else "ldmkit"
            cl = self.channels_last(side)
            self.place(model, other, channels_last=cl)
            for mid in measures:
                measure = mid.split(".")[1]
                n = self.batch[mid]
                try:
                    fn = {("peer", "encode"): P.vae_encode, ("peer", "decode"): P.vae_decode,
                          ("ldmkit", "encode"): L.vae_encode, ("ldmkit", "decode"): L.vae_decode}[impl, measure]
                    x = images(n, 0) if measure == "encode" else latents(n, 0)
                    batch = self.to_layout({"x": x}, cl)
                    self.measure_forward(group, side, impl, model, lambda m, b, fn=fn: fn(m, b["x"]), batch, cl,
                                         measure=measure)
                except Exception as err:
                    self.rec.error(group, measure, side, err)
                finally:
                    H.free_memory()
        H.free_memory()

    # ------------------------------------------------------------------ driver

    def run(self, measures: list[str]) -> None:
        def run_gen(group: str, todo: list[str]) -> None:
            run_generation(self, group, todo)

        runners = {"C1": self.run_unet, "C2": self.run_unet, "C3": self.run_vae, "E1": run_gen, "E2": run_gen}
        self.rec.log(f"device {self.device} ({self.rec.data['meta'].get('gpu', 'cpu')}), torch "
                     f"{torch.__version__}, diffusers {self.rec.data['meta'].get('diffusers')}; "
                     f"measures {measures}; sides {self.sides}")
        for group, ids in GROUPS.items():
            todo = [m for m in ids if m in measures]
            if not todo:
                continue
            try:
                runners[group](group, todo)
            except Exception as err:  # building the models failed: record, go on
                self.rec.error(group, "setup", "-", err)
            finally:
                H.free_memory()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, description=__doc__)
    if args.table:
        print_summary(merge_tables(args.table, args.out))
        return 0
    measures = selected_measures(args.only)
    if args.ldm_upsample:
        import ldmkit.nn.resample

        ldmkit.nn.resample.UPSAMPLE_FORM = args.ldm_upsample
    threads = torch.get_num_threads()
    if args.smoke:
        torch.set_num_threads(1)  # tiny ops: one thread is faster than two fighting for a shared CPU
    try:
        bench = Bench(args)
        with contextlib.suppress(KeyboardInterrupt):
            bench.run(measures)
    finally:
        torch.set_num_threads(threads)
    bench.rec.save()
    print_summary(bench.rec)
    return 1 if bench.rec.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
