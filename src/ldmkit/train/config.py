"""Typed training configuration: dataclasses, named presets, overrides, JSON round trip.

A run is described by one `RunConfig` (data, devices, bookkeeping) holding a
`VAETrainConfig` and a `DiffusionTrainConfig`. Presets are named functions in
`TRAIN_PRESETS` (DiT's `DiT_models` registry); the CLI starts from one and overrides fields
with `apply_overrides`. The model architectures are stored as plain dicts (the model
configs' `to_dict()`), filled from `ldmkit.models.presets` by name, so the resolved config
written to RUN/config.json and into every checkpoint rebuilds the models on its own.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ldmkit.compile_choices import COMPILE_MODES
from ldmkit.errors import UserError

if TYPE_CHECKING:
    from ldmkit.diffusion.schedules import NoiseSchedule

STAGES = ("all", "vae", "diffusion")
PRECISIONS = ("fp32", "bf16", "fp16")
PREDICTIONS = ("eps", "v", "x0")
SCHEDULES = ("linear", "scaled_linear", "cosine")
RECON_LOSSES = ("l1", "l2")


def vae_model_dict(preset: str) -> dict[str, Any]:
    """The AutoencoderKL config of a VAE preset, as a dict."""
    from ldmkit.models.presets import VAE_PRESETS

    if preset not in VAE_PRESETS:
        raise UserError(f"unknown VAE preset {preset!r}; choose one of {sorted(VAE_PRESETS)}")
    return VAE_PRESETS[preset]().to_dict()


def unet_model_dict(preset: str) -> dict[str, Any]:
    """The UNet config of a UNet preset, as a dict."""
    from ldmkit.models.presets import UNET_PRESETS

    if preset not in UNET_PRESETS:
        raise UserError(f"unknown UNet preset {preset!r}; choose one of {sorted(UNET_PRESETS)}")
    return UNET_PRESETS[preset]().to_dict()


@dataclass
class VAETrainConfig:
    """The autoencoder stage: reconstruction + KL (+ optional perceptual and GAN losses)."""

    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # AutoencoderKLConfig.to_dict()
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-4
    lr_schedule: str = "constant"  # or "cosine" to 0 at `steps` (the GAN's discriminator LR stays constant)
    warmup: int = 100
    weight_decay: float = 0.0  # as the diffusion stage's: weights only
    grad_clip: float = 1.0
    recon_loss: str = "l1"
    # KL on the mean-reduced loss scale: kl_weight * KL summed over latent elements / number
    # of image elements, the same balance as Stable Diffusion's 1e-6 on summed losses.
    kl_weight: float = 1e-6
    logvar_init: float | None = -6.0  # start the posterior narrow (see vae_stage); None: leave as built
    perceptual_weight: float = 1.0  # used only when LPIPS weights exist locally
    disc_start: int = -1  # step at which the patch-GAN starts; negative = never
    disc_weight: float = 0.5
    disc_lr: float = 2e-4
    disc_channels: int = 64
    disc_layers: int = 3
    latent_stats_images: int = 4096  # images used to measure the latents' shift and scale
    # The VAE handed on (to the diffusion stage, vae.safetensors, the model file) is the weights'
    # moving average (train/ema.py, with its warm-up); 0: the last step's weights. On Q1's preset
    # the average reconstructed the test set 2.9-4.3 dB better than the same run's last weights
    # (benchmarks/NOTES.md v28)
    ema_decay: float = 0.99


@dataclass
class DiffusionTrainConfig:
    """The latent diffusion stage: the UNet on cached latents."""

    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # UNetConfig.to_dict()
    steps: int = 10000
    batch_size: int = 64
    lr: float = 2e-4
    lr_schedule: str = "constant"
    warmup: int = 500
    weight_decay: float = 0.0  # AdamW's, on weights only: biases and norm gains are not decayed
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    cond_drop: float = 0.1  # probability of the null class, for classifier-free guidance
    prediction: str = "eps"
    schedule: str = "scaled_linear"
    num_train_timesteps: int = 1000
    beta_start: float | None = None  # None: the schedule's own default range
    beta_end: float | None = None
    zero_terminal_snr: bool = False
    min_snr_gamma: float | None = None
    latent_sample: bool = True  # draw z ~ q(z|x) from the cached mean/std, else use the mean
    sample_every: int = 1000
    sample_steps: int = 25
    sample_cfg: float = 2.0
    sample_per_class: int = 8
    val_every: int = 500
    val_size: int = 512  # validation latents (fixed t and noise, so losses are comparable)


@dataclass
class RunConfig:
    """One `ldm train` run."""

    data: str = "emoji"
    image_size: int = 32
    channels: int | None = None  # None: the dataset's own
    flip: bool = True
    stage: str = "all"
    vae_path: str | None = None  # a trained VAE (inference file or RUN folder): skips the VAE stage
    preset: str = "tiny"
    precision: str = "fp32"
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 1000
    log_every: int = 50
    num_workers: int = 2
    compile: bool = False
    # torch.compile mode of the training steps when `compile` is on (CUDA only):
    # "reduce-overhead" adds CUDA graphs, which small models need (their steps are launch-bound:
    # 3.8x faster for the fashion-mnist UNet, see benchmarks/NOTES.md); "default" is plain
    # inductor. A VAE stage with a discriminator uses "default" throughout.
    compile_mode: str = "reduce-overhead"
    # With "reduce-overhead" (bf16/fp32), capture each stage's whole step (forward, backward, under
    # torchrun the gradients' all-reduce, clipping, AdamW, EMA; the VAE's only without the GAN) as
    # one CUDA graph: train/step_graph.py. On one GPU the emoji UNet's step 2.1x faster, its VAE's
    # 1.44x, the base UNet's as fast, the same updates (benchmarks/NOTES.md, v16); on two, the emoji
    # UNet's 3.9x and its VAE's 1.9x (v17).
    step_graph: bool = True
    quiet: bool = False
    time_limit: float | None = None  # minutes for the whole run; training stops (and saves) then
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)
    diffusion: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        data = dict(data)
        vae = _from_dict(VAETrainConfig, data.pop("vae", {}) or {}, "vae")
        diffusion = _from_dict(DiffusionTrainConfig, data.pop("diffusion", {}) or {}, "diffusion")
        config = _from_dict(cls, data, "")
        config.vae, config.diffusion = vae, diffusion
        return config


def _from_dict(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in section {prefix!r}" if prefix else ""
        raise UserError(f"unknown training config field(s){where}: {', '.join(unknown)}")
    return cls(**dict(data))


# Short flag names -> (section, field). Everything else is addressed as "section.field"
# ("vae.lr") or as a top-level RunConfig field ("seed").
ALIASES: dict[str, tuple[str, str]] = {
    "steps": ("diffusion", "steps"),
    "batch_size": ("diffusion", "batch_size"),
    "lr": ("diffusion", "lr"),
    "lr_schedule": ("diffusion", "lr_schedule"),
    "warmup": ("diffusion", "warmup"),
    "weight_decay": ("diffusion", "weight_decay"),
    "grad_clip": ("diffusion", "grad_clip"),
    "ema_decay": ("diffusion", "ema_decay"),
    "cond_drop": ("diffusion", "cond_drop"),
    "prediction": ("diffusion", "prediction"),
    "schedule": ("diffusion", "schedule"),
    "min_snr_gamma": ("diffusion", "min_snr_gamma"),
    "sample_every": ("diffusion", "sample_every"),
    "val_every": ("diffusion", "val_every"),
    "unet_preset": ("diffusion", "preset"),
    "vae_steps": ("vae", "steps"),
    "vae_batch_size": ("vae", "batch_size"),
    "vae_lr": ("vae", "lr"),
    "vae_preset": ("vae", "preset"),
    "kl_weight": ("vae", "kl_weight"),
    "disc_start": ("vae", "disc_start"),
}


def _check_type(owner: Any, name: str, value: Any) -> Any:
    """Check `value` against the dataclass annotation of `owner.name`; ints pass as floats."""
    hint = typing.get_type_hints(type(owner))[name]
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = tuple(typing.get_origin(a) or a for a in (typing.get_args(hint) if is_union else (hint,)))
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if bool not in allowed and isinstance(value, bool):
        raise UserError(f"config field {name!r} expects {getattr(hint, '__name__', hint)}, got a bool")
    if not isinstance(value, tuple(a for a in allowed if a is not type(None))):
        raise UserError(f"config field {name!r} expects {getattr(hint, '__name__', hint)}, got {value!r}")
    return value


def apply_overrides(config: RunConfig, overrides: Mapping[str, Any], *, none_means_unset: bool = True) -> RunConfig:
    """Set fields from `overrides` (flag name -> value).

    Keys are top-level fields (`seed`), `section.field` (`vae.lr`), an alias from `ALIASES`
    (`vae_steps`) or one field of a stage's architecture (`diffusion.model.attention_levels`,
    `vae.model.latent_channels`). Changing a preset name re-resolves that model's dict. With
    `none_means_unset` (command-line flags) a None value means "not given"; without it (`--set
    KEY=null`) None is written, e.g. to turn `min_snr_gamma` off. Returns `config`, changed in place.
    """
    for key, value in overrides.items():
        if value is None and none_means_unset:
            continue
        if key.startswith(("vae.model.", "diffusion.model.")):
            _set_model_field(config, key, value)
            continue
        if key in ALIASES:
            section, name = ALIASES[key]
        elif "." in key:
            section, name = key.split(".", 1)
        else:
            section, name = "", key
        owner = getattr(config, section) if section in ("vae", "diffusion") else config
        if section not in ("", "vae", "diffusion") or not hasattr(owner, name) or name in ("vae", "diffusion"):
            raise UserError(f"unknown training option {key!r}")
        setattr(owner, name, _check_type(owner, name, value))
        if section == "vae" and name == "preset":
            config.vae.model = vae_model_dict(value)
        elif section == "diffusion" and name == "preset":
            config.diffusion.model = unet_model_dict(value)
    return config


def _set_model_field(config: RunConfig, key: str, value: Any) -> None:
    """`vae.model.FIELD=VALUE` / `diffusion.model.FIELD=VALUE`: one architecture field, checked
    against the model's config class (lists become tuples there; the run validates the whole)."""
    from ldmkit.models.autoencoder import AutoencoderKLConfig
    from ldmkit.models.config_io import int_tuple
    from ldmkit.models.unet_config import UNetConfig

    section, _, name = key.split(".", 2)
    stage = getattr(config, section)
    model_cls = AutoencoderKLConfig if section == "vae" else UNetConfig
    fields = {f.name: f for f in dataclasses.fields(model_cls)}
    if name not in fields:
        raise UserError(f"unknown training option {key!r}: {model_cls.__name__} has no field {name!r}")
    if isinstance(fields[name].default, tuple):  # a list field: `=3` for `=[3]` is named here, by its flag
        int_tuple(value, f"--set {key}")
    if not stage.model:
        stage.model = (vae_model_dict if section == "vae" else unet_model_dict)(stage.preset)
    stage.model = {**stage.model, name: value}
    heads = {"num_heads": "head_dim", "head_dim": "num_heads"}  # one or the other sets the attention's heads
    if section == "diffusion" and name in heads and value is not None:
        stage.model[heads[name]] = None


def make_schedule(cfg: DiffusionTrainConfig) -> NoiseSchedule:
    """The training noise schedule described by the config (`UserError` for an impossible one)."""
    from ldmkit.diffusion.schedules import NoiseSchedule  # here: the config module stays torch-free

    betas = {} if cfg.schedule == "cosine" else {"beta_start": cfg.beta_start, "beta_end": cfg.beta_end}
    return NoiseSchedule.create(cfg.schedule, cfg.num_train_timesteps, zero_terminal_snr=cfg.zero_terminal_snr,
                                **betas)


def validate(config: RunConfig) -> None:
    """Raise `UserError` for values no run can use (checked before any work starts)."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    v, d = config.vae, config.diffusion
    need(bool(config.data), "no training data: pass --data (a folder, 'emoji' or 'fashion-mnist[:DIR]')")
    need(config.stage in STAGES, f"stage must be one of {STAGES}, got {config.stage!r}")
    need(config.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {config.precision!r}")
    need(config.image_size > 0, f"--image-size must be positive, got {config.image_size}")
    need(abs(config.seed) <= 2**62, f"--seed must be from -2**62 to 2**62, got {config.seed}")  # torch's range
    need(config.num_workers >= 0, f"num_workers must be >= 0, got {config.num_workers}")
    need(config.compile_mode in COMPILE_MODES,
         f"compile_mode must be one of {COMPILE_MODES}, got {config.compile_mode!r}")
    need(config.time_limit is None or config.time_limit > 0, "--time-limit must be a positive number of minutes")
    need(v.recon_loss in RECON_LOSSES, f"vae.recon_loss must be one of {RECON_LOSSES}")
    need(d.prediction in PREDICTIONS, f"prediction must be one of {PREDICTIONS}, got {d.prediction!r}")
    need(d.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {d.schedule!r}")
    need(d.lr_schedule in ("constant", "cosine"), "lr_schedule must be 'constant' or 'cosine'")
    need(v.lr_schedule in ("constant", "cosine"), "vae.lr_schedule must be 'constant' or 'cosine'")
    need(0.0 <= d.cond_drop < 1.0, f"--cond-drop must be in [0, 1), got {d.cond_drop}")
    need(0.0 <= d.ema_decay <= 1.0, "ema_decay must be in [0, 1]")
    need(0.0 <= v.ema_decay < 1.0, f"vae.ema_decay must be in [0, 1) (0: no average), got {v.ema_decay}")
    need(d.min_snr_gamma is None or d.min_snr_gamma > 0, "min_snr_gamma must be positive")
    need(not (d.zero_terminal_snr and d.prediction == "eps"), "zero_terminal_snr needs a v- or x0-prediction model "
         "(Lin et al. 2024, Sec. 3.2: eps cannot give x0 at SNR 0, so sampling fails): --set diffusion.prediction=v")
    # Optimiser and loss settings that PyTorch would reject only once training starts (as a
    # traceback) or that would train something other than asked (a negative loss weight).
    for name, value in (("--lr", d.lr), ("vae.lr", v.lr), ("vae.disc_lr", v.disc_lr)):
        need(value > 0, f"{name} must be > 0, got {value}")
    for name, value in (("weight_decay", d.weight_decay), ("vae.weight_decay", v.weight_decay),
                        ("vae.kl_weight", v.kl_weight), ("vae.perceptual_weight", v.perceptual_weight),
                        ("vae.disc_weight", v.disc_weight)):
        need(value >= 0, f"{name} must be >= 0, got {value}")
    need(v.latent_stats_images > 0, "vae.latent_stats_images must be > 0")
    need(d.sample_per_class > 0, "diffusion.sample_per_class must be > 0")
    # The noise schedule and the preview sampler's step count are otherwise first checked after
    # the VAE stage (the schedule) or at the first preview grid (the steps).
    make_schedule(d)
    need(isinstance(d.sample_steps, int) and 1 <= d.sample_steps <= d.num_train_timesteps,
         f"diffusion.sample_steps must be from 1 to num_train_timesteps ({d.num_train_timesteps}), "
         f"got {d.sample_steps}")
    for name, value in (("--steps", d.steps), ("--vae-steps", v.steps), ("warmup", d.warmup)):
        need(value >= 0, f"{name} must be >= 0, got {value}")
    for name, value in (("--batch-size", d.batch_size), ("vae_batch_size", v.batch_size),
                        ("checkpoint_every", config.checkpoint_every), ("log_every", config.log_every)):
        need(value > 0, f"{name} must be > 0, got {value}")
    need(v.disc_start < 0 or config.image_size // 2**v.disc_layers >= 4,
         f"{config.image_size} px images are too small for a {v.disc_layers}-layer discriminator; "
         "lower vae.disc_layers")


def _preset(
    *, data: str, image_size: int, vae_preset: str, unet_preset: str, name: str,
    run: dict[str, Any], vae: dict[str, Any], diffusion: dict[str, Any],
) -> RunConfig:
    config = RunConfig(data=data, image_size=image_size, preset=name, **run)
    config.vae = VAETrainConfig(preset=vae_preset, model=vae_model_dict(vae_preset), **vae)
    config.diffusion = DiffusionTrainConfig(preset=unet_preset, model=unet_model_dict(unet_preset), **diffusion)
    return config


def tiny() -> RunConfig:
    """A CPU run of a few minutes on `emoji` at 32 px: f4 VAE (8x8x4 latents), tiny UNet.

    Measured: 9 minutes on one thread of a busy 2-core machine; the grid of the last step
    shows yellow round faces, striped flags, blue symbol tiles, each in its class's row.
    The VAE's 3e-4 is as high as its LR goes safely: 1e-3 sometimes diverges on flat colours.
    """
    return _preset(
        name="tiny", data="emoji", image_size=32, vae_preset="tiny", unet_preset="tiny",
        run=dict(precision="fp32", checkpoint_every=600, log_every=50, num_workers=0),
        vae=dict(steps=500, batch_size=16, lr=3e-4, warmup=50, latent_stats_images=512),
        diffusion=dict(steps=1200, batch_size=64, lr=1e-3, warmup=100, ema_decay=0.995,
                       sample_every=600, val_every=600, val_size=256),
    )


def small() -> RunConfig:
    """One GPU, Fashion-MNIST / emoji scale (32 px, f4 latents), minutes of training."""
    return _preset(
        name="small", data="emoji", image_size=32, vae_preset="small", unet_preset="small",
        run=dict(precision="bf16", checkpoint_every=2000, log_every=100, num_workers=4),
        vae=dict(steps=3000, batch_size=128, lr=4e-4, warmup=100),
        diffusion=dict(steps=20000, batch_size=256, lr=2e-4, warmup=500, ema_decay=0.999,
                       sample_every=2000, val_every=1000),
    )


def base() -> RunConfig:
    """C1-sized class-conditional UNet (~90M) on f8 latents of 256 px images, GPUs.

    On one GPU the UNet stage replays CUDA graphs like the smaller presets: at this size (C1,
    batch 256) they made the step 1.24x the compiled diffusers peer's with less peak memory, on
    one H100 (benchmarks/NOTES.md, v4); under torchrun as well (the whole step one CUDA graph:
    26 ms a step on two H200s, v17). Its VAE stage trains with a discriminator (from step 20,000),
    which is not graph-safe, so that stage compiles in the plain mode throughout."""
    return _preset(
        name="base", data="", image_size=256, vae_preset="sd", unet_preset="base",
        run=dict(precision="bf16", checkpoint_every=5000, log_every=100, num_workers=8),
        vae=dict(steps=50000, batch_size=32, lr=1e-4, warmup=1000, disc_start=20000),
        diffusion=dict(steps=400000, batch_size=256, lr=1e-4, warmup=5000, ema_decay=0.9999,
                       sample_every=10000, val_every=5000),
    )


# The bundled models' architecture (ldmkit/pretrained): sized to fit 15 MB as fp16 safetensors
# (emoji: 6.2M UNet + 1.0M VAE parameters; fashion-mnist: 6.5M + 0.7M) and to sample a class grid
# in seconds on a laptop CPU.
_BUNDLE_VAE = dict(block_channels=(32, 64, 64), num_res_blocks=1, norm_groups=32)
_BUNDLE_UNET = dict(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(2,),
                    head_dim=32, norm_groups=32, time_embed_dim=128)


def _bundle_preset(name: str, data: str, image_size: int, latent_channels: int, *,
                   vae: dict[str, Any], diffusion: dict[str, Any]) -> RunConfig:
    config = _preset(
        name=name, data=data, image_size=image_size, vae_preset="small", unet_preset="small",
        run=dict(precision="bf16", checkpoint_every=5000, log_every=500, num_workers=4),
        vae=vae, diffusion=diffusion,
    )
    config.vae.model = {**config.vae.model, **_BUNDLE_VAE, "latent_channels": latent_channels}
    config.diffusion.model = {**config.diffusion.model, **_BUNDLE_UNET}
    return config


def fashion_mnist() -> RunConfig:
    """Benchmark Q1 and the bundled `fashion-mnist` model: 32 px, one GPU, minutes.

    An f2 VAE with 4 latent channels (16x16x4 latents, as many numbers as pixels) and the bundle
    UNet with self-attention at 8x8 and 4x4, trained with the plain eps loss on linear betas
    (DDPM's, as the pixel-space peer) and a cosine LR decay over 14,000 steps. This replaced
    an f4 design (8x8x16 latents, attention at 2x2 only, scaled-linear betas with min-SNR-5):
    at the same 446 s Q1 budget on an H100 the VAE's reconstruction floor fell from FD 0.156 to
    0.055 (PSNR 35.0 -> 42.5 dB) and the samples' distance at CFG 2.0 from 0.333 to 0.222
    (benchmarks/quality/README.md). The same UNet weights do 4x the arithmetic on 16x16
    latents: 26 ms per batch-1024 step on an H100 (benchmarks/NOTES.md, v3). In the fourth
    session's 565 s Q1 run, `--time-limit 9.2` stopped at 12,149 of the 14,000 steps (the
    LR at 5% of its peak). 14,000 was an estimate made before that run; compilation took
    about 2 of the 9.4 minutes (both stages), more than estimated. What a stop by the time
    limit loses is the last, low-LR part of the cosine.
    """
    config = _bundle_preset(
        "fashion-mnist", "fashion-mnist", 32, 4,
        vae=dict(steps=8000, batch_size=256, lr=5e-4, warmup=200),
        diffusion=dict(steps=14000, batch_size=1024, lr=4e-4, lr_schedule="cosine", warmup=500, ema_decay=0.9995,
                       schedule="linear", min_snr_gamma=None, sample_every=10000, val_every=5000),
    )
    config.vae.model["block_channels"] = (32, 64)  # f2
    config.diffusion.model["attention_levels"] = (1, 2)
    return config


def emoji() -> RunConfig:
    """The bundled `emoji` model: 64 px, f4 VAE with 4 latent channels (16x16x4), one GPU, minutes."""
    return _bundle_preset(
        "emoji", "emoji", 64, 4,
        vae=dict(steps=4000, batch_size=64, lr=4e-4, warmup=200),
        diffusion=dict(steps=15000, batch_size=256, lr=3e-4, warmup=500, ema_decay=0.9995, min_snr_gamma=5.0,
                       sample_every=5000, val_every=2500, val_size=64),
    )


TRAIN_PRESETS: dict[str, Callable[[], RunConfig]] = {
    "tiny": tiny, "small": small, "base": base, "fashion-mnist": fashion_mnist, "emoji": emoji,
}


def preset_config(name: str) -> RunConfig:
    """The `RunConfig` of a named training preset."""
    if name not in TRAIN_PRESETS:
        raise UserError(f"unknown training preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
    return TRAIN_PRESETS[name]()
