"""`ldm train`: the KL autoencoder, then the latent UNet, from a folder or a built-in dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from ldmkit.compile_choices import COMPILE_MODES
from ldmkit.errors import UserError
from ldmkit.json_text import loads

from .help_format import DefaultsHelpFormatter
from .whole_line import print_line


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a VAE and a latent diffusion UNet on images",
        description="Train the KL autoencoder (stage vae), encode the data once into a latent cache, then "
        "train the UNet on the latents (stage diffusion). RUN/ receives config.json, log.jsonl, sample grids, "
        "checkpoint.pt (exact resume) and model.safetensors (for `ldm generate`); one `ldm train` at a time per RUN. "
        "Run the same command under torchrun for several GPUs (`torchrun --nproc_per_node N -m ldmkit.cli train "
        "...`); --batch-size is then the global batch. Exit status: 0 when the run trained to its steps, had "
        "nothing left to do, or stopped at --time-limit (a planned stop); 130 after Ctrl-C (SIGINT) and 143 after "
        "SIGTERM, once the checkpoint is saved (the same command resumes); 2 when it refuses or cannot go on (one "
        "line says why: the command, the data, RUN, a diverging loss); 1 for a file-system error or a crash.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True,
                   help="a folder (DIR/train and DIR/val, one subfolder per class, or a flat folder), "
                   "'emoji' (built in), or 'fashion-mnist[:DIR]' (Debian's dataset-fashion-mnist IDX files)")
    p.add_argument("--out", required=True, help="run folder to create (or to resume from)")
    p.add_argument("--preset", default="tiny",
                   help="training preset: tiny (CPU, minutes), small (one GPU), base (C1-sized UNet), "
                   "fashion-mnist / emoji (the bundled models' recipes, one GPU)")
    p.add_argument("--image-size", type=int, default=None, help="train at this square size (default: the preset's)")
    p.add_argument("--no-flip", action="store_true", help="turn off random horizontal flips")
    p.add_argument("--stage", choices=["all", "vae", "diffusion"], default="all",
                   help="all trains both; diffusion needs --vae or a RUN that already has a VAE")
    p.add_argument("--vae", default=None,
                   help="reuse this VAE (a run folder, an inference file or a bundled model's name, e.g. emoji) "
                   "instead of training one")
    p.add_argument("--vae-steps", type=int, default=None, help="VAE optimisation steps (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="UNet optimisation steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="the UNet stage's batch size, over all processes (default: the preset's; the VAE stage's "
                   "is --set vae.batch_size=N)")
    p.add_argument("--lr", type=float, default=None, help="UNet peak learning rate (default: the preset's)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="mixed precision (default: the preset's: fp32 for tiny, bf16 for the GPU presets)")
    p.add_argument("--cond-drop", type=float, default=None,
                   help="probability of dropping the class label for classifier-free guidance (default: the preset's)")
    p.add_argument("--resume", action="store_true",
                   help="continue from RUN/checkpoint.pt (also happens when RUN has a checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    p.add_argument("--no-compile", action="store_true", help="do not torch.compile the models on CUDA")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                   help="torch.compile mode on CUDA (default: the preset's; reduce-overhead = CUDA graphs, the "
                   "fastest for small models, which are launch-bound; max-autotune-no-cudagraphs times Triton "
                   "kernels against cuDNN/cuBLAS for every shape: its compile of the C1-sized UNet's step took "
                   "over 9 minutes on an H100, benchmarks/NOTES.md v13)")
    p.add_argument("--step-graph", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="with reduce-overhead on CUDA (bf16/fp32), capture each stage's whole step (forward, "
                   "backward, under torchrun the gradients' all-reduce, clipping, AdamW, EMA; the VAE's only "
                   "without the GAN) as one CUDA graph instead of graphs for the model alone (default: on). Small "
                   "models' steps wait on the host: on one GPU the emoji UNet's step ran 2.1x faster with it, its "
                   "VAE's 1.44x, the base UNet's as fast, at 2-11%% more peak memory (NOTES.md v16); on two GPUs "
                   "the emoji UNet's 3.9x (v17); --no-step-graph when memory is tight")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop training after this many minutes of the whole run, saving checkpoint.pt (and, once "
                   "the UNet stage has begun, model.safetensors and a last sample grid, which the limit does not "
                   "include: tens of seconds on a CPU); the exit status is 0, as for a finished run; rerunning "
                   "the command resumes")
    p.add_argument("--quiet", action="store_true",
                   help="plain log lines instead of a progress bar (what a stderr that is not a terminal gets anyway)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any training config field (repeatable), e.g. --set ema_decay=0.9999 --set vae.lr=1e-4 "
                   "--set checkpoint_every=500 --set min_snr_gamma=null "
                   "--set diffusion.model.attention_levels=[1,2]; keys "
                   "are fields of config.json, 'vae.'/'diffusion.' for the stages, 'vae.model.'/'diffusion.model.' "
                   "for their architectures; a bare stage field (lr, steps, warmup, ema_decay, ...) is the "
                   "diffusion stage's, as the flags of those names are; VALUE is JSON when it parses as JSON, "
                   "else a string")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ldmkit.train.distributed import lost_another_process
    from ldmkit.train.run import run_training_outcome

    config = config_from_args(args)
    if not args.out.strip():
        # Path("") is the current folder: the run would land among whatever files are there.
        raise UserError("--out is empty: name the run folder to create, e.g. --out runs/first")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    try:
        # resume None: continue if RUN has a checkpoint
        outcome = run_training_outcome(config, out, resume=True if args.resume else None)
    except Exception as err:
        if not lost_another_process(err):
            raise
        from . import _which_process

        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print_line(f"ldm train{_which_process()}: error: lost contact with another process of this torchrun job "
                   f"({reason[:200]}); its own error, if it had one, is above. What was saved in {out} is kept: run "
                   "the same command again to resume")
        return 1
    return outcome.exit_status  # 130 / 143 after a signal's stop, so `ldm train ... && ...` goes no further


def config_from_args(args: argparse.Namespace):
    """The preset's `RunConfig` with every flag the user gave written over it."""
    from ldmkit.train.config import apply_overrides, preset_config

    config = preset_config(args.preset)
    overrides = {
        "data": args.data,
        "image_size": args.image_size,
        "flip": False if args.no_flip else None,
        "stage": args.stage,
        "vae_path": args.vae,
        "vae_steps": args.vae_steps,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "precision": args.precision,
        "cond_drop": args.cond_drop,
        "device": args.device,
        "seed": args.seed,
        "compile": not args.no_compile,
        "compile_mode": args.compile_mode,
        "step_graph": getattr(args, "step_graph", None),  # absent unless given (SUPPRESS: no "default: None")
        "quiet": args.quiet,
        "time_limit": args.time_limit,
    }
    apply_overrides(config, overrides)
    return apply_overrides(config, dict(parse_setting(text) for text in args.overrides), none_means_unset=False)


def parse_setting(text: str) -> tuple[str, object]:
    """`KEY=VALUE` -> (key, value): VALUE is read as JSON when it can be (numbers, true/false,
    null), else kept as a string."""

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        value = loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value
