"""`ldm generate`: images from a trained model, one PNG per image plus a grid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ldmkit.atomic import remove_temporary_files
from ldmkit.cli.background_writes import BackgroundWrites, writer_threads
from ldmkit.compile_choices import COMPILE_CHOICES
from ldmkit.errors import UserError
from ldmkit.pretrained import DEFAULT_MODEL, bundled_names

SAMPLERS = ["dpmpp-2m", "ddim", "ddpm", "euler", "heun"]
GRID_MAX_IMAGES = 1024  # OUT/grid.png by default up to this many images (10,000 at 256 px: a 2.6 GB image)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate images from a trained model",
        description="Generate images from a bundled model (the emoji model unless --model says otherwise), a run "
        "folder, an inference .safetensors file, a diffusers pipeline folder or a Stable Diffusion checkpoint: "
        "text-to-image (--prompt), class-conditional (--class), img2img (--init-image, --strength) and inpainting "
        "(--init-image, --mask). Image k uses seed SEED+k, so the same seed gives the same image whatever "
        "--batch-size (up to float rounding: a pixel may differ by a grey level).",
    )
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a bundled model ({', '.join(bundled_names())}; default: {DEFAULT_MODEL}), a run folder "
                   "(from `ldm train`), an inference .safetensors file (from `ldm train` or `ldm convert`), a "
                   "diffusers pipeline folder, or a CompVis/SD .safetensors/.ckpt file")
    p.add_argument("--n", type=int, default=None,
                   help="images per listed --class; without --class, the total, spread evenly over the classes "
                   "(default: one per class, or 16 for an unconditional model)")
    p.add_argument("--class", dest="classes", nargs="+", default=None, metavar="NAME_OR_ID",
                   help="class names or ids to generate (see `ldm info`); a name is matched exactly, then in any "
                   "case, then by its letters and digits alone (T-shirt_top for T-shirt/top); a number names a "
                   "class exactly or in any case before it is read as an id (with folders named 1..10, 1 is "
                   "the class named 1)")
    p.add_argument("--sampler", choices=SAMPLERS, default="dpmpp-2m",
                   help="sampling algorithm: dpmpp-2m (DPM-Solver++(2M), the default); ddim; "
                        "ddpm (stochastic: at 25 steps its samples come out less varied than at 100+); euler; "
                        "heun (two network calls a step; its first step is poor when the top noise level is far "
                        "above the next, as with the cosine schedule or under ~10 steps: take dpmpp-2m there)")
    p.add_argument("--steps", type=int, default=25, help="sampler steps (default: 25)")
    p.add_argument("--prompt", default=None, help="text prompt (text-to-image models)")
    p.add_argument("--negative-prompt", default="",
                   help="what to steer away from: the unconditional side of guidance (default: empty prompt)")
    p.add_argument("--init-image", default=None, metavar="PATH",
                   help="img2img / inpainting: start from this image (its size sets the output size)")
    p.add_argument("--strength", type=float, default=None,
                   help="img2img: how far to noise the init image, in (0, 1] and at least 1/--steps (it runs "
                   "int(steps x strength) steps); 1 ignores it (default: 0.75, or 1.0 with --mask)")
    p.add_argument("--mask", default=None, metavar="PATH",
                   help="inpainting: mask image of the init image's size, white = regenerate, black = keep")
    p.add_argument("--fit", action="store_true",
                   help="scale --init-image (and --mask) so the shorter side is the model's image size and crop "
                   "the centre square, as training did to its images (default: use them at their own size, "
                   "which must be a multiple of the model's downsampling)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="CLIP tokenizer folder for a CompVis/SD single-file --model (it stores none)")
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale; 1 means no guidance (default: 7.5 for text-to-image, "
                   "2.0 for class-conditional models)")
    p.add_argument("--cfg-rescale", type=float, default=0.0,
                   help="guidance rescale factor in [0, 1] (Lin et al. 2024); 0 is off (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image (default: 0)")
    p.add_argument("--out", default="samples", help="folder for the PNG files (default: ./samples)")
    p.add_argument("--grid", default=None,
                   help=f"also write all images as one grid PNG here (default: OUT/grid.png, for jobs of up to "
                   f"{GRID_MAX_IMAGES} images); a file already there is replaced only if ldm generate wrote it")
    p.add_argument("--skip-existing", action="store_true",
                   help="keep the images already in --out under their file names and make only the missing ones "
                   "(image k depends only on its seed: an interrupted job resumes exactly)")
    p.add_argument("--batch-size", type=int, default=64, help="images per sampler batch (default: 64)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                   help="torch.compile the UNet (with CUDA graphs on a GPU); auto does so on CUDA for jobs of "
                   "256 images or more, where it repays the tens of seconds it takes. Compiled, every batch "
                   "runs at --batch-size (a short last batch is filled up and the extra images dropped), so "
                   "the job compiles once (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ldmkit.cli.generate_output import (
        check_folder,
        check_grid_destination,
        check_inputs_not_written,
        check_no_other_job,
        check_same_job,
        grid_pnginfo,
        job_settings,
        make_folder,
        readable_png,
    )
    from ldmkit.data.images import make_grid, save_png, to_pil
    from ldmkit.eval.samples_io import GRID_FILE, sample_filename, write_samples_info
    from ldmkit.pipeline import LatentDiffusionPipeline, open_image
    from ldmkit.pipeline_args import default_strength

    if args.steps < 1:
        raise UserError(f"--steps must be at least 1 (got {args.steps})")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.init_image is None and (args.mask is not None or args.strength is not None or args.fit):
        raise UserError("--mask, --strength and --fit need --init-image")
    if args.strength is not None and not 0 < args.strength <= 1:  # NaN too; before --out is made
        raise UserError(f"--strength must be in (0, 1], got {args.strength}")
    out = check_folder(args.out, "--out")  # made once the model has loaded
    threads = writer_threads()
    if args.grid is not None:
        grid = Path(args.grid)
        if grid.is_dir():
            raise UserError(f"--grid {grid} is a folder; give the grid's file name (e.g. {grid / 'grid.png'})")
        check_folder(grid.parent, "--grid")
    options = {"tokenizer": args.tokenizer} if args.tokenizer else {}
    pipe = LatentDiffusionPipeline.from_pretrained(args.model, device=args.device, compile=args.compile, **options)
    pipe.check_prompt(args.prompt)  # before the progress bar: a mistake is then one line
    strength = None if args.init_image is None else (
        args.strength if args.strength is not None else default_strength(args.mask is not None))
    pipe.check_sampling(args.sampler, args.steps, args.cfg_rescale, args.cfg, strength)  # and img2img's steps
    seeds, labels = pipe.plan(args.n, args.classes, args.seed)
    sampling = dict(sampler=args.sampler, steps=args.steps, cfg=args.cfg, cfg_rescale=args.cfg_rescale,
                    prompt=args.prompt, negative_prompt=args.negative_prompt)
    if args.init_image is not None:
        image = open_image(args.init_image, "--init-image")
        mask = open_image(args.mask, "--mask") if args.mask is not None else None
        if mask is not None and mask.size != image.size:  # checked before --fit would hide it
            raise UserError(f"--mask is {mask.size[0]}x{mask.size[1]}, --init-image {image.size[0]}x{image.size[1]}: "
                            "draw the mask on the image it is for")
        if args.fit:
            image = pipe.fit_image(image, "--init-image")
            mask = pipe.fit_image(mask, "--mask") if mask is not None else None
        sampling.update(init=pipe.encode_image(image), strength=strength)
        if mask is not None:
            sampling["mask"] = pipe.prepare_mask(mask, size=image.size)
    if args.negative_prompt and not pipe.takes_text:
        raise UserError("--negative-prompt needs a text-to-image model; this one takes no prompt")
    if args.cfg is not None and pipe.guidance_scale(args.cfg) is None:
        print("ldm generate: warning: --cfg has no effect: this model is unconditional (no class or prompt to "
              "guide by)", file=sys.stderr)
        sampling["cfg"] = None  # said once, here, before any work (the pipeline would say it again)
    names = [sample_filename(k, seed, c if c >= 0 else None) for k, (seed, c) in enumerate(zip(seeds, labels))]
    grid_path = Path(args.grid) if args.grid else out / GRID_FILE
    writes_grid = args.grid is not None or len(names) <= GRID_MAX_IMAGES
    if writes_grid:
        check_grid_destination(grid_path, out)
    check_inputs_not_written([*(out / name for name in names), *([grid_path] if writes_grid else [])],
                             {"--init-image": args.init_image, "--mask": args.mask, "--model": args.model})
    make_folder(out, "--out")
    remove_temporary_files(out)  # what an earlier job killed mid-write left (its process has ended)
    if args.grid is not None:
        make_folder(Path(args.grid).parent, "--grid")
    kept = {k for k, name in enumerate(names) if args.skip_existing and readable_png(out / name)}
    settings = job_settings(args, pipe.image_size, pipe.guidance_scale(args.cfg), sampling.get("strength"))
    if kept:  # only images of this very job may be kept
        check_same_job(out, pipe.class_names, settings)
    check_no_other_job(out, names, pipe.class_names, settings)  # nor may another job's stay beside them
    todo = [k for k in range(len(names)) if k not in kept]
    # What the ids in the names mean (for `ldm eval --samples`) and the settings (for --skip-existing).
    write_samples_info(out, pipe.class_names, settings)
    bar = tqdm(total=len(todo), unit="img", disable=args.quiet or not todo, desc="generating")
    with BackgroundWrites(lambda image, path: _write(save_png, image, path), threads) as writes:
        try:  # each batch is written as it comes (while the next is sampled): an interrupt keeps what was made
            handed = 0
            for images in pipe.iter_uint8([seeds[k] for k in todo], [labels[k] for k in todo],
                                          batch_size=args.batch_size, progress=bar.update, **sampling):
                writes.wait_for(0)  # the previous batch is on disk: at most two batches in memory
                for image in to_pil(images):
                    writes.put(image, out / names[todo[handed]])
                    handed += 1
            written = writes.finish()
        except KeyboardInterrupt:
            bar.close()
            written = writes.finish_after_interrupt()  # the images already made are written, then counted
            print(f"ldm generate: interrupted: {written} of {len(todo)} images written to {out}/; the same command "
                  "with --skip-existing makes the rest", file=sys.stderr)
            return 130
    bar.close()

    done = f"wrote {written} images to {out}/" + (f" ({len(names) - len(todo)} were there)" if len(todo) < len(names)
                                                 else "")
    if not writes_grid:
        print(f"{done}; no grid of {len(names)} images (more than {GRID_MAX_IMAGES}: pass --grid PATH for one)")
        return 0
    tiles = [open_image(out / name, "generated image") for name in names]  # from disk: --skip-existing's too
    if len({(tile.size, tile.mode) for tile in tiles}) > 1:
        raise UserError(f"{done}, but they and the files kept by --skip-existing differ in size or mode (made by "
                        "another model?), so no grid was written")
    grid_image = make_grid(tiles, nrow=_grid_columns(labels))
    _write(lambda image, path: save_png(image, path, pnginfo=grid_pnginfo()), grid_image, grid_path)  # tagged: ours
    print(f"{done} and the grid {grid_path}")
    return 0


def _write(save, image, path: Path) -> None:
    """`save(image, path)`, a file system's refusal (read-only, full, no such place) as one line."""
    try:
        save(image, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None


def _grid_columns(labels: list[int]) -> int:
    """One row per class when images are grouped by class, else a near-square grid (also for the
    default one image per class, which as one row per class would be a single tall column)."""
    if labels and labels[0] >= 0 and 1 < len(set(labels)) < len(labels):
        runs = len(labels) // len(set(labels))
        if labels[:runs] == [labels[0]] * runs:  # grouped: class A x n, class B x n, ...
            return runs
        return len(set(labels))  # interleaved: 0,1,2,...,0,1,2 -> one column per class
    return max(1, round(len(labels) ** 0.5))
