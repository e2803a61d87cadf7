"""`ldm convert`: Stable Diffusion / diffusers / CompVis weights -> an ldmkit inference file,
or any model ldmkit reads -> a diffusers folder."""

from __future__ import annotations

import argparse

from ldmkit.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert diffusers / Stable Diffusion / CompVis weights to an ldmkit model file (or to diffusers)",
        description="Convert SRC to an ldmkit inference .safetensors file (default) or a diffusers folder. "
        "SRC is a diffusers pipeline folder (model_index.json, unet/, vae/, scheduler/, text_encoder/, "
        "tokenizer/), a diffusers model folder (config.json + diffusion_pytorch_model.safetensors or .bin), "
        "a CompVis / Stable Diffusion single-file checkpoint (.safetensors, or .ckpt read with "
        "torch.load(weights_only=True)), or an ldmkit run folder / model file. Weights are only renamed; "
        "unknown or missing weights are an error. An ldmkit OUT must be a new file, or with --overwrite an "
        "earlier ldmkit model file (never a run folder's own files, nor other weights). A diffusers OUT "
        "must be a new or empty folder, or with --overwrite an earlier export of ldm convert (never a download), which "
        "is then replaced whole; the export is written beside it and moved into place once complete, so a "
        "failed conversion leaves OUT as it was. A folder holding anything else is never written into.",
    )
    p.add_argument("src", metavar="SRC", help="the model file or folder to convert")
    p.add_argument("out", metavar="OUT",
                   help="output: a .safetensors file (--to ldmkit) or a folder (--to diffusers)")
    p.add_argument("--to", choices=["ldmkit", "diffusers"], default="ldmkit", help="output format (default: ldmkit)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is an earlier ldmkit model file, or (--to diffusers) an earlier "
                   "export of ldm convert, all of it (files you added there included); other files and non-empty "
                   "folders (a diffusers download too), and the files of a run folder, are refused even so")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="storage precision of an ldmkit file's weights (default: fp32)")
    ema = p.add_mutually_exclusive_group()
    ema.add_argument("--ema", dest="use_ema", action="store_true", default=None,
                     help="CompVis checkpoints: use the EMA UNet weights (model_ema.*); the default when present")
    ema.add_argument("--no-ema", dest="use_ema", action="store_false",
                     help="CompVis checkpoints: use the raw UNet weights")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="CompVis checkpoints: CLIP tokenizer folder (vocab.json + merges.txt, or tokenizer.json), "
                   "e.g. the tokenizer/ folder of a diffusers SD 1.x download; without it the text encoder is left out")
    p.add_argument("--prediction", choices=["eps", "v", "x0"], default=None,
                   help="what the UNet predicts (CompVis checkpoints do not say; default eps, SD 2.x 768-v needs v)")
    p.add_argument("--scaling-factor", type=float, default=None,
                   help="CompVis checkpoints: the latent scale (default: the checkpoint's scale_factor, "
                   "else 0.18215)")
    heads = p.add_mutually_exclusive_group()
    heads.add_argument("--num-heads", type=int, default=None,
                       help="CompVis checkpoints: attention heads per layer (default: SD's, from the context width)")
    heads.add_argument("--head-dim", type=int, default=None, help="CompVis checkpoints: channels per attention head")
    p.add_argument("--norm-groups", type=int, default=None,
                   help="CompVis checkpoints: GroupNorm groups of both models (default: CompVis' 32)")
    p.add_argument("--image-size", type=int, default=None,
                   help="native image size (default: from the source, else 64 latent pixels: 512 for SD)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ldmkit.interop import convert

    options = dict(use_ema=args.use_ema, tokenizer=args.tokenizer, prediction=args.prediction,
                   scaling_factor=args.scaling_factor, num_heads=args.num_heads, head_dim=args.head_dim,
                   image_size=args.image_size, norm_groups=args.norm_groups)
    if args.image_size is not None and args.image_size < 1:
        raise UserError(f"--image-size must be positive (got {args.image_size})")
    bundle = convert(args.src, args.out, to=args.to, dtype=args.dtype, overwrite=args.overwrite,
                     **{k: v for k, v in options.items() if v is not None})
    for note in bundle.notes:
        print(f"note: {note}")
    print(f"wrote {', '.join(bundle.components)} from {args.src} to {args.out}")  # the weights' origin: `ldm info`
    return 0
