"""`LatentDiffusionPipeline`: seeds -> noise -> sampler(UNet with CFG) -> latents -> VAE -> images.

One object for the user-facing generation jobs: class-conditional or unconditional generation,
text-to-image (a CLIP text encoder gives the cross-attention context), img2img (SDEdit, Meng et
al. 2022: the init image's latents, noised part-way, are denoised from there) and inpainting
(latent blending: outside the mask, the init latents noised to each step's level replace the
sample, Lugmayr et al. 2022). It owns no maths of its own: noise comes from
`diffusion.SeededNoise` (one generator per image, so image k is the same whatever the batch
size), the update rule and the img2img / mask handling from `diffusion.sample`, guidance from
`diffusion.classifier_free_guidance`, and the codec from `AutoencoderKL`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldmkit.compiled_unet import CompiledUNet, wants_compile
from ldmkit.data.decode import mask_levels, resize_center_crop, to_rgb
from ldmkit.data.images import to_pil, to_uint8
from ldmkit.device import resolve_device
from ldmkit.diffusion import (
    NoiseSchedule,
    SeededNoise,
    class_guidance,
    classifier_free_guidance,
    sample,
)
from ldmkit.diffusion.guidance import check_rescale
from ldmkit.diffusion.samplers import check_sampler, sampler_options
from ldmkit.errors import UserError, warn_caller
from ldmkit.models import AutoencoderKL, UNet
from ldmkit.run_files import VAE_FILE
from ldmkit.data.class_names import match_class_name
from ldmkit.data.folder_layout import printable_name
from ldmkit.pipeline_args import (DEFAULT_STRENGTH, TEXT_ENCODER_LAYOUT, check_parts, check_seeds_and_labels,
                                  check_start, check_strength, class_names_for, filled, network_dtype, open_image,
                                  real_number, whole_number)

DEFAULT_SAMPLER = "dpmpp-2m"
DEFAULT_STEPS = 25
DEFAULT_CFG = 2.0  # class-conditional models
DEFAULT_TEXT_CFG = 7.5  # text-to-image (Stable Diffusion's usual scale)
MAX_JOB_IMAGES = 1_000_000  # one job's list of seeds, classes and file names stays under ~200 MB


class LatentDiffusionPipeline:
    """A UNet + VAE + noise schedule (+ CLIP text encoder), ready to generate images.

    Build one with `from_pretrained(path)`: an ldmkit run folder or inference file, a diffusers
    pipeline folder, or a Stable Diffusion single-file checkpoint.
    """

    def __init__(
        self,
        unet: UNet,
        vae: AutoencoderKL,
        schedule: NoiseSchedule,
        *,
        prediction: str = "eps",
        class_names: Sequence[str] = (),
        image_size: int,
        device: torch.device | str = "cpu",
        text_encoder: torch.nn.Module | None = None,
        sampler_defaults: dict[str, Any] | None = None,
        dtype: torch.dtype | str | None = None,
        compile: str = "auto",
    ) -> None:
        self.device = torch.device(device)
        # Networks held in bf16 on CUDA (the fastest measured inference setting, see
        # benchmarks/NOTES.md); fp32 on the CPU. The sampler state stays fp32 either way.
        self.dtype = network_dtype(dtype) or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.unet = unet.to(self.device, self.dtype).eval()
        self.vae = vae.to(self.device, self.dtype).eval()
        self.text_encoder = None if text_encoder is None else text_encoder.to(self.device).eval()
        check_parts(schedule, prediction, image_size, vae, sampler_defaults)
        self.schedule, self.prediction = schedule, prediction
        self.class_names = class_names_for(unet, class_names)
        self.image_size = image_size
        self.sampler_defaults = dict(sampler_defaults or {})
        # "auto": torch.compile with CUDA graphs for jobs large enough to repay the compilation
        # (see compiled_unet); "on" / "off" force it.
        wants_compile(compile, self.device, 0)  # validates the setting now, not mid-job
        self.compile = compile
        self._compiled: CompiledUNet | None = None
        self._job_images: int | None = None  # size of the generate_uint8 job in progress

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "auto",
                        dtype: torch.dtype | str | None = None, compile: str = "auto",
                        **options: Any) -> "LatentDiffusionPipeline":
        """Load any model source `ldmkit.interop.load_bundle` reads; `options` go to it (e.g.
        `tokenizer=DIR` for a CompVis checkpoint). `dtype` of the networks: default bf16 on
        CUDA, fp32 on the CPU. `compile`: "auto", "on" or "off" (see `ldmkit.compiled_unet`)."""
        from ldmkit.interop import load_bundle

        bundle = load_bundle(path, **options)
        if bundle.unet is None or bundle.vae is None:
            unfinished = (Path(path) / VAE_FILE).is_file()  # a run folder stopped before its diffusion stage
            raise UserError(f"{path} holds {', '.join(bundle.components)}; generating needs a UNet and a VAE"
                            + ("; run its `ldm train` command again to train the UNet" if unfinished else ""))
        if bundle.schedule is None:
            raise UserError(f"{path} stores no noise schedule")
        return cls(
            bundle.unet, bundle.vae, bundle.schedule, prediction=bundle.prediction, class_names=bundle.class_names,
            image_size=int(bundle.resolved_image_size()), device=resolve_device(device),
            text_encoder=bundle.text_encoder, sampler_defaults=bundle.sampler_defaults, dtype=dtype,
            compile=compile,
        )

    # ----------------------------------------------------------------- helpers
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def takes_text(self) -> bool:
        """Whether the UNet is conditioned on a context (cross-attention), i.e. on prompts."""
        return self.unet.config.context_dim is not None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.vae.config.downsample_factor
        return (self.vae.config.latent_channels, side, side)

    def class_id(self, name_or_id: str | int) -> int:
        """Turn a class name or an id into a class id, or explain the choices. A name wins over an id
        (folders named 1..10: "1" is the class "1", id 0); `match_class_name` says how names match."""
        if self.num_classes == 0:
            kind = "a text-to-image model: give a prompt" if self.takes_text else "unconditional"
            raise UserError(f"this model has no classes ({kind}); it takes no class (classes=, --class)")
        text = printable_name(str(name_or_id))  # a folder's name that is not UTF-8, as typed: its escapes
        number = re.fullmatch(r"[0-9]+", text) is not None  # ASCII digits only: "²" is a digit to isdigit
        found = None if isinstance(name_or_id, numbers.Integral) else \
            match_class_name(text, self.class_names, loose=not number)
        if found is not None:
            return found
        if number and int(text) < self.num_classes:
            return int(text)
        choices = ", ".join(f"{i}={c}" for i, c in enumerate(self.class_names))
        raise UserError(f"unknown class {name_or_id!r}; this model knows: {choices}")

    def plan(self, n: int | None, classes: Sequence[str | int] | None, seed: int) -> tuple[list[int], list[int]]:
        """Seeds and class ids of the images to make.

        With classes given, `n` images per listed class; with none, `n` images spread evenly over
        all classes (class-conditional models), `n` images of the prompt (text models, default 1)
        or `n` unconditional images (default 16). Image k gets seed `seed + k`.
        """
        n = None if n is None else whole_number(n, "n (--n)")
        seed = whole_number(seed, "seed (--seed)")
        if isinstance(classes, (str, numbers.Integral)):  # one class: "Flags" is not the classes F, l, a, g, s
            classes = [classes]
        elif hasattr(classes, "tolist"):  # a numpy array or a tensor of ids (0-d too): Python ints, not
            classes = classes.tolist()    # 0-d tensors that are no Integral and matched no id
            classes = classes if isinstance(classes, list) else [classes]
        elif classes is not None and not isinstance(classes, (list, tuple)):
            classes = list(classes)  # any other iterable: its truth value may be ambiguous
        if n is not None and n < 1:
            raise UserError(f"n (--n) must be at least 1, got {n}")
        total = (n or 1) * len(classes) if classes else (n or 0)
        if total > MAX_JOB_IMAGES:  # checked before the lists are built: 10**8 names took 7 GB
            raise UserError(f"{total:,} images is more than one job makes (at most {MAX_JOB_IMAGES:,}); make them "
                            f"in parts, into separate folders or with the seed (--seed) moved on by each part's count")
        if classes:
            ids = [self.class_id(c) for c in classes]
            per_class = n or 1
            labels = [c for c in ids for _ in range(per_class)]
        elif self.num_classes:
            total = n or self.num_classes
            labels = [k % self.num_classes for k in range(total)]
        else:
            labels = [-1] * (n or (1 if self.takes_text else 16))
        if not 0 <= seed <= 2**63 - len(labels):  # every image's seed, checked before any work
            raise UserError(f"seed (--seed) must be from 0 to 2**63 - n, got {seed} for {len(labels)} images")
        return [seed + k for k in range(len(labels))], labels

    def check_sampling(self, sampler: str, steps: int, cfg_rescale: float = 0.0, cfg: float | None = None,
                       strength: float | None = None, **sampler_settings: Any) -> None:
        """`UserError` for a sampler, step count (its grid, img2img's part of it at `strength`), guidance
        scale or rescale this model cannot run: the loop's checks, before a command's progress bar."""
        options = {k: v for k, v in self.sampler_defaults.items() if k in sampler_options(sampler)}
        steps = whole_number(steps, "steps")
        start = {} if strength is None else {"init": torch.zeros(1), "strength": check_strength(strength, steps)}
        check_sampler(sampler, self.schedule, steps=steps, prediction=self.prediction,
                      **{**options, **sampler_settings, **start})
        check_rescale(cfg_rescale)
        if cfg is not None and not math.isfinite(real_number(cfg, "the guidance scale cfg (--cfg)")):
            raise UserError(f"the guidance scale cfg (--cfg) must be a finite number, got {cfg}")  # NaN: black images

    def check_prompt(self, prompt: str | None) -> None:
        """`UserError` unless this model can take `prompt` (None: no prompt): a text-to-image model
        needs one and a loaded text encoder, any other model takes none."""
        if self.takes_text:
            if prompt is None:
                raise UserError("this is a text-to-image model: give a prompt (--prompt)")
            if not isinstance(prompt, str):  # one prompt for the whole job (a list was told "prompts must be...")
                raise UserError(f"the prompt must be one string, got {type(prompt).__name__}; for several prompts, "
                                "call once per prompt")
            if self.text_encoder is None:
                raise UserError(f"this model needs a CLIP text encoder, none is loaded; expected {TEXT_ENCODER_LAYOUT}")
        elif prompt is not None:
            raise UserError("this model takes no prompt: it has no cross-attention (it is not text-conditioned)")

    def _denoiser(self, labels: Sequence[int], prompt: str | None, negative_prompt: str, cfg: float | None,
                  cfg_rescale: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The guided denoiser `(x, t) -> prediction` for one batch."""

        unet = self._unet_for(self._job_images or len(labels))

        def model_fn(x: torch.Tensor, t: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
            kwargs = {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in kwargs.items()}
            return unet(x.to(self.dtype), t, **kwargs).float()

        self.check_prompt(prompt)
        if self.takes_text:
            # Classifier-free guidance with the negative prompt ("" = SD's unconditional) as the null.
            # [2, 77, width] in the UNet's dtype once per batch: model_fn's cast is then a no-op and
            # every step passes the same tensor, whose keys and values a CompiledUNet computes once
            context = self.text_encoder.encode([prompt, negative_prompt]).to(self.dtype)
            batch = len(labels)
            cond = {"context": context[:1].expand(batch, -1, -1)}
            uncond = {"context": context[1:].expand(batch, -1, -1)}
            scale = self.guidance_scale(cfg)
            return classifier_free_guidance(model_fn, scale, cond=cond, uncond=uncond, rescale=cfg_rescale)
        if self.num_classes:
            class_labels = torch.tensor(list(labels), device=self.device)
            return class_guidance(model_fn, class_labels, self.num_classes, self.guidance_scale(cfg),
                                  rescale=cfg_rescale)
        return lambda x, t: model_fn(x, t)  # no guidance without a condition

    def guidance_scale(self, cfg: float | None) -> float | None:
        """The guidance scale sampling uses for `cfg` (None: this model's kind's default); None for
        an unconditional model, which has no condition to guide by."""
        if self.takes_text:
            return DEFAULT_TEXT_CFG if cfg is None else cfg
        if self.num_classes:
            return DEFAULT_CFG if cfg is None else cfg
        return None

    # -------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_latents(
        self,
        seeds: Sequence[int],
        labels: Sequence[int],
        *,
        sampler: str = DEFAULT_SAMPLER,
        steps: int = DEFAULT_STEPS,
        cfg: float | None = None,
        cfg_rescale: float = 0.0,
        callback: Callable[[int, float, torch.Tensor], None] | None = None,
        prompt: str | None = None,
        negative_prompt: str = "",
        init: torch.Tensor | None = None,
        strength: float = 1.0,
        mask: torch.Tensor | None = None,
        **sampler_settings: Any,
    ) -> torch.Tensor:
        """Sample one batch of latents; `labels` are class ids (-1 for unconditional models).

        `init` ([1, C, h, w] normalised latents, see `encode_image`) with `strength` in (0, 1]
        starts part-way (img2img); `mask` ([1, 1, h, w], 1 = regenerate) keeps `init` elsewhere.
        Without a mask, strength 1 ignores `init`: the plain generation path. `sampler_settings`
        are the sampler's own options (`eta` for ddim, `karras_sigmas` for euler / heun, ...: see
        `diffusion.sampler_options`); they override the model's defaults.
        """
        steps = whole_number(steps, "steps")  # numpy's integers and 0-d tensors as Python numbers from here
        shape = check_start(seeds, labels, init, mask, strength, self.latent_shape[0]) or self.latent_shape
        strength = check_strength(strength, steps) if init is not None else None
        self.check_sampling(sampler, steps, cfg_rescale, cfg, strength, **sampler_settings)  # NaN cfg: black images
        cfg = None if cfg is None else real_number(cfg, "the guidance scale cfg (--cfg)")
        if cfg is not None and self.guidance_scale(cfg) is None:
            warn_caller("cfg (--cfg) has no effect: this model is unconditional (no class or prompt to guide by)")
        negative_prompt = "" if negative_prompt is None else negative_prompt  # None: no negative prompt
        if negative_prompt and not self.takes_text:
            raise UserError("a negative prompt needs a text-to-image model; this one takes no prompt")
        noise = SeededNoise(list(seeds), shape, device=self.device, dtype=torch.float32)
        x_T = noise.draw()  # [B, C_latent, h, w]
        options = {k: v for k, v in self.sampler_defaults.items() if k in sampler_options(sampler)}
        options.update(sampler_settings)  # `sample` refuses a name this sampler does not take, listing its own
        if init is not None:
            if mask is not None or strength < 1:
                options.update(init=init.to(self.device).expand_as(x_T), strength=float(strength))
            if mask is not None:
                options["mask"] = mask.to(self.device)
        denoiser = self._denoiser(labels, prompt, negative_prompt, cfg, cfg_rescale)
        return sample(denoiser, x_T, self.schedule, sampler=sampler, steps=steps, prediction=self.prediction,
                      noise=noise, callback=callback, **options)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> uint8 images [B, C, H, W]."""
        return to_uint8(self.vae.decode(latents.to(self.dtype)).float().clamp(-1, 1))

    def generate(
        self,
        n: int | None = None,
        *,
        classes: Sequence[str | int] | None = None,
        prompt: str | None = None,
        negative_prompt: str = "",
        seed: int = 0,
        sampler: str = DEFAULT_SAMPLER,
        steps: int = DEFAULT_STEPS,
        cfg: float | None = None,
        cfg_rescale: float = 0.0,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        **sampler_settings: Any,
    ) -> list[Image.Image]:
        """Generate images; returns PIL images in order (image k has seed `seed + k`): `n` of each
        class in `classes`, else `n` spread over all classes (`plan` says how).

        `cfg` None takes 7.5 for text-to-image models and 2.0 for class-conditional ones.
        `sampler_settings`: the sampler's own options, e.g. `eta=0.5` for ddim (`generate_latents`).
        """
        seeds, labels = self.plan(n, classes, seed)
        images = self.generate_uint8(seeds, labels, sampler=sampler, steps=steps, cfg=cfg, cfg_rescale=cfg_rescale,
                                     prompt=prompt, negative_prompt=negative_prompt, batch_size=batch_size,
                                     progress=progress, **sampler_settings)
        return to_pil(images)

    def img2img(self, image: Image.Image | str | Path, strength: float = DEFAULT_STRENGTH, *, n: int | None = None,
                classes: Sequence[str | int] | None = None, seed: int = 0, **sampling: Any) -> list[Image.Image]:
        """Images like `image`: its latents noised to `strength` in (0, 1] (near 0 = nearly unchanged,
        1 = a fresh image) and denoised from there (SDEdit). `sampling` as for `generate` (prompt, cfg, steps, ...)."""
        seeds, labels = self.plan(n, classes, seed)
        init = self.encode_image(image)
        return to_pil(self.generate_uint8(seeds, labels, init=init, strength=strength, **sampling))

    def inpaint(self, image: Image.Image | str | Path, mask: Image.Image | str | Path, *, strength: float = 1.0,
                n: int | None = None, classes: Sequence[str | int] | None = None, seed: int = 0,
                **sampling: Any) -> list[Image.Image]:
        """Regenerate the white part of `mask` (same size as `image`), keep the rest of `image`."""
        seeds, labels = self.plan(n, classes, seed)
        pil = open_image(image, "image")
        init, latent_mask = self.encode_image(pil), self.prepare_mask(mask, size=pil.size)
        return to_pil(self.generate_uint8(seeds, labels, init=init, strength=strength, mask=latent_mask, **sampling))

    def generate_uint8(self, seeds: Sequence[int], labels: Sequence[int], **options: Any) -> torch.Tensor:
        """All of `iter_uint8`'s batches (same options) as one uint8 [N, C, H, W] on the CPU."""
        check_seeds_and_labels(seeds, labels)  # torch.cat of no batches was torch's error
        return torch.cat(list(self.iter_uint8(seeds, labels, **options)))

    def iter_uint8(
        self,
        seeds: Sequence[int],
        labels: Sequence[int],
        *,
        batch_size: int = 64,
        whole_batches: bool = False,
        progress: Callable[[int], None] | None = None,
        **sampling: Any,
    ) -> Iterator[torch.Tensor]:
        """Each batch's images, uint8 [b, C, H, W] on the CPU, as soon as it is decoded (a caller
        writing files loses nothing made before an interrupt).

        The compiled UNet has static shapes: a batch of a new size is a new compile (tens of
        seconds on a GPU, where a batch of the C1 UNet's 25 steps takes milliseconds). Where it
        runs, a job's short last batch is therefore filled up to `batch_size` with copies of its
        last image's seed and class, and the copies dropped: each image depends only on its own
        seed (`SeededNoise`), so the images kept are the ones an unpadded batch makes.
        `whole_batches` pads a job of one short batch too (a server reusing one compile per size).
        """
        if whole_number(batch_size, "batch_size") < 1:
            raise UserError(f"batch_size (--batch-size) must be at least 1, got {batch_size}")
        check_seeds_and_labels(seeds, labels, some=False)
        pad = self._compiles(len(seeds)) and (whole_batches or len(seeds) > batch_size)
        self._job_images = len(seeds)  # "auto" compilation looks at the whole job, not one batch
        try:
            for start in range(0, len(seeds), batch_size):
                batch = slice(start, start + batch_size)
                batch_seeds, batch_labels = list(seeds[batch]), list(labels[batch])
                kept = len(batch_seeds)
                if pad:
                    batch_seeds, batch_labels = filled(batch_seeds, batch_size), filled(batch_labels, batch_size)
                latents = self.generate_latents(batch_seeds, batch_labels, **sampling)[:kept]
                images = self.decode(latents).cpu()
                if progress is not None:
                    progress(kept)
                yield images
        finally:
            self._job_images = None

    def _compiles(self, num_images: int) -> bool:
        """Whether a job of `num_images` runs the compiled UNet."""
        return wants_compile(self.compile, self.device, num_images)

    def _unet_for(self, num_images: int) -> Callable[..., torch.Tensor]:
        """The UNet a job of `num_images` runs: the compiled one (built once) or the module."""
        if not self._compiles(num_images):
            return self.unet
        if self._compiled is None:
            self._compiled = CompiledUNet(self.unet, self.device)
        return self._compiled

    # ------------------------------------------------------------ image inputs
    @torch.no_grad()
    def encode_image(self, image: Image.Image | str | Path) -> torch.Tensor:
        """An image (PIL or path) -> normalised latents [1, C, h, w] (the posterior mean)."""
        pil = open_image(image, "image")
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[self.vae.config.in_channels]
        if mode != "RGBA":  # the training data's rules: 16-bit scaled, not clipped to white; alpha on white
            pil = to_rgb(pil)
        width, height = pil.size
        if not width or not height:
            raise UserError(f"the image is {width}x{height}: it has no pixels")
        step = self.vae.config.downsample_factor * self.unet.config.downsample_factor
        size = self.image_size
        if size and max(width, height) > MAX_IMAGE_SCALE * size:  # a phone photo on a 64 px model: hours, GBs
            raise UserError(f"image size {width}x{height} is more than {MAX_IMAGE_SCALE} times this model's "
                            f"{size}x{size}; resize it, or fit it to the model's size (`ldm generate --fit`, "
                            "`pipe.fit_image`)")
        if width % step or height % step:
            raise UserError(f"image size {width}x{height} must be a multiple of {step} for this model; resize it, "
                            f"or fit it to the model's {size}x{size} (`ldm generate --fit`, `pipe.fit_image`)")
        pixels = torch.from_numpy(np.asarray(pil.convert(mode), dtype=np.float32).copy())
        pixels = pixels.reshape(height, width, -1).permute(2, 0, 1)[None] / 127.5 - 1  # [1, C, H, W] in [-1, 1]
        return self.vae.encode(pixels.to(self.device, self.dtype)).float()

    def fit_image(self, image: Image.Image | str | Path, what: str = "image") -> Image.Image:
        """`image` upright (its EXIF orientation applied), its shorter side scaled to the model's
        image size and the centre square cropped: what training did to its images."""
        return resize_center_crop(open_image(image, what), self.image_size)  # open_image turns it upright

    def prepare_mask(self, mask: Image.Image | str | Path, size: tuple[int, int]) -> torch.Tensor:
        """A mask image (white = regenerate) -> [1, 1, h, w] in {0, 1} at latent resolution.

        A latent pixel is regenerated when any image pixel it covers is white (>= 128), so the
        whole masked area is redrawn rather than its inner part only.
        """
        pil = open_image(mask, "mask")
        if pil.size != tuple(size):
            raise UserError(f"mask size {pil.size[0]}x{pil.size[1]} differs from the image's {size[0]}x{size[1]}")
        binary = torch.from_numpy((mask_levels(pil) >= 128).astype(np.float32))[None, None]
        return F.max_pool2d(binary, self.vae.config.downsample_factor).to(self.device)


MAX_IMAGE_SCALE = 8  # start images up to this many times the model's size (each step runs the UNet at it)
