"""One spatial transformer of the SD UNet's 64x64 level, trained alone: ldmkit against diffusers,
with the kernels inductor generates written out, to see where the training step's transformer
time goes (NOTES v12: GEGLU's backward, and copies of attention inputs).

Each variant runs in its own process (the switches are read at import), compiles a forward +
backward step under bf16 autocast the way `bench_gpu.py` does (ldmkit: NCHW modules with
channels_last weights, inductor's layout optimisation forced on, CUDA graphs; diffusers:
channels_last, default mode), times it, profiles it, and with `--code-dir` writes inductor's
output code (TORCH_LOGS=output_code) next to the JSON.

    python3 benchmarks/transformer_block_probe.py --out-dir $OUT            # every variant
    python3 benchmarks/transformer_block_probe.py --smoke                  # CPU, eager, tiny
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
import kernel_profile  # noqa: E402

# name -> (side, environment)
VARIANTS = {
    "ldmkit": ("ldmkit", {}),
    "ldmkit-no-geglu-kernel": ("ldmkit", {"LDMKIT_GEGLU_KERNEL": "0"}),
    "ldmkit-no-attention-op": ("ldmkit", {"LDMKIT_ATTENTION_OP": "0"}),
    "ldmkit-neither": ("ldmkit", {"LDMKIT_GEGLU_KERNEL": "0", "LDMKIT_ATTENTION_OP": "0"}),
    "peer": ("peer", {}),
}
SWITCHES = ("LDMKIT_GEGLU_KERNEL", "LDMKIT_ATTENTION_OP")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def check_kernels(device: torch.device) -> dict:
    """The GEGLU backward kernel and the attention operator pair against PyTorch's own path on
    the GPU, bf16, SD's 64x64 shapes at batch 2: relative L2 of outputs and gradients."""
    from ldmkit.nn import attention_op, geglu
    from ldmkit.nn.attention import multi_head_attention  # eager: plain SDPA

    def plain_attention(q, k, v):
        return multi_head_attention(q, k, v, 8)

    gen = torch.Generator(device=device).manual_seed(0)
    result = {}
    h = torch.randn(2, 4096, 2 * 1280, device=device, generator=gen, dtype=torch.bfloat16)
    g = torch.randn(2, 4096, 1280, device=device, generator=gen, dtype=torch.bfloat16)
    grads = []
    for kernel in (True, False):
        leaf = h.clone().requires_grad_()
        geglu.geglu(leaf, kernel=kernel).backward(g)
        grads.append(leaf.grad)
    result["geglu_grad_rel_l2"] = rel_err(grads[0], grads[1])
    for name, m in (("self", 4096), ("cross", 77)):
        q = torch.randn(2, 4096, 320, device=device, generator=gen, dtype=torch.bfloat16)
        k, v = (torch.randn(2, m, 320, device=device, generator=gen, dtype=torch.bfloat16) for _ in range(2))
        go = torch.randn_like(q)
        outs = []
        for fn in (lambda a, b, c: attention_op.attention(a, b, c, 8), plain_attention):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out = fn(*leaves)
            out.backward(go)
            outs.append([out.detach()] + [t.grad for t in leaves])
        for label, a, b in zip(("out", "dq", "dk", "dv"), *outs):
            result[f"attention_{name}_{label}_rel_l2"] = rel_err(a, b)
    return result



def build(side: str, channels: int, heads: int, context_dim: int) -> torch.nn.Module:
    if side == "peer":
        from diffusers import Transformer2DModel

        return Transformer2DModel(num_attention_heads=heads, attention_head_dim=channels // heads,
                                  in_channels=channels, cross_attention_dim=context_dim, norm_num_groups=32)
    from ldmkit.nn.transformer import SpatialTransformer

    return SpatialTransformer(channels, heads, channels // heads, context_dim)


def run_one(args: argparse.Namespace) -> dict:
    device = torch.device("cpu" if args.smoke else "cuda")
    model = build(args.side, args.channels, args.heads, args.context_dim).to(device).train()
    n, res = args.batch, args.res
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, args.channels, res, res, device=device, generator=gen)
    context = torch.randn(n, 77, args.context_dim, device=device, generator=gen)
    target = torch.randn_like(x)
    layout = torch.preserve_format if args.smoke else torch.channels_last  # (the CPU backward of
    # diffusers' block in channels_last crashed torch 2.13's CPU build: the smoke stays NCHW)
    if args.side == "peer":
        model.to(memory_format=layout)
        x = x.to(memory_format=layout)

        def call(m):
            return m(x, encoder_hidden_states=context).sample
    else:
        model.to(memory_format=layout)  # as `ldm train` does under layout optimisation

        def call(m):
            return m(x, context)

    net = model
    if not args.smoke:
        from torch._inductor import list_mode_options

        if args.side == "peer":
            net = torch.compile(model, dynamic=False)
        else:
            options = {**list_mode_options("reduce-overhead"), "force_layout_optimization": True}
            net = torch.compile(model, dynamic=False, options=options)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.smoke)

    def step():
        with amp:
            out = call(net)
        F.mse_loss(out.float(), target).backward()
        model.zero_grad(set_to_none=True)

    timing = H.time_fn(step, device, warmup=3, iters=args.iters)
    record = {"variant": args.variant, "side": args.side, "batch": n, "res": res,
              "params": sum(p.numel() for p in model.parameters()),
              "median_ms": timing.median_s * 1e3, "env": {k: os.environ.get(k) for k in SWITCHES}}
    if not args.smoke:
        record.update(kernel_profile.profile_kernels(step, device, top=args.top))
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=tuple(VARIANTS), help="run one variant in this process")
    p.add_argument("--out-dir", default=None, help="every variant, each in its own process; JSON and code here")
    p.add_argument("--only", default=",".join(VARIANTS), help="comma list of variants (with --out-dir)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--channels", type=int, default=320)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--context-dim", type=int, default=768)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--json", default=None, help="with --variant: write the record here")
    p.add_argument("--smoke", action="store_true", help="CPU, eager, tiny shapes: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        args.batch, args.res, args.channels, args.heads, args.context_dim, args.iters = 1, 8, 64, 2, 32, 1
    if args.variant:
        args.side = VARIANTS[args.variant][0]
        record = run_one(args)
        text = json.dumps(record, indent=1)
        if args.json:
            Path(args.json).write_text(text)
        print(f"{args.variant}: {record['median_ms']:.3f} ms per step, {record['params']:,} params")
        for k, v in record.get("profile_categories", {}).items():
            print(f"  {k}: {v:.3f} ms")
        return
    out = Path(args.out_dir or ".")
    out.mkdir(parents=True, exist_ok=True)
    if not args.smoke:
        checks = check_kernels(torch.device("cuda"))
        (out / "checks.json").write_text(json.dumps(checks, indent=1))
        print("checks (relative L2, bf16):", ", ".join(f"{k} {v:.2e}" for k, v in checks.items()))
    for name in filter(None, args.only.split(",")):
        env = {**os.environ, **VARIANTS[name][1]}
        if not args.smoke:
            env.update(TORCH_LOGS="output_code", TORCH_LOGS_OUT=str(out / f"{name}.code.txt"))
        cmd = [sys.executable, __file__, "--variant", name, "--json", str(out / f"{name}.json")]
        cmd += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                ("batch", "res", "channels", "heads", "context_dim", "iters", "top")]
        cmd += ["--smoke"] if args.smoke else []
        with open(out / f"{name}.stderr.txt", "w") as err:
            done = subprocess.run(cmd, env=env, check=False, stderr=err)
        if done.returncode:
            print(f"{name}: exit status {done.returncode}, see {name}.stderr.txt")


if __name__ == "__main__":
    main()
