"""The command line of bench_gpu.py: measurement ids, sides, batch sizes and every flag, and
what the compile flags become (`compile_kwargs`, the torch.compile arguments of each side).

The options' description is bench_gpu.py's own docstring (passed in), so `--help` explains
the configurations and sides.
"""

from __future__ import annotations

import argparse
from typing import Any

from torch._inductor import list_mode_options

GROUPS = {
    "C1": ("C1.train", "C1.fwd"),
    "C2": ("C2.train", "C2.fwd"),
    "C3": ("C3.encode", "C3.decode"),
    "E1": ("E1.gen",),
    "E2": ("E2.gen",),
}
SIDES = ("peer-eager", "peer-compiled", "peer-graphs", "ldmkit-eager", "ldmkit")
BATCH = {"C1.train": 256, "C1.fwd": 256, "C2.train": 32, "C2.fwd": 16, "C3.encode": 32,
         "C3.decode": 32, "E1.gen": 64, "E2.gen": 1}
SMOKE_BATCH = {"C1.train": 2, "C1.fwd": 2, "C2.train": 2, "C2.fwd": 2, "C3.encode": 2,
               "C3.decode": 2, "E1.gen": 2, "E2.gen": 1}
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")

def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="C1,C2,C3,E1,E2",
                   help="comma list of configs or measurements (C1, C2.train, E2, ...)")
    p.add_argument("--sides", default=",".join(SIDES), help="comma list of sides to run")
    p.add_argument("--out", default=None, help="JSON file for every raw number (rewritten after each one)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny configs on the CPU, 1 thread, 1 iteration, fp32, no compile: checks every code path")
    p.add_argument("--smoke-bf16", action="store_true",
                   help="with --smoke: bf16 autocast and bf16 weights as on the GPU (checks those paths)")
    p.add_argument("--smoke-compile", action="store_true",
                   help="with --smoke: really torch.compile (CPU inductor, minutes): checks that both sides trace")
    p.add_argument("--device", default=None, help="default: cuda if present (cpu with --smoke)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (median; default 10, smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls, compilation included (default 3)")
    p.add_argument("--batch", action="append", default=[], metavar="ID=N",
                   help="override a batch size, e.g. --batch C2.train=16 (repeatable)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps for E1/E2 (default 25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile 3 iterations and record the top kernels of each run")
    p.add_argument("--profile-top", type=int, default=12, metavar="N",
                   help="with --profile: how many kernels to record, by GPU time (default 12)")
    # ldmkit levers
    g = p.add_argument_group("ldmkit levers (A/B them)")
    g.add_argument("--ldm-train-compile", default="reduce-overhead", choices=COMPILE_MODES,
                   help="torch.compile mode for ldmkit training steps (reduce-overhead = CUDA graphs, what "
                        "`ldm train` uses for the UNet on CUDA)")
    g.add_argument("--ldm-infer-compile", default="default", choices=COMPILE_MODES,
                   help="mode for ldmkit forward / VAE measurements")
    g.add_argument("--ldm-e1-compile", default="reduce-overhead", choices=COMPILE_MODES,
                   help="mode for ldmkit in E1 (reduce-overhead = CUDA graphs, what `ldm generate` uses on CUDA)")
    g.add_argument("--ldm-e2-compile", default="reduce-overhead", choices=COMPILE_MODES,
                   help="mode for ldmkit in E2 (reduce-overhead = CUDA graphs)")
    g.add_argument("--ldm-fullgraph", action="store_true", help="compile ldmkit with fullgraph=True")
    g.add_argument("--no-channels-last", action="store_true",
                   help="ldmkit's forwards, VAE and generation in NCHW-contiguous layout")
    g.add_argument("--ldm-train-channels-last", action="store_true",
                   help="ldmkit's training steps with channels_last modules and inputs (default: NCHW, as "
                        "`ldm train`; inductor's forced layout optimisation picks channels_last inside)")
    g.add_argument("--ldm-train-nchw-weights", action="store_true",
                   help="ldmkit's training steps with NCHW convolution weights (before v7; default: "
                        "channels_last weights under the forced layout optimisation, as `ldm train`)")
    g.add_argument("--ldm-inductor", action="append", default=[], metavar="KEY=VALUE",
                   help="an inductor option for ldmkit's compiles, e.g. coordinate_descent_tuning=true "
                        "(repeatable)")
    g.add_argument("--peer-inductor", action="append", default=[], metavar="KEY=VALUE",
                   help="an inductor option for the peer's compiles (repeatable): the peer with an option "
                        "ldmkit's product sets, for a figure beside the protocol's")
    g.add_argument("--no-fused-adam", action="store_true", help="ldmkit with the default (foreach) AdamW")
    g.add_argument("--ldm-upsample", default=None, choices=("auto", "phase", "transposed"),
                   help="how ldmkit's UpSample computes nearest 2x + conv3x3 (nn/resample.py; default: "
                        "the library's, auto: transposed from 128x128 input pixels, phase below)")
    g.add_argument("--ldm-no-derived-weights", action="store_true",
                   help="compiled inference recomputes UpSample's kernels and the decoder's skip-weight "
                        "slices at every call (before v10; default: computed once, as `ldm generate`)")
    g.add_argument("--ldm-no-context-cache", action="store_true",
                   help="E2: the cross-attentions project the text context at every step (before v11; "
                        "default: once per generation, as `ldm generate`)")
    g.add_argument("--ldm-layout-opt", default="train", choices=("train", "all", "none"),
                   help="where ldmkit compiles with inductor's layout optimisation forced on: training "
                        "steps (default: what `ldm train` does), every run, or none")
    # levers applied to both sides
    b = p.add_argument_group("settings of both sides")
    b.add_argument("--fwd-precision", default="autocast", choices=("autocast", "bf16"),
                   help="C1/C2 forward and C3: bf16 autocast over fp32 weights (protocol), or bf16 weights")
    b.add_argument("--gen-precision", default="bf16", choices=("bf16", "autocast"),
                   help="E1/E2: bf16 weights (diffusers' torch_dtype=bfloat16), or autocast")
    b.add_argument("--cudnn-benchmark-limit", type=int, default=None, metavar="N",
                   help="algorithms cuDNN times per convolution shape (0 = all; default: PyTorch's 10); "
                        "v11 saw E2's convolutions take 50-57 ms across processes from its picks")
    b.add_argument("--no-compile-vae", action="store_true",
                   help="E1/E2: leave vae.decode eager on the compiled sides")
    b.add_argument("--inductor-tuning", action="store_true",
                   help="diffusers' tutorial inductor flags (conv_1x1_as_mm, coordinate descent, no "
                        "epilogue fusion); slower compiles")
    b.add_argument("--peer-no-channels-last", action="store_true")
    b.add_argument("--peer-graphs-in", default="E2", help="configs where the peer-graphs side runs")
    b.add_argument("--cfg-e1", type=float, default=4.0, help="guidance scale in E1")
    b.add_argument("--cfg-e2", type=float, default=7.5, help="guidance scale in E2")
    p.add_argument("--table", nargs="+", metavar="JSON", help="merge result files, print the table, exit")
    return p.parse_args(argv)


def selected_measures(only: str) -> list[str]:
    chosen: list[str] = []
    for item in filter(None, (s.strip() for s in only.split(","))):
        if item in GROUPS:
            chosen.extend(GROUPS[item])
        elif item in BATCH:
            chosen.append(item)
        elif item + ".gen" in BATCH:
            chosen.append(item + ".gen")
        else:
            raise SystemExit(f"--only: unknown id {item!r}; use {', '.join(list(GROUPS) + list(BATCH))}")
    return list(dict.fromkeys(chosen))


def forces_layout_opt(args: argparse.Namespace, training: bool) -> bool:
    """Whether ldmkit's compile forces inductor's layout optimisation (`--ldm-layout-opt`)."""
    return args.ldm_layout_opt == "all" or (training and args.ldm_layout_opt == "train")


def compile_kwargs(args: argparse.Namespace, mode: str, side: str, *, training: bool = False) -> dict[str, Any]:
    """torch.compile arguments of one side's run. ldmkit's training steps get inductor's forced
    layout optimisation as `ldm train` does (`--ldm-layout-opt`), and `--ldm-inductor` options;
    the peer gets `--peer-inductor` options."""
    kw: dict[str, Any] = {"dynamic": False}
    if mode != "default":
        kw["mode"] = mode
    if side == "ldmkit" and args.ldm_fullgraph:
        kw["fullgraph"] = True
    layout_opt = side == "ldmkit" and forces_layout_opt(args, training)
    extra = args.ldm_inductor if side == "ldmkit" else args.peer_inductor
    if layout_opt or extra:
        # torch.compile takes a mode or options, not both: the mode's options plus ours
        options = list_mode_options(kw.pop("mode", "default"))
        if layout_opt:
            options["force_layout_optimization"] = True
        for item in extra:
            key, _, value = item.partition("=")
            options[key] = {"true": True, "false": False}.get(value.lower(), int(value) if value.isdigit() else value)
        kw["options"] = options
    return kw
