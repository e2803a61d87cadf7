"""`ldm info`: what a run folder or inference file holds."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="print a model's config, parameter counts, step, dataset and classes",
        description="Print what a run folder or an inference .safetensors file holds.",
    )
    p.add_argument("model", metavar="RUN_OR_FILE", help="a run folder or an inference .safetensors file")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON instead of a summary")
    p.set_defaults(run=run)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def run(args: argparse.Namespace) -> int:
    from ldmkit.train.inference_file import load_inference_file

    unet, vae, meta = load_inference_file(args.model, device="cpu")
    if args.json:
        print(json.dumps(meta, indent=2, default=str))
        return 0
    classes = meta.get("class_names") or []
    lines = [
        f"model:        {args.model}",
        f"step:         {meta.get('step', '?')}",
        f"dataset:      {(meta.get('run_config') or {}).get('data', '?')}  ({meta.get('image_size')} px, {meta.get('channels')} channels)",
        f"classes:      {len(classes)}" + (": " + ", ".join(f"{i}={c}" for i, c in enumerate(classes)) if classes else " (unconditional)"),
        f"UNet:         {_count(unet) / 1e6:.2f} M parameters",
        f"VAE:          {_count(vae) / 1e6:.2f} M parameters (f{vae.config.downsample_factor}, "
        f"{vae.config.latent_channels} latent channels)",
        f"prediction:   {meta.get('prediction', 'eps')}",
        f"schedule:     {json.dumps(meta.get('schedule'))}",
        f"unet config:  {json.dumps(meta.get('unet_config'))}",
        f"vae config:   {json.dumps(meta.get('vae_config'))}",
        f"ldmkit:       {meta.get('ldmkit_version', '?')}",
    ]
    print("\n".join(lines))
    return 0
