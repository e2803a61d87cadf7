"""The ldmkit side of the benchmark: the same networks, carrying the peer's own weights through
`ldmkit.interop.diffusers_keys`, and ldmkit's sampler + guidance for the generation runs.

If the mapping is missing or fails, the ldmkit model is built from its preset with its own
random weights (throughput does not depend on the values) and the record says
`same_weights: false` with the reason; the agreement check is then skipped.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch


def _diffusers_config(model: torch.nn.Module) -> dict[str, Any]:
    return {k: v for k, v in dict(model.config).items() if not k.startswith("_")}


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def build_unet(peer: torch.nn.Module, device: torch.device, preset: str | None,
               preset_overrides: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """ldmkit UNet with the peer's weights; info says how it was built."""
    from ldmkit.models import UNET_PRESETS, UNet

    info: dict[str, Any] = {}
    try:
        from ldmkit.interop import load_state_dict_strict, unet_config_from_diffusers, unet_state_dict_from_diffusers

        cfg = unet_config_from_diffusers(_diffusers_config(peer), type(peer).__name__)
        with torch.device(device):  # built on the GPU: seconds for 860M params
            model = UNet(cfg)
        load_state_dict_strict(model, unet_state_dict_from_diffusers(_state_dict(peer)))
        info.update(same_weights=True, config=cfg.to_dict())
    except Exception as err:  # the mapping is missing or broken: say so, benchmark anyway
        if preset is None:
            raise
        cfg = UNET_PRESETS[preset](**(preset_overrides or {}))
        with torch.device(device):
            model = UNet(cfg)
        info.update(same_weights=False, why=f"{type(err).__name__}: {err}"[:500], config=cfg.to_dict())
    if preset is not None:
        want = UNET_PRESETS[preset](**(preset_overrides or {})).to_dict()
        info["preset"] = preset
        info["preset_diff"] = {k: (v, want.get(k)) for k, v in cfg.to_dict().items()
                               if want.get(k) != v and k not in ("zero_init_output",)}
    return model.eval(), info


def build_vae(peer: torch.nn.Module, device: torch.device, preset: str | None,
              scaling_factor: float) -> tuple[torch.nn.Module, dict[str, Any]]:
    """ldmkit AutoencoderKL with the peer's weights; latent normalisation = diffusers'
    scaling factor, so `decode(x)` is the peer's `decode(x / scaling_factor)`."""
    from ldmkit.models import VAE_PRESETS, AutoencoderKL

    info: dict[str, Any] = {}
    try:
        from ldmkit.interop import (
            autoencoder_config_from_diffusers,
            autoencoder_latent_stats_from_diffusers,
            autoencoder_state_dict_from_diffusers,
            load_state_dict_strict,
        )

        dcfg = _diffusers_config(peer)
        cfg = autoencoder_config_from_diffusers(dcfg)
        with torch.device(device):
            model = AutoencoderKL(cfg)
        shift, scale = autoencoder_latent_stats_from_diffusers(dcfg)
        load_state_dict_strict(model, autoencoder_state_dict_from_diffusers(_state_dict(peer), shift, scale))
        info.update(same_weights=True, config=cfg.to_dict())
    except Exception as err:
        if preset is None:
            raise
        cfg = VAE_PRESETS[preset]()
        with torch.device(device):
            model = AutoencoderKL(cfg)
        info.update(same_weights=False, why=f"{type(err).__name__}: {err}"[:500], config=cfg.to_dict())
    model.set_latent_stats(0.0, scaling_factor)
    if preset is not None:
        want = VAE_PRESETS[preset]().to_dict()
        info["preset"] = preset
        info["preset_diff"] = {k: (v, want.get(k)) for k, v in cfg.to_dict().items() if want.get(k) != v}
    return model.eval(), info


def unet_call(model: Callable, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One UNet forward on a batch dict {x, t, [labels], [context]} -> prediction."""
    if "context" in batch:
        return model(batch["x"], batch["t"], context=batch["context"])
    return model(batch["x"], batch["t"], class_labels=batch.get("labels"))


def vae_encode(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Posterior mean, unnormalised: the same function as the peer's `latent_dist.mean`."""
    return vae.encode_raw(images)


def vae_decode(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    return vae.decode_raw(z)


class LdmGenerator:
    """ldmkit's generation path: `classifier_free_guidance` (cond and uncond in one batch)
    around the UNet, `ldmkit.diffusion.sample(..., sampler="dpmpp-2m")`, then `vae.decode`.

    `unet` and `decode` may be compiled callables. The sampler keeps its state in the noise's
    dtype; `dtype` is what the network is fed (bf16 when the weights are bf16).
    """

    def __init__(self, unet: Callable, decode: Callable, schedule, *, guidance_scale: float,
                 steps: int, dtype: torch.dtype, mark_step: bool = False,
                 before_call: Callable[[dict[str, torch.Tensor]], Any] | None = None):
        self.unet, self.decode_fn, self.schedule = unet, decode, schedule
        self.guidance_scale, self.steps, self.dtype = guidance_scale, steps, dtype
        self.mark_step = mark_step
        self.before_call = before_call  # given the UNet's keyword arguments before each call

    def _model_fn(self, x: torch.Tensor, t: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        if self.mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        kw = {k: (v.to(self.dtype) if v is not None and v.is_floating_point() else v) for k, v in kw.items()}
        if self.before_call is not None:
            self.before_call(kw)
        batch = {"x": x.to(self.dtype), "t": t, **{_BATCH_KEY[k]: v for k, v in kw.items()}}
        return unet_call(self.unet, batch)

    def latents(self, noise: torch.Tensor, cond: dict[str, torch.Tensor],
                uncond: dict[str, torch.Tensor]) -> torch.Tensor:
        from ldmkit.diffusion import classifier_free_guidance, sample

        kw_cond = {_MODEL_KEY[k]: v for k, v in cond.items()}
        kw_uncond = {_MODEL_KEY[k]: v for k, v in uncond.items()}
        denoiser = classifier_free_guidance(self._model_fn, self.guidance_scale,
                                            cond=kw_cond, uncond=kw_uncond)
        return sample(denoiser, noise, self.schedule, sampler="dpmpp-2m", steps=self.steps,
                      prediction="eps")

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        if self.mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        return self.decode_fn(x.to(self.dtype))

    def __call__(self, noise, cond, uncond) -> torch.Tensor:
        return self.decode(self.latents(noise, cond, uncond))


# batch-dict key <-> UNet.forward keyword
_MODEL_KEY = {"labels": "class_labels", "context": "context"}
_BATCH_KEY = {v: k for k, v in _MODEL_KEY.items()}


def make_schedule(schedule: dict[str, Any]):
    """The ldmkit NoiseSchedule equal to a diffusers beta_schedule spec."""
    from ldmkit.diffusion import NoiseSchedule

    return NoiseSchedule.create(schedule["beta_schedule"], 1000, beta_start=schedule["beta_start"],
                                beta_end=schedule["beta_end"])


@contextlib.contextmanager
def derived_weights_for_inference(model: torch.nn.Module, enabled: bool):
    """While compiled inference runs: the weights ldmkit's layers derive from their parameters,
    computed once (as `ldm generate`'s CompiledUNet does; nn/derived_weights.py), then removed."""
    from ldmkit.nn import derived_weights

    if not enabled:
        yield
        return
    derived_weights.attach(model)
    try:
        yield
    finally:
        derived_weights.detach(model)


@contextlib.contextmanager
def context_kv_for_generation(model: torch.nn.Module, enabled: bool):
    """While a generation runs: yields what `CompiledUNet` calls before each UNet call, keeping
    the derived weights current and the cross-attentions' keys and values of the context computed
    once per context (nn/context_kv.py; the latter only when enabled); removes the keys after."""
    from ldmkit.compiled_unet import refresh_job_caches
    from ldmkit.nn import context_kv

    def before_call(kw: dict[str, torch.Tensor]) -> None:
        # derived weights: nothing to do when none are attached; context: only when enabled
        refresh_job_caches(model, kw.get("context") if enabled else None)

    try:
        yield before_call
    finally:
        context_kv.detach(model)
