"""`ldm info`: what a run folder, inference file, diffusers folder or SD checkpoint holds."""

from __future__ import annotations

import argparse
import json
import sys

from ldmkit.errors import UserError
from ldmkit.pretrained import bundled_names


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="print a model's config, parameter counts, step, dataset and classes",
        description="Print what a model holds: a bundled model, a run folder, an ldmkit inference .safetensors file, "
        "a diffusers model or pipeline folder, or a Stable Diffusion single-file checkpoint.",
    )
    p.add_argument("model", metavar="RUN_OR_FILE",
                   help=f"the model to describe (a path, or a bundled model: {', '.join(bundled_names())})")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON instead of a summary")
    p.set_defaults(run=run)


def _millions(module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f} M parameters"


def _dataset(data: str | None) -> str:
    """`ldm train --data`'s value as the summary shows it. A built-in dataset's folder is a path on
    the machine that trained the model (the bundled fashion-mnist model's reads `.carry/fmnist`)."""
    from ldmkit.data.folder_layout import printable_name
    from ldmkit.data.load import is_builtin_source

    if not data:
        return "-"
    data = printable_name(data)  # a path that is not UTF-8, as the training log wrote it
    name, _, folder = data.partition(":")
    if folder and is_builtin_source(data):
        return f"{name} (read from {folder} where it was trained)"
    return data


def _step(step: int | None, bundle) -> str:
    """The step, against its stage's planned steps when the file says what they were: a run
    stopped early (Ctrl-C, --time-limit) showed a bare 12, and nothing said it was unfinished."""
    if step is None:
        return "-"
    stage = "diffusion" if bundle.unet is not None else "vae"
    planned = ((bundle.extra.get("run_config") or {}).get(stage) or {}).get("steps")
    if not isinstance(planned, int) or isinstance(planned, bool):
        return str(step)
    name = "the diffusion stage" if stage == "diffusion" else "the VAE stage"
    return f"{step} of {planned} ({name}" + ("; unfinished: run its ldm train command again to go on)"
                                           if step < planned else ")")


def describe(bundle) -> dict:
    """A JSON-safe summary of a `ModelBundle` (configs, not weights or tokenizer files)."""
    extra = {k: v for k, v in bundle.extra.items() if k not in ("tokenizer_files",)}
    return {
        "source": bundle.source,
        "components": bundle.components,
        "step": extra.get("step"),
        "dataset": (extra.get("run_config") or {}).get("data"),
        "image_size": bundle.resolved_image_size(),
        "class_names": bundle.class_names,
        "prediction": bundle.prediction,
        "schedule": bundle.schedule.to_dict() if bundle.schedule is not None else None,
        "sampler_defaults": bundle.sampler_defaults,
        "unet_config": bundle.unet.config.to_dict() if bundle.unet is not None else None,
        "vae_config": bundle.vae.config.to_dict() if bundle.vae is not None else None,
        "ldmkit_version": extra.get("ldmkit_version"),
    }


def run(args: argparse.Namespace) -> int:
    from ldmkit.interop import load_bundle
    from ldmkit.interop.bundle import check_bundle

    bundle = load_bundle(args.model, check=False)  # described even when it cannot generate, and then said why
    try:
        check_bundle(bundle, where=args.model)
    except UserError as err:
        print(f"ldm info: warning: this model cannot generate: {err}", file=sys.stderr)
    info = describe(bundle)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    classes = info["class_names"]
    lines = [
        f"model:        {args.model}",
        f"holds:        {', '.join(info['components'])}",
        f"step:         {_step(info['step'], bundle)}",
        f"dataset:      {_dataset(info['dataset'])}  (image size {info['image_size']})",
        f"classes:      {len(classes)}" + (": " + ", ".join(f"{i}={c}" for i, c in enumerate(classes))
                                           if classes else " (none)"),
    ]
    if bundle.unet is not None:
        lines.append(f"UNet:         {_millions(bundle.unet)}")
    if bundle.vae is not None:
        c = bundle.vae.config
        lines.append(f"VAE:          {_millions(bundle.vae)} "
                     f"(f{c.downsample_factor}, {c.latent_channels} latent channels)")
    if bundle.text_encoder is not None:
        lines.append(f"text encoder: {_millions(bundle.text_encoder)}")
    if bundle.unet is not None:  # a VAE alone has no prediction, schedule or UNet to describe
        lines += [
            f"prediction:   {info['prediction']}",
            f"schedule:     {json.dumps(info['schedule'])}",
            f"unet config:  {json.dumps(info['unet_config'])}",
        ]
    lines.append(f"vae config:   {json.dumps(info['vae_config'])}")
    lines += [f"note:         {note}" for note in bundle.notes]
    print("\n".join(lines))
    return 0
