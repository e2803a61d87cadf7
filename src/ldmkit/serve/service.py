"""What the web page and the HTTP API may ask of one loaded model: its description, and a
generation job checked as `ldm generate` checks its flags, run one at a time.

A request is a JSON object; every field is optional:

    {"n": 8, "class": "Animals & Nature", "prompt": null, "negative_prompt": "",
     "sampler": "dpmpp-2m", "steps": 25, "cfg": null, "seed": 0,
     "init_image": null, "mask": null, "strength": null}

`class` (a name or an id) makes all `n` images of that class; without it a class-conditional
model spreads them over its classes, as `ldm generate --n N` does. Image k has seed `seed + k`,
so the page's image is the one `ldm generate --seed SEED+k` writes for the same settings.
`init_image`, `mask` and `strength` are `ldm generate`'s --init-image, --mask and --strength
(img2img and inpainting), the images as base64 PNG, JPEG or WebP of the model's size
(`request_images.py`). `job_id` (letters, digits, - and _; the client's choice) lets the client
follow the job on the service's `ProgressBoard` while the request is out (`progress.py`); it
names one job at a time, and is free again once that job is done or stopped. Null (or "" for the
names and images a form sends) means the default; any other value of the wrong JSON type is a
mistake named by its field, never quietly defaulted.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ldmkit.data.images import png_bytes, to_pil
from ldmkit.diffusion.samplers import SAMPLERS
from ldmkit.diffusion.samplers.context import img2img_steps
from ldmkit.errors import UserError
from ldmkit.pipeline import DEFAULT_SAMPLER, DEFAULT_STEPS, LatentDiffusionPipeline
from ldmkit.pipeline_args import default_strength

from .progress import JobStopped, ProgressBoard
from .request_images import request_image

MAX_PROMPT_CHARS = 2000
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: a server shared by several people should not let one of
    them hold the GPU for an hour."""

    max_images: int = 64
    max_steps: int = 200


@dataclass
class Job:
    """A checked request: image k has seed `seeds[k]` and class id `labels[k]` (-1: none)."""

    seeds: list[int]
    labels: list[int]
    batch_size: int
    sampling: dict[str, Any]
    init_image: Image.Image | None = None  # img2img / inpainting, encoded when the job runs
    mask: Image.Image | None = None
    job_id: str | None = None  # the job's name on the ProgressBoard: the client's, or "#N" (`private_id`)
    total_steps: int = 0  # sampler steps over all batches (what the board counts to)
    notes: list[str] = field(default_factory=list)  # what the client should be told beside the images


@dataclass
class GeneratedImages:
    """One job's result: the images (uint8 [n, C, H, W] on the CPU) in order, with the seed, class
    name (or None) and class id (or None) of each: names need not be unique, ids are. `pngs`
    encodes them once, when first asked for, on the thread that asks: the server's request
    thread, so its runner goes on to the next job meanwhile."""

    images: torch.Tensor
    seeds: list[int]
    classes: list[str | None]
    labels: list[int | None]
    seconds: float
    notes: list[str] = field(default_factory=list)
    _pngs: list[bytes] | None = field(default=None, repr=False)

    @property
    def pngs(self) -> list[bytes]:
        """The images as PNG files' bytes."""
        if self._pngs is None:
            self._pngs = png_bytes(to_pil(self.images))
        return self._pngs


def _shown(value: Any) -> str:
    """`value` for a one-line error: a client's 10 MB array is not echoed back whole."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(request: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = request.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{key} must be an integer, got {_shown(value)}")
    if not low <= value <= high:
        raise UserError(f"{key} must be from {low} to {high}, got {value}")
    return value


def _text(request: Mapping[str, Any], key: str) -> str | None:
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise UserError(f"{key} must be a string, got {_shown(value)}")
    if len(value) > MAX_PROMPT_CHARS:
        raise UserError(f"{key} is longer than {MAX_PROMPT_CHARS} characters")
    return value


def _sampler(request: Mapping[str, Any]) -> str:
    """The sampler's name. Absent, null or "" (an empty form field) is the default; any other
    non-string is the client's mistake, not a reason to fall back quietly (a list used to reach
    the sampler table and fail there as a 500)."""
    value = request.get("sampler")
    if value is None or value == "":
        return DEFAULT_SAMPLER
    if not isinstance(value, str):
        raise UserError(f"sampler must be a sampler name (a string), got {_shown(value)}")
    return value


class GenerationService:
    """A loaded pipeline behind a lock: requests may arrive on several threads, the model runs
    one job at a time (a second job would only compete for the same device)."""

    FIELDS = ("n", "class", "prompt", "negative_prompt", "sampler", "steps", "cfg", "seed", "init_image", "mask",
              "strength", "job_id")

    def __init__(self, pipe: LatentDiffusionPipeline, *, name: str, limits: Limits = Limits()) -> None:
        self.pipe = pipe
        self.name = name
        self.limits = limits
        self.progress = ProgressBoard()
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        if self.pipe.takes_text:
            return "text"
        return "class" if self.pipe.num_classes else "unconditional"

    def defaults(self) -> dict[str, Any]:
        """What a request that leaves a field out gets."""
        return {"sampler": DEFAULT_SAMPLER, "steps": min(DEFAULT_STEPS, self.max_steps),
                "cfg": self.pipe.guidance_scale(None),
                "n": min(self.pipe.num_classes or 8, self.limits.max_images), "seed": 0}

    def describe(self) -> dict[str, Any]:
        """The model and the choices a request has (the page builds its form from this)."""
        return {
            "model": self.name,
            "kind": self.kind,
            "classes": list(self.pipe.class_names),
            "image_size": self.pipe.image_size,
            "channels": self.pipe.vae.config.out_channels,
            "device": str(self.pipe.device),
            "samplers": list(SAMPLERS),
            "defaults": self.defaults(),
            "limits": {"max_images": self.limits.max_images, "max_steps": self.max_steps},
        }

    @property
    def compiled(self) -> bool:
        """Whether requests run the compiled UNet (`ldm serve` asks for it on CUDA: a server lives
        long enough to repay each compile many times)."""
        return self.pipe.compile == "on"

    def batch_size(self, n: int) -> int:
        """The sampler batch a request of `n` images runs in. Eagerly, `n` itself (up to 64). The
        compiled UNet is built for one batch size at a time (static shapes, one CUDA graph each),
        so there a request runs in the smallest power of two that holds it, or in the largest batch
        (max_images, at most 64): at most eight compiles over the server's life, each paid by the
        first request of its size, at the cost of up to twice the images' work for the padding."""
        largest = min(self.limits.max_images, 64)
        if not self.compiled:
            return min(n, largest)
        bucket = 1
        while bucket < min(n, largest):
            bucket *= 2
        return min(bucket, largest)

    @property
    def max_steps(self) -> int:
        return min(self.limits.max_steps, self.pipe.schedule.num_steps)

    def generate(self, request: Mapping[str, Any]) -> GeneratedImages:
        """Check `request` and run it, in this thread (the server checks in the request's thread
        and runs on its `JobRunner`'s: `prepare`, `progress.queued`, then `run`). `JobIdInUse`
        when its job_id names a job that still waits or runs."""
        job = self.prepare(request)
        self.progress.queued(job.job_id)
        return self.run(job)

    def prepare(self, request: Mapping[str, Any]) -> Job:
        """Check `request` (`UserError` naming the first bad field) and turn it into a job."""
        if not isinstance(request, Mapping):
            raise UserError("the request must be a JSON object")
        unknown = sorted(set(request) - set(self.FIELDS))
        if unknown:
            raise UserError(f"unknown field(s) {', '.join(unknown)}; a request takes {', '.join(self.FIELDS)}")
        defaults = self.defaults()
        n = _integer(request, "n", defaults["n"], 1, self.limits.max_images)
        steps = _integer(request, "steps", defaults["steps"], 1, self.max_steps)
        seed = _integer(request, "seed", 0, 0, 2**63 - 1 - self.limits.max_images)
        sampler = _sampler(request)
        self.pipe.check_sampling(sampler, steps)  # the sampler's name (the steps are in range above)
        cfg = request.get("cfg")
        if cfg is not None and (isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not -50 <= cfg <= 50):
            raise UserError(f"cfg must be a number from -50 to 50 (or null for the model's default), "
                            f"got {_shown(cfg)}")
        prompt, negative = _text(request, "prompt"), _text(request, "negative_prompt") or ""
        if prompt == "" and self.pipe.takes_text:
            raise UserError("this is a text-to-image model: write a prompt")
        self.pipe.check_prompt(prompt)
        chosen = request.get("class")
        if chosen is not None and (isinstance(chosen, bool) or not isinstance(chosen, (str, int))):
            raise UserError(f"class must be a class name or id, got {_shown(chosen)}")
        classes = None if chosen is None or chosen == "" else [chosen]
        if classes and not self.pipe.num_classes:
            raise UserError(f"this {self.kind} model has no classes: leave class out")
        seeds, labels = self.pipe.plan(n, classes, seed)  # n of the one class, or n spread over all
        sampling = dict(sampler=sampler, steps=steps, cfg=None if cfg is None else float(cfg), prompt=prompt,
                        negative_prompt=negative)
        init_image, mask = self._start_images(request, sampling)
        if init_image is not None:  # a strength that runs no step, and the grid part it runs
            self.pipe.check_sampling(sampler, steps, strength=sampling["strength"])
        job_id = request.get("job_id")
        if job_id is not None and not (isinstance(job_id, str) and JOB_ID.fullmatch(job_id)):
            raise UserError(f"job_id must be 1-64 letters, digits, - or _, got {_shown(job_id)}")
        batch_size = self.batch_size(n)
        steps_per_batch = img2img_steps(steps, sampling["strength"]) if init_image is not None else steps
        return Job(seeds=seeds, labels=labels, batch_size=batch_size, sampling=sampling, init_image=init_image,
                   mask=mask, job_id=job_id if job_id is not None else self.progress.private_id(),
                   total_steps=-(-n // batch_size) * steps_per_batch, notes=self._prompt_notes(prompt, negative))

    def _prompt_notes(self, prompt: str | None, negative: str) -> list[str]:
        """A note for each prompt the text encoder cuts: the page shows it, where the warning that
        `ldm generate` prints would reach only the server's log."""
        encoder = self.pipe.text_encoder
        if prompt is None or encoder is None:
            return []
        notes = []
        for name, text in (("prompt", prompt), ("negative prompt", negative)):
            kept = encoder.cut_prompt(text)
            if kept is not None:
                notes.append(f"the {name} is longer than the {encoder.max_length} tokens the text encoder "
                             f"reads: only {kept!r} is used")
        return notes

    def _start_images(self, request: Mapping[str, Any],
                      sampling: dict[str, Any]) -> tuple[Image.Image | None, Image.Image | None]:
        """img2img's start image and inpainting's mask, with `strength` put in `sampling`: the
        checks and defaults of `ldm generate --init-image/--mask/--strength`."""
        size = self.pipe.image_size
        init_image, mask = request_image(request, "init_image", size), request_image(request, "mask", size)
        strength = request.get("strength")
        if init_image is None:
            if mask is not None or strength is not None:
                raise UserError("mask and strength need an init_image")
            return None, None
        if strength is None:
            strength = default_strength(mask is not None)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise UserError(f"strength must be a number in (0, 1], got {_shown(strength)}")
        sampling["strength"] = float(strength)
        return init_image, mask

    def run(self, job: Job) -> GeneratedImages:
        """Generate `job`'s images (in whole batches where the UNet is compiled: see `batch_size`).
        `JobStopped` when the job's client stopped it (`progress.py`)."""
        stopped = False
        try:
            with self._lock:
                start = time.perf_counter()
                self.progress.started(job.job_id, job.total_steps, batches=-(-len(job.seeds) // job.batch_size))
                sampling = dict(job.sampling)
                if job.job_id is not None:
                    sampling["callback"] = lambda step, t, x: self.progress.advanced(job.job_id)
                if job.init_image is not None:  # the VAE encodes here, on the thread that runs the model
                    sampling["init"] = self.pipe.encode_image(job.init_image)
                if job.mask is not None:
                    sampling["mask"] = self.pipe.prepare_mask(job.mask, size=job.mask.size)
                images = self.pipe.generate_uint8(job.seeds, job.labels, batch_size=job.batch_size,
                                                  whole_batches=self.compiled, **sampling)
                seconds = time.perf_counter() - start
        except JobStopped:
            stopped = True
            raise
        finally:
            self.progress.finished(job.job_id, stopped=stopped)
        labels = [int(c) if c >= 0 else None for c in job.labels]
        names = [self.pipe.class_names[c] if c is not None else None for c in labels]
        return GeneratedImages(images=images, seeds=list(job.seeds), classes=names, labels=labels,
                               seconds=seconds, notes=job.notes)
